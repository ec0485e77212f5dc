package egress

import (
	"bufio"
	"bytes"
	"crypto/tls"
	"errors"
	"net"
	"net/http"
	"time"
)

// maxSniff bounds what is read from a connection to find its name: a TLS
// ClientHello record, or an HTTP request's header block.
const maxSniff = 16 << 10

// sniffed is what a connection's first bytes said.
type sniffed struct {
	data []byte // bytes read from the client, to be replayed upstream
	host string // TLS SNI or HTTP Host (normalized); "" if none
	done bool   // data holds a complete ClientHello or request header (or can never be one)
}

// sniff reads the client's first bytes until they name a host, show they
// never will, or the read deadline set on c passes.
func sniff(c net.Conn) sniffed {
	return sniffOn(c, sniffed{data: make([]byte, 0, 2048)})
}

// sniffOn goes on reading after the bytes s already holds.
func sniffOn(c net.Conn, s sniffed) sniffed {
	buf := s.data
	tmp := make([]byte, 4096)
	for !s.done && len(buf) < maxSniff {
		n, err := c.Read(tmp[:min(len(tmp), maxSniff-len(buf))])
		buf = append(buf, tmp[:n]...)
		s.data = buf
		s.host, s.done = parseFirstBytes(buf)
		if err != nil {
			break
		}
	}
	return s
}

// parseFirstBytes finds the host a connection's first bytes name. done is
// false while more bytes could still change the answer.
func parseFirstBytes(b []byte) (host string, done bool) {
	if len(b) == 0 {
		return "", false
	}
	if b[0] == 0x16 { // TLS handshake record
		if len(b) < 5 {
			return "", false
		}
		need := 5 + int(b[3])<<8 | int(b[4])
		if len(b) < need {
			return "", false
		}
		return NormalizeHost(clientHelloSNI(b)), true
	}
	if !looksLikeHTTP(b) {
		return "", true
	}
	end := bytes.Index(b, []byte("\r\n\r\n"))
	if end < 0 {
		return "", len(b) >= maxSniff
	}
	req, err := http.ReadRequest(bufio.NewReader(bytes.NewReader(b[:end+4])))
	if err != nil {
		return "", true
	}
	h := req.Host
	if h == "" && req.URL != nil {
		h = req.URL.Host
	}
	if hp, _, err := net.SplitHostPort(h); err == nil {
		h = hp
	}
	return NormalizeHost(h), true
}

// looksLikeHTTP reports whether b can be the start of an HTTP/1 request.
func looksLikeHTTP(b []byte) bool {
	for _, m := range []string{"GET ", "POST ", "PUT ", "HEAD ", "DELETE ", "PATCH ", "OPTIONS ", "CONNECT ", "TRACE "} {
		n := min(len(b), len(m))
		if string(b[:n]) == m[:n] {
			return true
		}
	}
	return false
}

// clientHelloSNI returns the server name of the TLS ClientHello in b (the
// whole first record), by letting crypto/tls parse it and stopping there.
func clientHelloSNI(b []byte) string {
	var name string
	errStop := errors.New("stop")
	cfg := &tls.Config{GetConfigForClient: func(hi *tls.ClientHelloInfo) (*tls.Config, error) {
		name = hi.ServerName
		return nil, errStop
	}}
	tls.Server(&replayConn{r: bytes.NewReader(b)}, cfg).Handshake()
	return name
}

// replayConn is a read-only net.Conn over recorded bytes; writes vanish.
type replayConn struct {
	r *bytes.Reader
}

func (c *replayConn) Read(p []byte) (int, error)       { return c.r.Read(p) }
func (c *replayConn) Write(p []byte) (int, error)      { return len(p), nil }
func (c *replayConn) Close() error                     { return nil }
func (c *replayConn) LocalAddr() net.Addr              { return &net.TCPAddr{} }
func (c *replayConn) RemoteAddr() net.Addr             { return &net.TCPAddr{} }
func (c *replayConn) SetDeadline(time.Time) error      { return nil }
func (c *replayConn) SetReadDeadline(time.Time) error  { return nil }
func (c *replayConn) SetWriteDeadline(time.Time) error { return nil }
