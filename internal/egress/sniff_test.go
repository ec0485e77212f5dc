package egress

import (
	"bytes"
	"crypto/tls"
	"net"
	"testing"
	"time"
)

// clientHello records the first bytes a real TLS client sends for sni.
func clientHello(t *testing.T, sni string) []byte {
	t.Helper()
	a, b := net.Pipe()
	go func() {
		c := tls.Client(a, &tls.Config{ServerName: sni, InsecureSkipVerify: true})
		c.SetDeadline(time.Now().Add(2 * time.Second))
		c.Handshake()
		a.Close()
	}()
	b.SetDeadline(time.Now().Add(2 * time.Second))
	buf := make([]byte, 16<<10)
	n, _ := b.Read(buf)
	b.Close()
	return buf[:n]
}

func TestParseFirstBytes(t *testing.T) {
	hello := clientHello(t, "API.Example.test")
	for _, tc := range []struct {
		name string
		in   []byte
		host string
		done bool
	}{
		{"TLS", hello, "api.example.test", true},
		{"TLS, partial", hello[:20], "", false},
		{"HTTP", []byte("GET / HTTP/1.1\r\nHost: example.test:8080\r\nAccept: */*\r\n\r\n"), "example.test", true},
		{"HTTP, absolute form", []byte("GET http://abs.test/x HTTP/1.1\r\nHost: abs.test\r\n\r\n"), "abs.test", true},
		{"HTTP, partial", []byte("POST /x HTTP/1.1\r\nHo"), "", false},
		{"HTTP, IP literal", []byte("GET / HTTP/1.1\r\nHost: 203.0.113.5\r\n\r\n"), "", true},
		{"SSH", []byte("SSH-2.0-OpenSSH_9.6\r\n"), "", true},
		{"one byte", []byte("G"), "", false},
	} {
		host, done := parseFirstBytes(tc.in)
		if host != tc.host || done != tc.done {
			t.Errorf("%s: got (%q, %v), want (%q, %v)", tc.name, host, done, tc.host, tc.done)
		}
	}
	if !bytes.HasPrefix(hello, []byte{0x16}) {
		t.Fatal("not a TLS record")
	}
}
