package minihttp

import (
	"bufio"
	"errors"
	"fmt"
	"io"
	"net/url"
	"strconv"
	"strings"
)

// Request is a parsed request. Body is never nil; the server closes it.
type Request struct {
	Method        string
	URL           *url.URL // from the request target (origin form)
	RequestURI    string   // the target as sent
	Proto         string   // "HTTP/1.1"
	ProtoMinor    int      // 0 or 1
	Header        Header
	ContentLength int64 // -1: chunked
	Body          io.ReadCloser
	RemoteAddr    string

	close bool // the client asked to close after this request
}

// maxHeaderBytes bounds a request's line and header, as net/http's default.
const maxHeaderBytes = 1<<20 + 4096

// errTooLarge marks a header over maxHeaderBytes (answered 431).
var errTooLarge = errors.New("request header too large")

// badRequestError is a malformed request (answered 400).
type badRequestError string

func (e badRequestError) Error() string { return "malformed request: " + string(e) }

// limitedReader makes the header's size limit visible as errTooLarge.
type limitedReader struct {
	r *bufio.Reader
	n int
}

// readLine reads one CRLF (or LF) terminated line without its terminator.
func (l *limitedReader) readLine() (string, error) {
	var line []byte
	for {
		frag, err := l.r.ReadSlice('\n')
		l.n -= len(frag)
		if l.n < 0 {
			return "", errTooLarge
		}
		line = append(line, frag...)
		if err == nil {
			break
		}
		if err != bufio.ErrBufferFull {
			return "", err
		}
	}
	line = line[:len(line)-1]
	if n := len(line); n > 0 && line[n-1] == '\r' {
		line = line[:n-1]
	}
	return string(line), nil
}

// ReadRequest reads one request's line and header from br and sets up its
// body to read the rest of it from br (Content-Length or chunked).
func ReadRequest(br *bufio.Reader) (*Request, error) {
	lr := &limitedReader{r: br, n: maxHeaderBytes}
	line, err := lr.readLine()
	if err != nil {
		return nil, err
	}
	method, rest, ok1 := strings.Cut(line, " ")
	target, proto, ok2 := strings.Cut(rest, " ")
	if !ok1 || !ok2 || method == "" || !validMethod(method) {
		return nil, badRequestError("request line " + strconv.Quote(line))
	}
	r := &Request{Method: method, RequestURI: target, Proto: proto, Header: Header{}}
	switch proto {
	case "HTTP/1.1":
		r.ProtoMinor = 1
	case "HTTP/1.0":
	default:
		return nil, badRequestError("protocol " + strconv.Quote(proto))
	}
	if !strings.HasPrefix(target, "/") {
		return nil, badRequestError("request target " + strconv.Quote(target))
	}
	if r.URL, err = url.ParseRequestURI(target); err != nil {
		return nil, badRequestError(err.Error())
	}
	for {
		line, err := lr.readLine()
		if err != nil {
			if err == io.EOF {
				err = io.ErrUnexpectedEOF
			}
			return nil, err
		}
		if line == "" {
			break
		}
		name, value, ok := strings.Cut(line, ":")
		if !ok || name == "" || !validHeaderName(name) {
			return nil, badRequestError("header line " + strconv.Quote(line))
		}
		value = strings.Trim(value, " \t")
		if !validHeaderValue(value) {
			return nil, badRequestError("header value of " + name)
		}
		r.Header.Add(name, value)
	}
	if r.ProtoMinor == 1 && len(r.Header.Values("Host")) != 1 {
		return nil, badRequestError("missing or repeated Host")
	}
	conn := r.Header.Values("Connection")
	r.close = hasToken(conn, "close") || r.ProtoMinor == 0 && !hasToken(conn, "keep-alive")
	if err := r.setBody(br); err != nil {
		return nil, err
	}
	return r, nil
}

// setBody frames the body: chunked, Content-Length, or none.
func (r *Request) setBody(br *bufio.Reader) error {
	te := r.Header.Values("Transfer-Encoding")
	cl := r.Header.Values("Content-Length")
	switch {
	case len(te) > 0:
		if len(te) != 1 || !strings.EqualFold(strings.TrimSpace(te[0]), "chunked") {
			return errUnsupportedTE
		}
		if len(cl) > 0 {
			return badRequestError("both Transfer-Encoding and Content-Length")
		}
		r.ContentLength = -1
		r.Body = &body{src: &chunkedReader{r: br}}
	case len(cl) > 0:
		n, err := parseContentLength(cl)
		if err != nil {
			return err
		}
		r.ContentLength = n
		r.Body = &body{src: &lengthReader{r: br, n: n}}
	default:
		r.Body = &body{src: eofReader{}}
	}
	return nil
}

// errUnsupportedTE is a transfer coding other than chunked (answered 501).
var errUnsupportedTE = errors.New("unsupported Transfer-Encoding")

func parseContentLength(values []string) (int64, error) {
	v := strings.TrimSpace(values[0])
	for _, o := range values[1:] {
		if strings.TrimSpace(o) != v {
			return 0, badRequestError("conflicting Content-Length")
		}
	}
	n, err := strconv.ParseInt(v, 10, 64)
	if err != nil || n < 0 || v[0] == '+' {
		return 0, badRequestError("Content-Length " + strconv.Quote(v))
	}
	return n, nil
}

func validMethod(m string) bool {
	for i := 0; i < len(m); i++ {
		if !isTokenChar(m[i]) {
			return false
		}
	}
	return true
}

func validHeaderName(n string) bool { return validMethod(n) }

// validHeaderValue rejects control characters other than tab (a CR or LF in
// a value would let a header smuggle another).
func validHeaderValue(v string) bool {
	for i := 0; i < len(v); i++ {
		if c := v[i]; c < ' ' && c != '\t' || c == 0x7f {
			return false
		}
	}
	return true
}

type eofReader struct{}

// lengthReader reads a body of declared length: the connection ending
// before its end is io.ErrUnexpectedEOF, as in net/http, so that a handler
// never takes a cut upload for a whole one.
type lengthReader struct {
	r io.Reader
	n int64 // left
}

func (l *lengthReader) Read(p []byte) (int, error) {
	if l.n <= 0 {
		return 0, io.EOF
	}
	if int64(len(p)) > l.n {
		p = p[:l.n]
	}
	n, err := l.r.Read(p)
	l.n -= int64(n)
	if err == io.EOF && l.n > 0 {
		err = io.ErrUnexpectedEOF
	} else if err == io.EOF {
		err = nil
	}
	return n, err
}

func (eofReader) Read([]byte) (int, error) { return 0, io.EOF }

// body is a request body: reads after Close (or the handler's return)
// fail, so a handler cannot read the next request's bytes.
type body struct {
	src     io.Reader
	closed  bool
	sawEOF  bool
	onFirst func() // sends "100 Continue" before the first read, if asked
}

func (b *body) Read(p []byte) (int, error) {
	if b.closed {
		return 0, errors.New("minihttp: read on closed body")
	}
	if b.onFirst != nil {
		b.onFirst()
		b.onFirst = nil
	}
	n, err := b.src.Read(p)
	if err == io.EOF {
		b.sawEOF = true
	}
	return n, err
}

func (b *body) Close() error {
	b.closed = true
	return nil
}

// unreadOver reports whether more than limit bytes of the body are unread,
// or an unknown amount (chunked), or a body the client holds back until a
// 100 Continue it never got (as net/http, the connection then closes rather
// than guess whether the body or the next request comes next).
func (b *body) unreadOver(limit int64) bool {
	if b.sawEOF {
		return false
	}
	if b.onFirst != nil {
		return true
	}
	switch src := b.src.(type) {
	case *lengthReader:
		return src.n > limit
	case eofReader:
		return false
	}
	return true
}

// drain reads what is left of the body (up to limit bytes) so that the
// connection can serve the next request; false if it cannot.
func (b *body) drain(limit int64) bool {
	if b.sawEOF {
		return true
	}
	if b.onFirst != nil {
		return false // no 100 went out: the client may not send the body
	}
	if lr, ok := b.src.(*lengthReader); ok && lr.n > limit {
		return false
	}
	n, err := io.Copy(io.Discard, io.LimitReader(b.src, limit+1))
	if err != nil || n > limit {
		return false
	}
	b.sawEOF = true
	return true
}

// chunkedReader decodes a chunked body (RFC 9112 7.1); chunk extensions
// and trailers are read and ignored.
type chunkedReader struct {
	r    *bufio.Reader
	left int64 // of the current chunk
	done bool
	err  error
}

func (c *chunkedReader) Read(p []byte) (int, error) {
	if c.err != nil {
		return 0, c.err
	}
	if c.done {
		return 0, io.EOF
	}
	if c.left == 0 {
		n, err := c.chunkSize()
		if err != nil {
			c.err = err
			return 0, err
		}
		if n == 0 {
			if err := c.trailer(); err != nil {
				c.err = err
				return 0, err
			}
			c.done = true
			return 0, io.EOF
		}
		c.left = n
	}
	if int64(len(p)) > c.left {
		p = p[:c.left]
	}
	n, err := c.r.Read(p)
	c.left -= int64(n)
	if err == io.EOF {
		err = io.ErrUnexpectedEOF
	}
	if err == nil && c.left == 0 {
		err = c.crlf()
	}
	if err != nil {
		c.err = err
	}
	return n, err
}

func (c *chunkedReader) chunkSize() (int64, error) {
	lr := &limitedReader{r: c.r, n: 4096}
	line, err := lr.readLine()
	if err != nil {
		if err == io.EOF {
			err = io.ErrUnexpectedEOF
		}
		return 0, err
	}
	size, _, _ := strings.Cut(line, ";")
	size = strings.TrimRight(size, " \t")
	n, err := strconv.ParseUint(size, 16, 63)
	if err != nil || size == "" {
		return 0, badRequestError(fmt.Sprintf("chunk size %q", size))
	}
	return int64(n), nil
}

func (c *chunkedReader) crlf() error {
	b, err := c.r.ReadByte()
	if err == nil && b == '\r' {
		b, err = c.r.ReadByte()
	}
	if err == io.EOF {
		return io.ErrUnexpectedEOF
	}
	if err == nil && b != '\n' {
		return badRequestError("chunk not followed by CRLF")
	}
	return err
}

func (c *chunkedReader) trailer() error {
	lr := &limitedReader{r: c.r, n: 64 << 10}
	for {
		line, err := lr.readLine()
		if err != nil {
			if err == io.EOF {
				err = io.ErrUnexpectedEOF
			}
			return err
		}
		if line == "" {
			return nil
		}
	}
}
