package agent

import (
	"log"
	"net"
	"net/netip"
	"slices"
	"sync"
	"sync/atomic"
	"time"
)

// HostOnly wraps the agent's listener so that it serves the host side of the
// sandbox's link only: it accepts a connection only from a peer on one of
// the sandbox's links, never over loopback and never from one of the
// sandbox's own addresses. Anything else is reset before a byte is read, so
// code in the sandbox cannot reach the agent's API at all, token or not. It
// cannot pose as the host either: sandboxes get neither CAP_NET_ADMIN (to
// give themselves the host's address) nor raw sockets (runsc runs without
// --net-raw).
//
// Refusals are logged (at most one line a minute: the sandbox could flood).
func HostOnly(ln net.Listener, logger *log.Logger) net.Listener {
	l := &hostOnlyListener{Listener: ln, log: logger, interfaces: interfaceAddrs}
	// Learn the links now, while the agent starts, rather than on the first
	// connection: that is stasisd's health check, which would wait for it.
	go func() {
		if links, err := l.interfaces(); err == nil {
			l.links.CompareAndSwap(nil, &links)
		}
	}()
	return l
}

type hostOnlyListener struct {
	net.Listener
	log        *log.Logger
	interfaces func() ([]netip.Prefix, error) // the sandbox's addresses, with their links' prefixes

	// links is what interfaces last said. It is asked again whenever a
	// connection does not come from a peer it lists: a restored or forked
	// sandbox has other addresses than the one that was checkpointed, and
	// the host's connections should not pay for a lookup (~1 ms in gVisor).
	links atomic.Pointer[[]netip.Prefix]

	mu      sync.Mutex
	lastLog time.Time
	refused int // since lastLog
}

// Accept returns the next connection that comes from the host.
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
	if remote.IsLoopback() || local.IsLoopback() || remote.IsUnspecified() || remote == local {
		return errInside
	}
	if links := l.links.Load(); links != nil && linkPeer(*links, remote) {
		return nil
	}
	links, err := l.interfaces()
	if err != nil {
		return err // fail closed: the host retries, code in the sandbox gets nothing
	}
	l.links.Store(&links)
	if linkPeer(links, remote) {
		return nil
	}
	return errInside
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
	errInside refusal = "it does not come from the host; the agent serves the host side of the sandbox's link only"
	errNotTCP refusal = "not a TCP connection"
)

// tcpAddrs returns c's addresses, unmapped and without zones.
func tcpAddrs(c net.Conn) (remote, local netip.Addr, ok bool) {
	r, rok := c.RemoteAddr().(*net.TCPAddr)
	l, lok := c.LocalAddr().(*net.TCPAddr)
	if !rok || !lok {
		return netip.Addr{}, netip.Addr{}, false
	}
	return r.AddrPort().Addr().Unmap().WithZone(""), l.AddrPort().Addr().Unmap().WithZone(""), true
}

// linkPeer reports whether a is on one of links (the sandbox's own addresses
// with their prefix lengths) without being one of the sandbox's addresses.
func linkPeer(links []netip.Prefix, a netip.Addr) bool {
	if !a.IsValid() || a.IsLoopback() {
		return false
	}
	if slices.ContainsFunc(links, func(p netip.Prefix) bool { return p.Addr() == a }) {
		return false
	}
	return slices.ContainsFunc(links, func(p netip.Prefix) bool { return p.Masked().Contains(a) })
}

// interfaceAddrs lists the sandbox's non-loopback addresses with the prefix
// lengths of their links.
func interfaceAddrs() ([]netip.Prefix, error) {
	addrs, err := net.InterfaceAddrs()
	if err != nil {
		return nil, err
	}
	out := make([]netip.Prefix, 0, len(addrs))
	for _, a := range addrs {
		p, err := netip.ParsePrefix(a.String())
		if err != nil || p.Addr().IsLoopback() {
			continue
		}
		out = append(out, netip.PrefixFrom(p.Addr().Unmap().WithZone(""), p.Bits()))
	}
	return out, nil
}
