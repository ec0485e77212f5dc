package agent

import (
	"log"
	"net"
	"net/netip"
	"sync"
	"time"
)

// HostOnly wraps the agent's listener so that it serves the host side of the
// sandbox's link only: a connection from inside the sandbox (over loopback,
// or from one of the sandbox's own addresses to another) is closed before a
// byte is read. Code in the sandbox therefore cannot reach the agent's API at
// all, token or not. It cannot pose as the host either: sandboxes get neither
// CAP_NET_ADMIN (to add the host's address to an interface) nor raw sockets
// (runsc runs without --net-raw).
//
// Refusals are logged (at most one line a minute: the sandbox could flood).
func HostOnly(ln net.Listener, logger *log.Logger) net.Listener {
	return &hostOnlyListener{Listener: ln, log: logger, ownAddrs: interfaceAddrs}
}

type hostOnlyListener struct {
	net.Listener
	log      *log.Logger
	ownAddrs func() ([]netip.Addr, error) // the sandbox's addresses

	mu      sync.Mutex
	lastLog time.Time
	refused int // since lastLog
}

// Accept returns the next connection that comes from outside the sandbox.
func (l *hostOnlyListener) Accept() (net.Conn, error) {
	for {
		c, err := l.Listener.Accept()
		if err != nil {
			return nil, err
		}
		err = l.check(c)
		if err == nil {
			return c, nil
		}
		l.refuse(c, err)
	}
}

// check says why c must be refused, or nil if it comes from the host.
func (l *hostOnlyListener) check(c net.Conn) error {
	remote, local, ok := tcpAddrs(c)
	if !ok {
		return errNotTCP
	}
	if insidePeer(remote, local, nil) {
		return errInside
	}
	own, err := l.ownAddrs()
	if err != nil {
		// Fail closed: the host retries, code in the sandbox gets nothing.
		return err
	}
	if insidePeer(remote, local, own) {
		return errInside
	}
	return nil
}

func (l *hostOnlyListener) refuse(c net.Conn, why error) {
	if tc, ok := c.(*net.TCPConn); ok {
		tc.SetLinger(0) // reset: nothing to drain, no TIME_WAIT left behind
	}
	c.Close()
	if l.log == nil {
		return
	}
	l.mu.Lock()
	defer l.mu.Unlock()
	l.refused++
	if now := time.Now(); now.Sub(l.lastLog) >= time.Minute {
		l.log.Printf("refused %d connection(s) to the agent, the last from %v: %v", l.refused, c.RemoteAddr(), why)
		l.lastLog, l.refused = now, 0
	}
}

type refusal string

func (r refusal) Error() string { return string(r) }

const (
	errInside refusal = "it comes from inside the sandbox; the agent serves the host only"
	errNotTCP refusal = "not a TCP connection"
)

func tcpAddrs(c net.Conn) (remote, local netip.Addr, ok bool) {
	r, rok := c.RemoteAddr().(*net.TCPAddr)
	l, lok := c.LocalAddr().(*net.TCPAddr)
	if !rok || !lok {
		return netip.Addr{}, netip.Addr{}, false
	}
	return r.AddrPort().Addr().Unmap(), l.AddrPort().Addr().Unmap(), true
}

// insidePeer reports whether a connection from remote to local starts inside
// the sandbox whose own (interface) addresses are own: over loopback, or from
// an address of the sandbox itself.
func insidePeer(remote, local netip.Addr, own []netip.Addr) bool {
	if !remote.IsValid() || remote.IsLoopback() || local.IsLoopback() || remote.IsUnspecified() || remote == local {
		return true
	}
	for _, a := range own {
		if remote == a {
			return true
		}
	}
	return false
}

// interfaceAddrs lists the addresses of every interface of the sandbox. It
// is asked afresh for each connection: a restored or forked sandbox has other
// addresses than the one that was checkpointed.
func interfaceAddrs() ([]netip.Addr, error) {
	addrs, err := net.InterfaceAddrs()
	if err != nil {
		return nil, err
	}
	out := make([]netip.Addr, 0, len(addrs))
	for _, a := range addrs {
		if p, err := netip.ParsePrefix(a.String()); err == nil {
			out = append(out, p.Addr().Unmap())
		}
	}
	return out, nil
}
