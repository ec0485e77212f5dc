// Package minihttp is a small HTTP/1.1 server: the subset of net/http's
// server API that stasis-agent uses (handlers, headers, Content-Length and
// chunked bodies, keep-alive, the Hijack an upgrade needs), with the same
// names, so that the agent's handlers read as net/http ones.
//
// It exists because net/http is heavy for a sandbox's init process: it
// brings crypto/tls, x509, HTTP/2 and their package initialisation, which
// cost the agent start-up time and checkpointed memory in every sandbox
// (docs/density/NOTES.md). It is not a general server: no HTTP/2, no TLS,
// no content sniffing, no Date header, no request context, no trailers.
// compare_test.go runs handlers under both servers and lists the deliberate
// differences.
package minihttp

import (
	"bufio"
	"errors"
	"net"
	"strings"
)

// Methods the agent serves.
const (
	MethodGet  = "GET"
	MethodHead = "HEAD"
	MethodPost = "POST"
	MethodPut  = "PUT"
)

// Status codes the agent answers with.
const (
	StatusSwitchingProtocols          = 101
	StatusOK                          = 200
	StatusNoContent                   = 204
	StatusNotModified                 = 304
	StatusBadRequest                  = 400
	StatusUnauthorized                = 401
	StatusForbidden                   = 403
	StatusNotFound                    = 404
	StatusMethodNotAllowed            = 405
	StatusRequestEntityTooLarge       = 413
	StatusUpgradeRequired             = 426
	StatusRequestHeaderFieldsTooLarge = 431
	StatusInternalServerError         = 500
	StatusNotImplemented              = 501
	StatusInsufficientStorage         = 507
)

var statusText = map[int]string{
	StatusSwitchingProtocols:          "Switching Protocols",
	StatusOK:                          "OK",
	StatusNoContent:                   "No Content",
	StatusNotModified:                 "Not Modified",
	StatusBadRequest:                  "Bad Request",
	StatusUnauthorized:                "Unauthorized",
	StatusForbidden:                   "Forbidden",
	StatusNotFound:                    "Not Found",
	StatusMethodNotAllowed:            "Method Not Allowed",
	StatusRequestEntityTooLarge:       "Request Entity Too Large",
	StatusUpgradeRequired:             "Upgrade Required",
	StatusRequestHeaderFieldsTooLarge: "Request Header Fields Too Large",
	StatusInternalServerError:         "Internal Server Error",
	StatusNotImplemented:              "Not Implemented",
	StatusInsufficientStorage:         "Insufficient Storage",
}

// StatusText is the reason phrase of code ("" if unknown).
func StatusText(code int) string { return statusText[code] }

// ErrAbortHandler, panicked by a handler, aborts the response: the
// connection is closed (the client sees a truncated body) without a log.
var ErrAbortHandler = errors.New("minihttp: abort Handler")

// ErrServerClosed is what Serve returns after Shutdown or Close.
var ErrServerClosed = errors.New("minihttp: Server closed")

// ErrHijacked is returned by a ResponseWriter used after Hijack.
var ErrHijacked = errors.New("minihttp: connection has been hijacked")

// A Handler answers a request.
type Handler interface {
	ServeHTTP(ResponseWriter, *Request)
}

// HandlerFunc adapts a function to Handler.
type HandlerFunc func(ResponseWriter, *Request)

// ServeHTTP calls f(w, r).
func (f HandlerFunc) ServeHTTP(w ResponseWriter, r *Request) { f(w, r) }

// ResponseWriter builds a response, as net/http's: Header is sent at the
// first WriteHeader or Write (status 200 if none was given).
type ResponseWriter interface {
	Header() Header
	Write([]byte) (int, error)
	WriteHeader(statusCode int)
}

// Hijacker is implemented by the server's ResponseWriter: the handler takes
// the connection over, with the reader holding what the client sent after
// the request's header.
type Hijacker interface {
	Hijack() (net.Conn, *bufio.ReadWriter, error)
}

// Flusher is implemented by the server's ResponseWriter: Flush sends what
// the handler wrote so far.
type Flusher interface {
	Flush()
}

// Error answers with a plain-text error, as net/http's Error.
func Error(w ResponseWriter, msg string, code int) {
	h := w.Header()
	h.Del("Content-Length")
	h.Set("Content-Type", "text/plain; charset=utf-8")
	h.Set("X-Content-Type-Options", "nosniff")
	w.WriteHeader(code)
	w.Write([]byte(msg + "\n"))
}

// ServeMux routes requests by exact path (all the agent needs); an unknown
// path gets net/http's 404.
type ServeMux struct {
	routes map[string]Handler
}

// NewServeMux returns an empty ServeMux.
func NewServeMux() *ServeMux { return &ServeMux{routes: make(map[string]Handler)} }

// HandleFunc routes path to f.
func (m *ServeMux) HandleFunc(path string, f func(ResponseWriter, *Request)) {
	m.routes[path] = HandlerFunc(f)
}

// ServeHTTP dispatches r to the handler of its path.
func (m *ServeMux) ServeHTTP(w ResponseWriter, r *Request) {
	if h, ok := m.routes[r.URL.Path]; ok {
		h.ServeHTTP(w, r)
		return
	}
	Error(w, "404 page not found", StatusNotFound)
}

// Header is a request's or response's header, keyed by canonical name.
type Header map[string][]string

// Get is the first value of key ("" if none).
func (h Header) Get(key string) string {
	if v := h[CanonicalHeaderKey(key)]; len(v) > 0 {
		return v[0]
	}
	return ""
}

// Values are all the values of key.
func (h Header) Values(key string) []string { return h[CanonicalHeaderKey(key)] }

// Set replaces the values of key with value.
func (h Header) Set(key, value string) { h[CanonicalHeaderKey(key)] = []string{value} }

// Add appends value to the values of key.
func (h Header) Add(key, value string) {
	k := CanonicalHeaderKey(key)
	h[k] = append(h[k], value)
}

// Del removes key.
func (h Header) Del(key string) { delete(h, CanonicalHeaderKey(key)) }

// CanonicalHeaderKey is key with the first letter and each letter after a
// hyphen upper case and the rest lower case ("content-type" →
// "Content-Type"); a key with bytes that are not token characters is left as
// it is, as net/textproto does.
func CanonicalHeaderKey(key string) string {
	upper := true
	ok := true
	for i := 0; i < len(key); i++ {
		c := key[i]
		if !isTokenChar(c) {
			return key
		}
		if upper && 'a' <= c && c <= 'z' || !upper && 'A' <= c && c <= 'Z' {
			ok = false
		}
		upper = c == '-'
	}
	if ok {
		return key
	}
	b := []byte(key)
	upper = true
	for i, c := range b {
		if upper && 'a' <= c && c <= 'z' {
			b[i] = c - 'a' + 'A'
		} else if !upper && 'A' <= c && c <= 'Z' {
			b[i] = c - 'A' + 'a'
		}
		upper = c == '-'
	}
	return string(b)
}

// isTokenChar reports whether c may appear in a header name (RFC 9110 tchar).
func isTokenChar(c byte) bool {
	if 'a' <= c && c <= 'z' || 'A' <= c && c <= 'Z' || '0' <= c && c <= '9' {
		return true
	}
	return c < 0x80 && strings.IndexByte("!#$%&'*+-.^_`|~", c) >= 0
}

// hasToken reports whether the comma-separated header values contain token
// (case-insensitive), e.g. "close" in Connection.
func hasToken(values []string, token string) bool {
	for _, v := range values {
		for _, t := range strings.Split(v, ",") {
			if strings.EqualFold(strings.TrimSpace(t), token) {
				return true
			}
		}
	}
	return false
}
