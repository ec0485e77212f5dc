package egress

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"net"
	"net/netip"
	"sync"
	"syscall"
	"time"

	"golang.org/x/sys/unix"
)

const (
	dialTimeout = 10 * time.Second
	// nameWait is how long the proxy waits for a connection's first bytes
	// when only a name (SNI or Host) could allow it; shortWait when the
	// sandbox's own lookups already tie the address to an allowed name
	// (a protocol where the server speaks first sends nothing).
	nameWait  = 5 * time.Second
	shortWait = 300 * time.Millisecond
	// logSniffWait bounds the wait for a name to log once the verdict is
	// known, if the upstream dial was quicker.
	logSniffWait = 50 * time.Millisecond
	// preDialedFresh is how long the upstream connection made before a
	// connection was intercepted is handed to the interceptor.
	preDialedFresh = 5 * time.Second
)

func (s *Server) serve() {
	for {
		c, err := s.ln.AcceptTCP()
		if err != nil {
			if s.ctx.Err() != nil {
				return
			}
			var ne net.Error
			if errors.As(err, &ne) && ne.Timeout() {
				continue
			}
			s.cfg.Logger.Error("egress: accept", "err", err)
			time.Sleep(100 * time.Millisecond)
			continue
		}
		s.wg.Add(1)
		go func() {
			defer s.wg.Done()
			s.handle(c)
		}()
	}
}

// handle decides on one redirected connection and, if allowed, connects it.
func (s *Server) handle(c *net.TCPConn) {
	defer c.Close()
	local, remote := addrOf(c.LocalAddr()), addrOf(c.RemoteAddr())
	id, ok := s.cfg.Identify(local, remote)
	if !ok {
		reset(c) // not from a sandbox link
		return
	}
	dst, err := s.cfg.origDst(c)
	if err != nil {
		s.cfg.Logger.Warn("egress: no original destination", "sandbox", id, "err", err)
		reset(c)
		return
	}
	ctx, cancel := context.WithCancel(s.ctx)
	defer cancel()
	ev := Event{SandboxID: id, Time: time.Now().UTC(), Dst: dst}

	pol, err := s.cfg.Policy(ctx, id)
	if err != nil {
		s.cfg.Logger.Warn("egress: rules unavailable; blocking", "sandbox", id, "err", err)
		ev.Verdict, ev.Rule = Blocked, "error"
		s.begin(ev)(0, 0)
		reset(c)
		return
	}
	d := pol.DecideAddr(dst.Addr(), s.cfg.DefaultAllow)
	if s.isHostAddr(dst.Addr()) || dst.Addr() == local {
		d = Decision{Rule: RuleInternal}
	}
	var first sniffed
	switch {
	case d.Rule == RuleInternal || d.Allowed || !pol.HasNames():
		// The name cannot change the verdict; it is read for the log
		// while the upstream connection is made.
	default:
		// Only an allowed name can let this connection through.
		wait := nameWait
		looked := s.lookedUpAllowed(id, dst.Addr(), pol)
		if looked != "" {
			wait = shortWait
		}
		c.SetReadDeadline(time.Now().Add(wait))
		first = sniff(c)
		c.SetReadDeadline(time.Time{})
		if first.host != "" {
			// The name the client sent is the one that counts.
			if rule := pol.MatchName(first.host); rule != "" && s.verified(ctx, id, first.host, dst.Addr()) {
				d = Decision{Allowed: true, Rule: "allow_out:" + rule}
			}
		} else if looked != "" && !first.claimsName() {
			d = Decision{Allowed: true, Rule: "allow_out:" + pol.MatchName(looked)}
			first.host = looked
		}
	}
	if !d.Allowed {
		ev.Verdict, ev.Rule, ev.Host = Blocked, d.Rule, s.hostFor(id, dst.Addr(), first)
		s.begin(ev)(0, 0)
		reset(c)
		return
	}
	ev.Rule = d.Rule

	// Dial first: a client speaks as soon as its connection is up, so its
	// first bytes are usually waiting by the time the upstream answers,
	// and reading them then costs no wait (and no goroutine).
	up, derr := s.dial(ctx, dst)
	if first.data == nil {
		// Read the first bytes for the log.
		c.SetReadDeadline(time.Now().Add(logSniffWait))
		first = sniff(c)
		c.SetReadDeadline(time.Time{})
	}
	if derr != nil {
		ev.Verdict, ev.Host = Failed, s.hostFor(id, dst.Addr(), first)
		s.begin(ev)(0, 0)
		reset(c)
		return
	}
	defer up.Close()
	ic := s.cfg.Intercept
	if ic != nil && !first.done {
		// The ClientHello may be slow to come: for a host a secret names,
		// wait for it, or the request would go out uninjected.
		if name := s.hostFor(id, dst.Addr(), first); name != "" && ic.Intercepts(id, name, dst) {
			c.SetReadDeadline(time.Now().Add(nameWait))
			first = sniffOn(c, first)
			c.SetReadDeadline(time.Time{})
		}
	}
	ev.Verdict, ev.Host = Allowed, s.hostFor(id, dst.Addr(), first)

	// Only TLS whose SNI names a host a bound secret names, at an address
	// that host really has, is intercepted: a credential never goes to an
	// address the sandbox merely claims belongs to the host.
	if ic != nil && first.isTLS() && first.host != "" && ic.Intercepts(id, first.host, dst) &&
		s.verified(ctx, id, first.host, dst.Addr()) {
		// The interceptor's first upstream connection is the one made,
		// while fresh (a server may drop one left without a handshake).
		var pre sync.Mutex
		dialed, dialedAt := up, time.Now()
		done := s.begin(ev)
		sent, recv, err := ic.Serve(ctx, &Conn{SandboxID: id, Host: ev.Host, Dst: dst,
			Client: &prefixConn{TCPConn: c, prefix: first.data},
			Dial: func(ctx context.Context) (net.Conn, error) {
				pre.Lock()
				u := dialed
				dialed = nil
				pre.Unlock()
				if u != nil && time.Since(dialedAt) < preDialedFresh {
					return u, nil
				}
				if u != nil {
					u.Close()
				}
				return s.dial(ctx, dst)
			}})
		if err != nil {
			s.cfg.Logger.Debug("egress: intercepted connection", "sandbox", id, "host", ev.Host, "err", err)
		}
		done(sent, recv)
		return
	}
	// The first bytes go on before the log row is queued: they are what
	// the client waits on.
	var sent, recv int64
	if len(first.data) > 0 {
		n, err := up.Write(first.data)
		sent = int64(n)
		if err != nil {
			s.begin(ev)(sent, 0)
			return
		}
	}
	done := s.begin(ev)
	n, recv := s.splice(c, up)
	done(sent+n, recv)
}

// isTLS reports whether the first bytes are a complete TLS ClientHello.
func (f sniffed) isTLS() bool {
	return f.done && len(f.data) > 0 && f.data[0] == 0x16
}

// claimsName reports whether the first bytes were TLS or HTTP: then their
// name, or the lack of one, is what counts.
func (f sniffed) claimsName() bool {
	return len(f.data) > 0 && (f.data[0] == 0x16 || looksLikeHTTP(f.data))
}

func (s *Server) begin(ev Event) func(sent, recv int64) {
	if s.cfg.Log == nil {
		return func(int64, int64) {}
	}
	return s.cfg.Log.Begin(ev)
}

// dial connects to dst from the host, after checking once more that dst is
// not an address no sandbox may reach.
func (s *Server) dial(ctx context.Context, dst netip.AddrPort) (*net.TCPConn, error) {
	if IsAlwaysBlocked(dst.Addr()) || s.isHostAddr(dst.Addr()) {
		return nil, fmt.Errorf("egress: %v is never dialed", dst)
	}
	if s.cfg.dialTCP != nil {
		return s.cfg.dialTCP(ctx, dst)
	}
	c, err := s.dialr.DialContext(ctx, "tcp4", dst.String())
	if err != nil {
		return nil, err
	}
	return c.(*net.TCPConn), nil
}

// verified reports whether host (allowed by name) really lives at addr: the
// sandbox's own lookup of it returned addr, or it resolves to addr now.
func (s *Server) verified(ctx context.Context, id, host string, addr netip.Addr) bool {
	return s.res.resolvedTo(id, host, addr) || s.res.resolvesTo(ctx, host, addr)
}

// lookedUpAllowed returns an allowed name whose lookup by the sandbox
// returned addr, or "".
func (s *Server) lookedUpAllowed(id string, addr netip.Addr, pol *Policy) string {
	for _, n := range s.res.namesFor(id, addr) {
		if pol.MatchName(n) != "" {
			return n
		}
	}
	return ""
}

// hostFor is the name a connection is logged under: what its first bytes
// named, else the name the sandbox looked up to get the address.
func (s *Server) hostFor(id string, addr netip.Addr, f sniffed) string {
	if f.host != "" {
		return f.host
	}
	return s.res.nameFor(id, addr)
}

// splice copies bytes both ways until both sides are done, half-closing
// as each direction ends, and returns the bytes sent (client to upstream)
// and received. Between two TCP sockets io.Copy moves them with splice(2),
// without copying them through the process.
func (s *Server) splice(c, up *net.TCPConn) (sent, recv int64) {
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		n, err := io.Copy(c, up)
		recv = n
		if err != nil {
			c.Close()
			up.Close()
			return
		}
		c.CloseWrite()
	}()
	// Stop when the proxy stops.
	stop := context.AfterFunc(s.ctx, func() { c.Close(); up.Close() })
	defer stop()
	n, err := io.Copy(up, c)
	sent += n
	if err != nil {
		c.Close()
		up.Close()
	} else {
		up.CloseWrite()
	}
	wg.Wait()
	return sent, recv
}

// reset closes c with a TCP reset, so the sandbox sees the connection
// refused at once rather than closed cleanly.
func reset(c *net.TCPConn) {
	c.SetLinger(0)
	c.Close()
}

// originalDst returns where a redirected connection was headed
// (SO_ORIGINAL_DST).
func originalDst(c *net.TCPConn) (netip.AddrPort, error) {
	rc, err := c.SyscallConn()
	if err != nil {
		return netip.AddrPort{}, err
	}
	var out netip.AddrPort
	var serr error
	err = rc.Control(func(fd uintptr) {
		// The kernel returns a sockaddr_in in the 16 bytes of an
		// ipv6_mreq, the usual way to read it from Go.
		mreq, err := unix.GetsockoptIPv6Mreq(int(fd), unix.SOL_IP, unix.SO_ORIGINAL_DST)
		if err != nil {
			serr = err
			return
		}
		b := mreq.Multiaddr
		if binary.LittleEndian.Uint16(b[0:2]) != syscall.AF_INET {
			serr = errors.New("not an IPv4 destination")
			return
		}
		port := binary.BigEndian.Uint16(b[2:4])
		out = netip.AddrPortFrom(netip.AddrFrom4([4]byte{b[4], b[5], b[6], b[7]}), port)
	})
	if err != nil {
		return out, err
	}
	return out, serr
}

// prefixConn replays bytes already read from a connection before reading
// on from it.
type prefixConn struct {
	*net.TCPConn
	prefix []byte
}

func (c *prefixConn) Read(p []byte) (int, error) {
	if len(c.prefix) > 0 {
		n := copy(p, c.prefix)
		c.prefix = c.prefix[n:]
		return n, nil
	}
	return c.TCPConn.Read(p)
}
