package minihttp

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"log"
	"net"
	"runtime/debug"
	"sort"
	"strconv"
	"strings"
	"sync"
	"time"
)

// Server serves HTTP/1.1 on the connections of a listener.
type Server struct {
	Handler           Handler
	ReadHeaderTimeout time.Duration // from a connection's accept, or its first byte of a later request, to the request's end of header
	IdleTimeout       time.Duration // waiting for a connection's next request
	ErrorLog          *log.Logger   // nil: the log package's logger

	mu         sync.Mutex
	listeners  map[net.Listener]struct{}
	conns      map[*conn]connState
	onShutdown []func()
	shutdown   bool
}

// connState is where a connection is in its life.
type connState int

const (
	stateNew    connState = iota // accepted, no request yet
	stateActive                  // a request is being served
	stateIdle                    // between requests
)

// RegisterOnShutdown adds f to what Shutdown runs once the listeners are
// closed.
func (s *Server) RegisterOnShutdown(f func()) {
	s.mu.Lock()
	s.onShutdown = append(s.onShutdown, f)
	s.mu.Unlock()
}

// Serve accepts connections on ln and serves each in its own goroutine until
// Shutdown or Close; then it returns ErrServerClosed.
func (s *Server) Serve(ln net.Listener) error {
	s.mu.Lock()
	if s.shutdown {
		s.mu.Unlock()
		return ErrServerClosed
	}
	if s.listeners == nil {
		s.listeners = make(map[net.Listener]struct{})
		s.conns = make(map[*conn]connState)
	}
	s.listeners[ln] = struct{}{}
	s.mu.Unlock()
	defer func() {
		s.mu.Lock()
		delete(s.listeners, ln)
		s.mu.Unlock()
		ln.Close()
	}()
	var backoff time.Duration
	for {
		rwc, err := ln.Accept()
		if err != nil {
			if s.shuttingDown() {
				return ErrServerClosed
			}
			var ne net.Error
			if errors.As(err, &ne) && ne.Timeout() {
				// Out of file descriptors and the like: wait and go on,
				// as net/http does.
				backoff = min(max(2*backoff, 5*time.Millisecond), time.Second)
				s.logf("minihttp: accept error: %v; retrying in %v", err, backoff)
				time.Sleep(backoff)
				continue
			}
			return err
		}
		backoff = 0
		c := &conn{srv: s, rwc: rwc}
		if !s.setState(c, stateNew) {
			rwc.Close()
			return ErrServerClosed
		}
		go c.serve()
	}
}

func (s *Server) shuttingDown() bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.shutdown
}

// setState records c's state; false if the server is shutting down and c
// must close (a new or idle connection then serves nothing more).
func (s *Server) setState(c *conn, st connState) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.shutdown && st != stateActive {
		delete(s.conns, c)
		return false
	}
	s.conns[c] = st
	return true
}

func (s *Server) forget(c *conn) {
	s.mu.Lock()
	delete(s.conns, c)
	s.mu.Unlock()
}

// Shutdown closes the listeners, runs the RegisterOnShutdown functions,
// closes the connections that are not serving a request (including those
// that never sent one) and waits until the others have finished theirs or
// ctx is done. Hijacked connections are the handler's business.
func (s *Server) Shutdown(ctx context.Context) error {
	s.mu.Lock()
	s.shutdown = true
	for ln := range s.listeners {
		ln.Close()
	}
	hooks := s.onShutdown
	s.mu.Unlock()
	for _, f := range hooks {
		go f()
	}
	tick := time.NewTicker(10 * time.Millisecond)
	defer tick.Stop()
	for {
		if s.closeIdle() {
			return nil
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-tick.C:
		}
	}
}

// closeIdle closes the connections not in a request; true if none is left.
func (s *Server) closeIdle() bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	for c, st := range s.conns {
		if st != stateActive {
			c.rwc.Close()
			delete(s.conns, c)
		}
	}
	return len(s.conns) == 0
}

// Close closes the listeners and every connection at once.
func (s *Server) Close() error {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.shutdown = true
	for ln := range s.listeners {
		ln.Close()
	}
	for c := range s.conns {
		c.rwc.Close()
		delete(s.conns, c)
	}
	return nil
}

func (s *Server) logf(format string, args ...any) {
	if s.ErrorLog != nil {
		s.ErrorLog.Printf(format, args...)
	} else {
		log.Printf(format, args...)
	}
}

// maxDrain is how much of a body a handler left unread the server reads
// to keep the connection; with more left it closes it.
const maxDrain = 256 << 10

// conn is one client connection.
type conn struct {
	srv *Server
	rwc net.Conn
}

func (c *conn) serve() {
	hijacked := false
	defer func() {
		// The agent is PID 1: a bug on a connection costs the connection,
		// never the process (handlers' panics are caught in handle).
		if v := recover(); v != nil {
			c.srv.logf("minihttp: panic on connection %s: %v\n%s", c.rwc.RemoteAddr(), v, debug.Stack())
		}
		if !hijacked {
			c.rwc.Close()
			c.srv.forget(c)
		}
	}()
	br := bufio.NewReaderSize(c.rwc, 4<<10)
	bw := bufio.NewWriterSize(c.rwc, 4<<10)
	for first := true; ; first = false {
		if !first {
			if d := c.srv.IdleTimeout; d > 0 {
				c.rwc.SetReadDeadline(time.Now().Add(d))
			}
			if _, err := br.Peek(1); err != nil {
				return
			}
		}
		if d := c.srv.ReadHeaderTimeout; d > 0 {
			c.rwc.SetReadDeadline(time.Now().Add(d))
		}
		req, err := ReadRequest(br)
		if err != nil {
			c.answerBadRequest(err)
			return
		}
		c.rwc.SetReadDeadline(time.Time{})
		if !c.srv.setState(c, stateActive) {
			return
		}
		req.RemoteAddr = c.rwc.RemoteAddr().String()
		w := &response{conn: c, req: req, br: br, bw: bw, header: Header{}, contentLength: -1}
		b := req.Body.(*body)
		if hasToken(req.Header.Values("Expect"), "100-continue") && req.ProtoMinor == 1 && req.ContentLength != 0 {
			b.onFirst = func() {
				if !w.committed {
					bw.WriteString("HTTP/1.1 100 Continue\r\n\r\n")
					bw.Flush()
				}
			}
		}
		if !c.handle(w, req) {
			return
		}
		if w.hijacked {
			hijacked = true
			return
		}
		if err := w.finish(); err != nil {
			return
		}
		if w.closeAfter && b.unreadOver(maxDrain) || !b.drain(maxDrain) {
			c.closeWriteAndWait()
			return
		}
		if w.closeAfter {
			return
		}
		b.Close()
		if !c.srv.setState(c, stateIdle) {
			return
		}
	}
}

// rstAvoidanceDelay is how long a connection whose request body was left
// unread stays open after its response, as in net/http: closing it at once
// with the client's bytes unread makes the kernel send a reset, and the
// client, still writing its body, loses the response (say a 507 for an
// upload that does not fit) to "connection reset by peer".
const rstAvoidanceDelay = 500 * time.Millisecond

// closeWriteAndWait sends a FIN after the response and gives the client
// rstAvoidanceDelay to read it before the connection closes.
func (c *conn) closeWriteAndWait() {
	if cw, ok := c.rwc.(interface{ CloseWrite() error }); ok {
		cw.CloseWrite()
	}
	time.Sleep(rstAvoidanceDelay)
}

// handle runs the handler; false if it panicked (the connection then
// closes, cutting the response short, as net/http does).
func (c *conn) handle(w *response, req *Request) (ok bool) {
	defer func() {
		if v := recover(); v != nil {
			if v != ErrAbortHandler {
				c.srv.logf("minihttp: panic serving %s: %v\n%s", req.RemoteAddr, v, debug.Stack())
			}
			if w.hijacked {
				w.conn.rwc.Close()
			}
			ok = false
		}
	}()
	c.srv.Handler.ServeHTTP(w, req)
	return true
}

// answerBadRequest answers a request that could not be read, if it got far
// enough to deserve an answer, as net/http does.
func (c *conn) answerBadRequest(err error) {
	var code int
	var bad badRequestError
	switch {
	case errors.Is(err, errTooLarge):
		code = StatusRequestHeaderFieldsTooLarge
	case errors.Is(err, errUnsupportedTE):
		code = StatusNotImplemented
	case errors.As(err, &bad):
		code = StatusBadRequest
	default:
		return // EOF, a reset or a timeout: nobody to answer
	}
	text := strconv.Itoa(code) + " " + StatusText(code)
	fmt.Fprintf(c.rwc, "HTTP/1.1 %s\r\nContent-Type: text/plain; charset=utf-8\r\nConnection: close\r\n\r\n%s", text, text)
	if code == StatusRequestHeaderFieldsTooLarge {
		// The client may still be sending its header: let it read the
		// answer rather than a reset (net/http does the same).
		c.closeWriteAndWait()
	}
}

var newlineToSpace = strings.NewReplacer("\n", " ", "\r", " ")

// response is the ResponseWriter of one request.
type response struct {
	conn *conn
	req  *Request
	br   *bufio.Reader
	bw   *bufio.Writer

	header        Header // the handler's
	sent          Header // the handler's as it was at WriteHeader: what goes out
	status        int
	wroteHeader   bool  // WriteHeader was called (explicitly or by Write)
	committed     bool  // the status line and header are in bw
	contentLength int64 // from the handler's header; -1 if none
	written       int64 // body bytes written
	buf           []byte
	chunked       bool
	closeAfter    bool
	hijacked      bool
}

// bufferLimit is how much body the server holds back to send a
// Content-Length rather than chunks for a small response.
const bufferLimit = 4 << 10

func (w *response) Header() Header { return w.header }

func (w *response) WriteHeader(code int) {
	if w.hijacked {
		w.conn.srv.logf("minihttp: WriteHeader on hijacked connection")
		return
	}
	if w.wroteHeader {
		w.conn.srv.logf("minihttp: superfluous WriteHeader(%d)", code)
		return
	}
	if code < 100 || code > 999 {
		panic(fmt.Sprintf("minihttp: invalid WriteHeader code %v", code))
	}
	w.wroteHeader = true
	w.status = code
	// Changes to the header after this do not count, as in net/http.
	w.sent = make(Header, len(w.header))
	for k, v := range w.header {
		w.sent[k] = append([]string(nil), v...)
	}
	if cl := w.sent.Get("Content-Length"); cl != "" {
		if n, err := strconv.ParseInt(cl, 10, 64); err == nil && n >= 0 {
			w.contentLength = n
		} else {
			w.conn.srv.logf("minihttp: invalid Content-Length %q", cl)
			w.sent.Del("Content-Length")
		}
	}
}

// bodyAllowed reports whether the response may have a body at all.
func (w *response) bodyAllowed() bool {
	return w.status >= 200 && w.status != StatusNoContent && w.status != StatusNotModified
}

// errBodyNotAllowed is Write's error for a status without a body.
var errBodyNotAllowed = errors.New("minihttp: request method or response status code does not allow body")

// errContentLength is Write's error past the declared Content-Length.
var errContentLength = errors.New("minihttp: wrote more than the declared Content-Length")

func (w *response) Write(p []byte) (int, error) {
	if w.hijacked {
		return 0, ErrHijacked
	}
	if !w.wroteHeader {
		w.WriteHeader(StatusOK)
	}
	if len(p) == 0 {
		return 0, nil
	}
	if !w.bodyAllowed() {
		return 0, errBodyNotAllowed
	}
	if w.contentLength >= 0 && w.written+int64(len(p)) > w.contentLength {
		return 0, errContentLength
	}
	w.written += int64(len(p))
	if w.req.Method == MethodHead {
		if !w.committed && w.contentLength < 0 && w.written > bufferLimit {
			return len(p), w.commit() // too long to count: no length, as for GET
		}
		return len(p), nil
	}
	if !w.committed {
		if w.contentLength < 0 && len(w.buf)+len(p) <= bufferLimit {
			w.buf = append(w.buf, p...)
			return len(p), nil
		}
		if err := w.commit(); err != nil {
			return 0, err
		}
	}
	return len(p), w.writeBody(p)
}

// ReadFrom lets io.Copy hand a body of declared length to the
// connection's own ReadFrom, as net/http's response does: for a regular
// file that is sendfile, which gVisor runs inside the sentry without
// copying through the agent (100 MB: about 5x faster than 32 KiB writes),
// on a blocking socket (sendFile).
func (w *response) ReadFrom(src io.Reader) (int64, error) {
	if !w.wroteHeader {
		w.WriteHeader(StatusOK)
	}
	rf, ok := w.conn.rwc.(io.ReaderFrom)
	if !ok || w.hijacked || w.contentLength < 0 || w.req.Method == MethodHead || !w.bodyAllowed() {
		return io.Copy(struct{ io.Writer }{w}, src) // Write's own checks and buffering
	}
	if !w.committed {
		if err := w.commit(); err != nil {
			return 0, err
		}
	}
	if err := w.bw.Flush(); err != nil {
		return 0, err
	}
	left := w.contentLength - w.written
	// Keep a *io.LimitedReader of a file as it is: sendfile sees through
	// one LimitedReader, not two.
	if lr, ok := src.(*io.LimitedReader); !ok || lr.N > left {
		src = io.LimitReader(src, left)
	}
	n, done, err := sendFile(w.conn.rwc, src)
	if !done {
		var m int64
		m, err = rf.ReadFrom(src)
		n += m
	}
	w.written += n
	return n, err
}

// writeBody writes p as the body's next bytes (a chunk if chunked).
func (w *response) writeBody(p []byte) error {
	if !w.chunked {
		_, err := w.bw.Write(p)
		return err
	}
	w.bw.WriteString(strconv.FormatInt(int64(len(p)), 16))
	w.bw.WriteString("\r\n")
	w.bw.Write(p)
	_, err := w.bw.WriteString("\r\n")
	return err
}

// commit writes the status line and header, and what body is buffered.
func (w *response) commit() error {
	w.committed = true
	h := w.sent
	if w.bodyAllowed() && w.contentLength < 0 && w.req.Method != MethodHead {
		if w.req.ProtoMinor == 1 {
			w.chunked = true
			h.Set("Transfer-Encoding", "chunked")
		} else {
			w.closeAfter = true // an HTTP/1.0 body ends with the connection
		}
	}
	if !w.bodyAllowed() {
		h.Del("Content-Length")
		h.Del("Transfer-Encoding")
	}
	if w.status == StatusNotModified {
		h.Del("Content-Type") // as net/http: it describes the body not sent
	}
	if w.req.close || w.conn.srv.shuttingDown() || w.req.Body.(*body).unreadOver(maxDrain) {
		w.closeAfter = true
	}
	if w.closeAfter {
		h.Set("Connection", "close")
	} else if w.req.ProtoMinor == 0 {
		h.Set("Connection", "keep-alive")
	}
	text := StatusText(w.status)
	if text == "" {
		text = "status code " + strconv.Itoa(w.status)
	}
	bw := w.bw
	bw.WriteString("HTTP/1.1 " + strconv.Itoa(w.status) + " " + text + "\r\n")
	keys := make([]string, 0, len(h))
	for k := range h {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	for _, k := range keys {
		for _, v := range h[k] {
			// A line break in a value (say a file name in
			// Content-Disposition) becomes a space, as in net/http; any
			// other control character drops the value: never let a
			// handler's value split the header.
			v = strings.TrimSpace(newlineToSpace.Replace(v))
			if !validHeaderValue(v) || !validHeaderName(k) {
				continue
			}
			bw.WriteString(k + ": " + v + "\r\n")
		}
	}
	_, err := bw.WriteString("\r\n")
	if len(w.buf) > 0 {
		buf := w.buf
		w.buf = nil
		err = w.writeBody(buf)
	}
	return err
}

// finish completes the response after the handler returned.
func (w *response) finish() error {
	if !w.wroteHeader {
		w.WriteHeader(StatusOK)
	}
	if !w.committed {
		// A body that fit in the buffer gets its length; for HEAD the
		// length of what the handler wrote, as net/http does.
		if w.contentLength < 0 && w.bodyAllowed() && (w.req.Method != MethodHead || w.written > 0) {
			w.contentLength = w.written
			w.sent.Set("Content-Length", strconv.FormatInt(w.written, 10))
		}
		if err := w.commit(); err != nil {
			return err
		}
	}
	if w.chunked {
		w.bw.WriteString("0\r\n\r\n")
	}
	if w.contentLength >= 0 && w.req.Method != MethodHead && w.bodyAllowed() && w.written < w.contentLength {
		w.closeAfter = true // the client waits for bytes that will not come
	}
	return w.bw.Flush()
}

// Flush sends the header and what body is buffered now, as net/http's
// Flusher (a body without a declared length then goes chunked).
func (w *response) Flush() {
	if w.hijacked {
		return
	}
	if !w.wroteHeader {
		w.WriteHeader(StatusOK)
	}
	if !w.committed && w.commit() != nil {
		return
	}
	w.bw.Flush()
}

// Hijack hands the connection to the handler. The reader holds what the
// client sent after the request's header; nothing of the response has
// been sent.
func (w *response) Hijack() (net.Conn, *bufio.ReadWriter, error) {
	if w.hijacked {
		return nil, nil, ErrHijacked
	}
	if w.committed {
		return nil, nil, errors.New("minihttp: Hijack after the response was sent")
	}
	w.hijacked = true
	w.conn.srv.forget(w.conn) // Shutdown does not wait for it
	return w.conn.rwc, bufio.NewReadWriter(w.br, w.bw), nil
}

var _ io.Writer = (*response)(nil)
