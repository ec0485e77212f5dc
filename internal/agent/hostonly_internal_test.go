package agent

import (
	"errors"
	"io"
	"net"
	"net/netip"
	"testing"
	"time"
)

// addrConn is one end of a net.Pipe posing as a TCP connection between two
// addresses.
type addrConn struct {
	net.Conn
	remote, local *net.TCPAddr
}

func (c addrConn) RemoteAddr() net.Addr { return c.remote }
func (c addrConn) LocalAddr() net.Addr  { return c.local }

// queueListener hands out prepared connections, then fails.
type queueListener struct {
	conns chan net.Conn
}

func (l *queueListener) Accept() (net.Conn, error) {
	select {
	case c := <-l.conns:
		return c, nil
	default:
		return nil, errors.New("no more connections")
	}
}
func (l *queueListener) Close() error   { return nil }
func (l *queueListener) Addr() net.Addr { return &net.TCPAddr{} }

func tcpAddr(s string) *net.TCPAddr {
	return net.TCPAddrFromAddrPort(netip.MustParseAddrPort(s))
}

// TestHostOnlyAccepts: of connections from loopback, from the sandbox's own
// addresses and from peers on its links, Accept returns the peers' only; the
// others are closed, and the peer sees them end without a byte.
func TestHostOnlyAccepts(t *testing.T) {
	links := []netip.Prefix{netip.MustParsePrefix("169.254.0.2/30"), netip.MustParsePrefix("fe80::2/64"), netip.MustParsePrefix("fd00::2/64")}
	cases := []struct {
		remote, local string
		host          bool
	}{
		{"127.0.0.1:40000", "127.0.0.1:49983", false},
		{"[::1]:40000", "[::1]:49983", false},
		{"[::ffff:127.0.0.1]:40000", "[::ffff:127.0.0.1]:49983", false},
		{"127.0.0.5:40000", "169.254.0.2:49983", false}, // bound to another loopback address
		{"169.254.0.2:40000", "127.0.0.1:49983", false},
		{"169.254.0.2:40000", "169.254.0.2:49983", false},      // to its own eth0 address
		{"[fe80::2%eth0]:40000", "[fd00::2]:49983", false},     // from another own address
		{"[fd00::2]:40000", "[fe80::2%eth0]:49983", false},     // and back
		{"[::ffff:169.254.0.2]:1", "169.254.0.2:49983", false}, // mapped
		{"169.254.0.9:40000", "169.254.0.2:49983", false},      // not on the link
		{"0.0.0.0:40000", "169.254.0.2:49983", false},
		{"169.254.0.1:40000", "169.254.0.2:49983", true}, // the host
		{"[fe80::1%eth0]:40000", "[fe80::2%eth0]:49983", true},
	}
	q := &queueListener{conns: make(chan net.Conn, len(cases))}
	peers := make([]net.Conn, len(cases))
	for i, tc := range cases {
		a, b := net.Pipe()
		peers[i] = b
		q.conns <- addrConn{Conn: a, remote: tcpAddr(tc.remote), local: tcpAddr(tc.local)}
	}
	lookups := 0
	ln := &hostOnlyListener{Listener: q, interfaces: func() ([]netip.Prefix, error) {
		lookups++
		return links, nil
	}}
	accepted := map[string]bool{}
	for {
		c, err := ln.Accept()
		if err != nil {
			break
		}
		accepted[c.RemoteAddr().String()] = true
	}
	for i, tc := range cases {
		if got := accepted[tcpAddr(tc.remote).String()]; got != tc.host {
			t.Errorf("%s -> %s: accepted %v, want %v", tc.remote, tc.local, got, tc.host)
		}
		if !tc.host {
			peers[i].SetReadDeadline(time.Now().Add(5 * time.Second))
			if n, err := peers[i].Read(make([]byte, 1)); n != 0 || err != io.EOF {
				t.Errorf("%s -> %s: refused connection not closed: read %d, %v", tc.remote, tc.local, n, err)
			}
		}
	}
	if lookups == 0 {
		t.Error("the sandbox's addresses were never looked up")
	}
}

// TestHostOnlyFollowsAddressChange: after a restore under another address
// (a fork), the host's new address is accepted and the old one refused.
func TestHostOnlyFollowsAddressChange(t *testing.T) {
	links := []netip.Prefix{netip.MustParsePrefix("169.254.0.2/30")}
	lookups := 0
	q := &queueListener{conns: make(chan net.Conn, 4)}
	ln := &hostOnlyListener{Listener: q, interfaces: func() ([]netip.Prefix, error) {
		lookups++
		return links, nil
	}}
	accept := func(remote, local string) bool {
		a, _ := net.Pipe()
		q.conns <- addrConn{Conn: a, remote: tcpAddr(remote), local: tcpAddr(local)}
		c, err := ln.Accept()
		return err == nil && c != nil
	}
	if !accept("169.254.0.1:1", "169.254.0.2:49983") || !accept("169.254.0.1:2", "169.254.0.2:49983") {
		t.Fatal("host refused")
	}
	if lookups != 1 {
		t.Fatalf("%d lookups for two connections from the same host, want 1", lookups)
	}
	links = []netip.Prefix{netip.MustParsePrefix("169.254.8.2/30")}
	if !accept("169.254.8.1:1", "169.254.8.2:49983") {
		t.Fatal("new host address refused after the address change")
	}
	if accept("169.254.0.1:3", "169.254.8.2:49983") {
		t.Fatal("old host address accepted after the address change")
	}
}

// TestHostOnlyFailsClosed: if the sandbox's addresses cannot be listed, a
// connection is refused rather than let through.
func TestHostOnlyFailsClosed(t *testing.T) {
	a, _ := net.Pipe()
	q := &queueListener{conns: make(chan net.Conn, 1)}
	q.conns <- addrConn{Conn: a, remote: tcpAddr("169.254.0.1:1"), local: tcpAddr("169.254.0.2:49983")}
	ln := &hostOnlyListener{Listener: q, interfaces: func() ([]netip.Prefix, error) { return nil, errors.New("netlink broke") }}
	if c, err := ln.Accept(); err == nil {
		t.Fatalf("accepted %v although the sandbox's addresses are unknown", c.RemoteAddr())
	}
}
