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
// addresses and from the host, Accept returns the host's only; the others
// are closed, and the peer sees them end without a byte.
func TestHostOnlyAccepts(t *testing.T) {
	own := []netip.Addr{netip.MustParseAddr("127.0.0.1"), netip.MustParseAddr("169.254.0.2"), netip.MustParseAddr("fe80::2"), netip.MustParseAddr("::1")}
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
		{"[fe80::2]:40000", "[fe80::3]:49983", false},          // from another own address
		{"[::ffff:169.254.0.2]:1", "169.254.0.2:49983", false}, // mapped
		{"169.254.0.1:40000", "169.254.0.2:49983", true},       // the host
		{"[fe80::1]:40000", "[fe80::2]:49983", true},
	}
	q := &queueListener{conns: make(chan net.Conn, len(cases))}
	peers := make([]net.Conn, len(cases))
	for i, tc := range cases {
		a, b := net.Pipe()
		peers[i] = b
		q.conns <- addrConn{Conn: a, remote: tcpAddr(tc.remote), local: tcpAddr(tc.local)}
	}
	ln := &hostOnlyListener{Listener: q, ownAddrs: func() ([]netip.Addr, error) { return own, nil }}
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
}

// TestHostOnlyFailsClosed: if the sandbox's addresses cannot be listed, a
// connection is refused rather than let through.
func TestHostOnlyFailsClosed(t *testing.T) {
	a, _ := net.Pipe()
	q := &queueListener{conns: make(chan net.Conn, 1)}
	q.conns <- addrConn{Conn: a, remote: tcpAddr("169.254.0.1:1"), local: tcpAddr("169.254.0.2:49983")}
	ln := &hostOnlyListener{Listener: q, ownAddrs: func() ([]netip.Addr, error) { return nil, errors.New("netlink broke") }}
	if c, err := ln.Accept(); err == nil {
		t.Fatalf("accepted %v although the sandbox's addresses are unknown", c.RemoteAddr())
	}
}
