package minihttp_test

import (
	"bufio"
	"errors"
	"io"
	"strings"
	"testing"

	"github.com/stasis-sandbox/stasis/internal/minihttp"
)

func read(t *testing.T, raw string) (*minihttp.Request, *bufio.Reader, error) {
	t.Helper()
	br := bufio.NewReader(strings.NewReader(raw))
	r, err := minihttp.ReadRequest(br)
	return r, br, err
}

func TestReadRequestContentLength(t *testing.T) {
	r, br, err := read(t, "PUT /v1/files?path=%2Ftmp%2Fa+b&format=zip HTTP/1.1\r\n"+
		"Host: x\r\ncontent-TYPE:  application/octet-stream \r\nX-Two: 1\r\nx-two: 2\r\n"+
		"Content-Length: 5\r\n\r\nhelloGET / HTTP/1.1\r\n")
	if err != nil {
		t.Fatal(err)
	}
	if r.Method != "PUT" || r.URL.Path != "/v1/files" || r.URL.Query().Get("path") != "/tmp/a b" || r.URL.Query().Get("format") != "zip" {
		t.Errorf("method %q, url %v", r.Method, r.URL)
	}
	if got := r.Header.Get("Content-Type"); got != "application/octet-stream" {
		t.Errorf("Content-Type %q", got)
	}
	if got := r.Header.Values("X-Two"); len(got) != 2 || got[0] != "1" || got[1] != "2" {
		t.Errorf("X-Two %q", got)
	}
	if r.ContentLength != 5 {
		t.Errorf("ContentLength %d", r.ContentLength)
	}
	b, err := io.ReadAll(r.Body)
	if err != nil || string(b) != "hello" {
		t.Fatalf("body %q, %v", b, err)
	}
	rest, _ := io.ReadAll(br)
	if string(rest) != "GET / HTTP/1.1\r\n" {
		t.Errorf("the body read past its end: left %q", rest)
	}
}

func TestReadRequestChunked(t *testing.T) {
	r, br, err := read(t, "POST /up HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n"+
		"5;ext=1\r\nhello\r\n7\r\n, world\r\n0\r\nTrailer: x\r\n\r\nNEXT")
	if err != nil {
		t.Fatal(err)
	}
	if r.ContentLength != -1 {
		t.Errorf("ContentLength %d, want -1", r.ContentLength)
	}
	b, err := io.ReadAll(r.Body)
	if err != nil || string(b) != "hello, world" {
		t.Fatalf("body %q, %v", b, err)
	}
	rest, _ := io.ReadAll(br)
	if string(rest) != "NEXT" {
		t.Errorf("left after the body: %q", rest)
	}
}

func TestReadRequestNoBody(t *testing.T) {
	r, _, err := read(t, "GET /v1/health HTTP/1.0\r\n\r\n")
	if err != nil {
		t.Fatal(err)
	}
	if b, err := io.ReadAll(r.Body); err != nil || len(b) != 0 {
		t.Errorf("body %q, %v", b, err)
	}
}

func TestReadRequestRejects(t *testing.T) {
	long := strings.Repeat("a", 1<<20+5000)
	for name, raw := range map[string]string{
		"no target":            "GET\r\n\r\n",
		"bad protocol":         "GET / HTTP/2.0\r\nHost: x\r\n\r\n",
		"absolute target":      "GET http://x/ HTTP/1.1\r\nHost: x\r\n\r\n",
		"no Host in 1.1":       "GET / HTTP/1.1\r\n\r\n",
		"two Hosts":            "GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n",
		"header without colon": "GET / HTTP/1.1\r\nHost: x\r\nbroken\r\n\r\n",
		"space in name":        "GET / HTTP/1.1\r\nHost: x\r\nBad Name: 1\r\n\r\n",
		"control in value":     "GET / HTTP/1.1\r\nHost: x\r\nX: a\x00b\r\n\r\n",
		"negative length":      "POST / HTTP/1.1\r\nHost: x\r\nContent-Length: -1\r\n\r\n",
		"plus length":          "POST / HTTP/1.1\r\nHost: x\r\nContent-Length: +1\r\n\r\n",
		"conflicting lengths":  "POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n",
		"length and chunked":   "POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 1\r\nTransfer-Encoding: chunked\r\n\r\n",
		"gzip coding":          "POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: gzip\r\n\r\n",
		"header too large":     "GET / HTTP/1.1\r\nHost: x\r\nX: " + long + "\r\n\r\n",
		"cut in header":        "GET / HTTP/1.1\r\nHost: x\r\n",
	} {
		if _, _, err := read(t, raw); err == nil {
			t.Errorf("%s: accepted", name)
		}
	}
}

func TestReadRequestBadChunks(t *testing.T) {
	for name, chunks := range map[string]string{
		"bad size":       "zz\r\nhello\r\n0\r\n\r\n",
		"no CRLF after":  "5\r\nhelloX\r\n0\r\n\r\n",
		"cut short":      "5\r\nhel",
		"no last chunk":  "5\r\nhello\r\n",
		"size too large": "ffffffffffffffffff\r\n",
	} {
		r, _, err := read(t, "POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n"+chunks)
		if err != nil {
			t.Fatalf("%s: %v", name, err)
		}
		if _, err := io.ReadAll(r.Body); err == nil {
			t.Errorf("%s: body read without error", name)
		}
	}
}

func TestBodyClosed(t *testing.T) {
	r, _, err := read(t, "POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\n\r\nabc")
	if err != nil {
		t.Fatal(err)
	}
	r.Body.Close()
	if _, err := r.Body.Read(make([]byte, 3)); err == nil || errors.Is(err, io.EOF) {
		t.Errorf("read after Close: %v, want an error", err)
	}
}

func TestCanonicalHeaderKey(t *testing.T) {
	for in, want := range map[string]string{
		"content-length": "Content-Length",
		"X-FOO-bar":      "X-Foo-Bar",
		"Host":           "Host",
		"bad key":        "bad key",
	} {
		if got := minihttp.CanonicalHeaderKey(in); got != want {
			t.Errorf("CanonicalHeaderKey(%q) = %q, want %q", in, got, want)
		}
	}
}

// FuzzReadRequest: any input either fails to parse or gives a request whose
// body reads to an end or an error, without a panic, and never reads past
// its Content-Length.
func FuzzReadRequest(f *testing.F) {
	f.Add("GET /v1/health HTTP/1.1\r\nHost: a\r\nAuthorization: Bearer x\r\n\r\n")
	f.Add("PUT /v1/files?path=/a HTTP/1.1\r\nHost: a\r\nContent-Length: 3\r\n\r\nabcdef")
	f.Add("POST /v1/files HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n3;x\r\nabc\r\n0\r\nT: 1\r\n\r\n")
	f.Add("POST /v1/exec HTTP/1.1\r\nHost: a\r\nConnection: Upgrade\r\nUpgrade: stasis-exec\r\nContent-Length: 0\r\n\r\n\x01\x00\x00\x00\x02{}")
	f.Fuzz(func(t *testing.T, raw string) {
		br := bufio.NewReader(strings.NewReader(raw))
		r, err := minihttp.ReadRequest(br)
		if err != nil {
			return
		}
		if r.Method == "" || !strings.HasPrefix(r.URL.Path, "/") && r.URL.Path != "" {
			t.Fatalf("parsed %q into method %q, path %q", raw, r.Method, r.URL.Path)
		}
		n, _ := io.Copy(io.Discard, r.Body)
		if r.ContentLength >= 0 && n > r.ContentLength {
			t.Fatalf("read %d body bytes past Content-Length %d", n, r.ContentLength)
		}
	})
}

// TestCutBodyIsAnError: a body that ends before its Content-Length (the
// client or stasisd went away mid-upload) reads as io.ErrUnexpectedEOF, not
// as a whole shorter body: the agent must not store a cut upload as if it
// were the file.
func TestCutBodyIsAnError(t *testing.T) {
	r, err := minihttp.ReadRequest(bufio.NewReader(strings.NewReader(
		"POST /files HTTP/1.1\r\nHost: x\r\nContent-Length: 10\r\n\r\nabc")))
	if err != nil {
		t.Fatal(err)
	}
	b, err := io.ReadAll(r.Body)
	if string(b) != "abc" || err != io.ErrUnexpectedEOF {
		t.Errorf("read %q, %v; want \"abc\", io.ErrUnexpectedEOF", b, err)
	}
}
