// Package egress is the policy point every outbound connection of a sandbox
// passes: a DNS resolver that sandboxes query, and a transparent TCP proxy
// that the host's firewall redirects their connections to. For each new
// connection the proxy identifies the sandbox by its link, decides by the
// sandbox's current rules, dials the destination itself from the host, and
// logs the connection with its byte counts.
//
// Names count only where they cannot lie about the destination: a TLS SNI or
// HTTP Host matching an allowed domain allows a connection only to an
// address that name resolves to, and on other ports an allowed name counts
// through the addresses the sandbox's own lookups of it returned. The proxy
// only ever dials the address the sandbox asked for; whatever the rules,
// the always-blocked ranges and the host's own addresses are never dialed.
package egress

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"sync"
	"sync/atomic"
	"time"

	"github.com/miekg/dns"
)

// Config configures a Server.
type Config struct {
	// Identify names the sandbox whose link a connection came in on: local
	// is the host-side address it arrived at (invalid when unknown, for
	// UDP), remote the sandbox's address.
	Identify func(local, remote netip.Addr) (sandboxID string, ok bool)
	// Policy returns a sandbox's current rules; it is called for every new
	// connection, so a change applies at once.
	Policy func(ctx context.Context, sandboxID string) (*Policy, error)
	// DefaultAllow is the verdict when no rule matches (--egress allow).
	DefaultAllow bool
	// Upstreams are the name servers queries are forwarded to (host:port).
	Upstreams []string
	// Log records connections; nil logs nothing.
	Log Log
	// Intercept, if set, may take over allowed connections to some hosts
	// (e.g. to inject a bound secret's credentials).
	Intercept Interceptor
	// ListenAddr is where the proxy and resolver listen (their ports are
	// chosen by the kernel). Default 0.0.0.0: the firewall redirects
	// sandbox traffic to the address of the link it arrives on.
	ListenAddr string
	// NFLOGGroup, if set, is the first NFLOG group tried for connections
	// the host's firewall refuses (see NFLOGGroup), so they are logged.
	NFLOGGroup uint16
	// Alive reports whether a sandbox still exists; what the resolver
	// remembers about others is dropped now and then. nil: kept.
	Alive  func(sandboxID string) bool
	Logger *slog.Logger

	// Tests on loopback replace how a connection's destination is read
	// and how an allowed one is dialed (nil: SO_ORIGINAL_DST, and a TCP
	// connection to it).
	origDst func(*net.TCPConn) (netip.AddrPort, error)
	dialTCP func(ctx context.Context, dst netip.AddrPort) (*net.TCPConn, error)
}

// Event is one connection as the network log records it.
type Event struct {
	SandboxID string
	Time      time.Time
	Host      string // SNI, HTTP Host or the DNS name used; "" if unknown
	Dst       netip.AddrPort
	Verdict   string // Allowed, Blocked or Failed
	Rule      string
}

// Log records connections. Begin is called once the verdict is known; the
// returned function (non-nil) is called with the bytes sent and received
// when an allowed connection ends.
type Log interface {
	Begin(ev Event) (done func(sent, recv int64))
}

// Interceptor may take over allowed connections instead of having their
// bytes spliced through unchanged.
type Interceptor interface {
	// Intercepts reports whether the connection should be handed to Serve.
	Intercepts(sandboxID, host string, dst netip.AddrPort) bool
	// Serve handles the connection until it ends and returns the bytes
	// sent by the sandbox and received by it.
	Serve(ctx context.Context, c *Conn) (sent, recv int64, err error)
}

// Conn is an allowed connection handed to an Interceptor.
type Conn struct {
	SandboxID string
	Host      string
	Dst       netip.AddrPort // the verified destination
	// Client is the sandbox's side; bytes the proxy read to find the host
	// are read again first.
	Client net.Conn
	// Dial connects to Dst from the host.
	Dial func(ctx context.Context) (net.Conn, error)
}

// Server is a running resolver and proxy.
type Server struct {
	cfg   Config
	res   *resolver
	ln    *net.TCPListener
	udp   *dns.Server
	tcp   *dns.Server
	dialr net.Dialer

	nflog     *nflogReader                        // nil: refused connections are not logged
	hostAddrs atomic.Pointer[map[netip.Addr]bool] // refreshed every second by refreshHostAddrs

	t0     time.Time
	tResp  *atomic.Int64
	wg     sync.WaitGroup
	ctx    context.Context
	cancel context.CancelFunc
}

// Start listens and serves until Close.
func Start(cfg Config) (*Server, error) {
	if cfg.Identify == nil || cfg.Policy == nil {
		return nil, errors.New("egress: Identify and Policy are required")
	}
	if len(cfg.Upstreams) == 0 {
		return nil, errors.New("egress: no upstream name server")
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.Default()
	}
	if cfg.ListenAddr == "" {
		cfg.ListenAddr = "0.0.0.0"
	}
	if cfg.origDst == nil {
		cfg.origDst = originalDst
	}
	s := &Server{cfg: cfg, res: newResolver(cfg.Upstreams, cfg.Identify, cfg.Logger),
		dialr: net.Dialer{Timeout: dialTimeout}}
	s.ctx, s.cancel = context.WithCancel(context.Background())
	s.loadHostAddrs()
	if cfg.NFLOGGroup != 0 {
		r, err := openNFLOG(cfg.NFLOGGroup)
		if err != nil {
			// Egress works without it; only the log misses those rows.
			cfg.Logger.Warn("egress: connections the firewall refuses will not be logged", "err", err)
		} else {
			s.nflog = r
		}
	}
	ln, err := net.Listen("tcp4", net.JoinHostPort(cfg.ListenAddr, "0"))
	if err != nil {
		s.closeNFLOG()
		return nil, fmt.Errorf("egress: proxy listener: %w", err)
	}
	s.ln = ln.(*net.TCPListener)
	// The resolver takes one port number for UDP and TCP.
	var pc net.PacketConn
	var dl net.Listener
	for range 20 {
		pc, err = net.ListenPacket("udp4", net.JoinHostPort(cfg.ListenAddr, "0"))
		if err != nil {
			break
		}
		port := pc.LocalAddr().(*net.UDPAddr).Port
		if dl, err = net.Listen("tcp4", net.JoinHostPort(cfg.ListenAddr, fmt.Sprint(port))); err == nil {
			break
		}
		pc.Close()
		pc = nil
	}
	if pc == nil || dl == nil {
		s.ln.Close()
		s.closeNFLOG()
		return nil, fmt.Errorf("egress: resolver listeners: %v", err)
	}
	s.udp = &dns.Server{PacketConn: pc, Handler: s.res}
	s.tcp = &dns.Server{Listener: dl, Handler: s.res}
	for _, srv := range []*dns.Server{s.udp, s.tcp} {
		s.wg.Add(1)
		go func() {
			defer s.wg.Done()
			srv.ActivateAndServe()
		}()
	}
	s.wg.Add(3)
	go func() {
		defer s.wg.Done()
		s.serve()
	}()
	go func() {
		defer s.wg.Done()
		s.refreshHostAddrs()
	}()
	if s.nflog != nil {
		s.wg.Add(1)
		go func() {
			defer s.wg.Done()
			s.logRefused()
		}()
	}
	go func() {
		defer s.wg.Done()
		s.sweep()
	}()
	return s, nil
}

// sweep drops the lookups of sandboxes that are gone, every few minutes.
func (s *Server) sweep() {
	t := time.NewTicker(5 * time.Minute)
	defer t.Stop()
	for {
		select {
		case <-s.ctx.Done():
			return
		case <-t.C:
		}
		if s.cfg.Alive == nil {
			continue
		}
		for _, id := range s.res.sandboxes() {
			if !s.cfg.Alive(id) {
				s.res.forget(id)
			}
		}
	}
}

// ProxyPort is the TCP port of the transparent proxy.
func (s *Server) ProxyPort() int { return s.ln.Addr().(*net.TCPAddr).Port }

// DNSPort is the UDP and TCP port of the resolver.
func (s *Server) DNSPort() int { return s.udp.PacketConn.LocalAddr().(*net.UDPAddr).Port }

// NFLOGGroup is the NFLOG group the firewall should copy refused
// connections to, or 0.
func (s *Server) NFLOGGroup() int {
	if s.nflog == nil {
		return 0
	}
	return int(s.nflog.group)
}

// Close stops listening; connections in flight are cut.
func (s *Server) Close() error {
	s.cancel()
	err := s.ln.Close()
	s.udp.Shutdown()
	s.tcp.Shutdown()
	s.wg.Wait()
	s.closeNFLOG() // after its reader stopped: its fd number may be reused
	return err
}

func (s *Server) closeNFLOG() {
	if s.nflog != nil {
		s.nflog.Close()
	}
}

// logRefused logs the connections the host's firewall refused, as blocked
// by the always-blocked rule, under the name the sandbox looked up if any.
func (s *Server) logRefused() {
	buf := make([]byte, 64<<10)
	for s.ctx.Err() == nil {
		conns, err := s.nflog.read(buf)
		if err != nil {
			if s.ctx.Err() == nil {
				s.cfg.Logger.Warn("egress: reading refused connections", "err", err)
				time.Sleep(time.Second)
			}
			continue
		}
		for _, c := range conns {
			id, ok := s.cfg.Identify(netip.Addr{}, c.src)
			if !ok {
				continue
			}
			s.begin(Event{SandboxID: id, Time: time.Now().UTC(), Dst: c.dst, Verdict: Blocked, Rule: RuleInternal,
				Host: s.res.nameFor(id, c.dst.Addr())})(0, 0)
		}
	}
}

// isHostAddr reports whether a is one of the host's own addresses, as
// of the last refresh (at most a second old; the firewall refuses
// connections to them before they reach the proxy anyway).
func (s *Server) isHostAddr(a netip.Addr) bool {
	return (*s.hostAddrs.Load())[a]
}

// refreshHostAddrs reloads the host's addresses every second, off the
// connection path: listing them takes a netlink dump, long on a host with
// many sandbox links.
func (s *Server) refreshHostAddrs() {
	t := time.NewTicker(time.Second)
	defer t.Stop()
	for {
		select {
		case <-s.ctx.Done():
			return
		case <-t.C:
			s.loadHostAddrs()
		}
	}
}

func (s *Server) loadHostAddrs() {
	m := map[netip.Addr]bool{}
	addrs, err := net.InterfaceAddrs()
	if err != nil && s.hostAddrs.Load() != nil {
		return // keep what is known
	}
	for _, ad := range addrs {
		if n, ok := ad.(*net.IPNet); ok {
			if ip, ok := netip.AddrFromSlice(n.IP); ok {
				m[ip.Unmap()] = true
			}
		}
	}
	s.hostAddrs.Store(&m)
}
