package egress

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"sync"
	"time"

	"github.com/miekg/dns"
)

// ResolverAddr is the address sandboxes send their DNS queries to (their
// /etc/resolv.conf names it). It is the same for every sandbox, whatever its
// link: the firewall redirects DNS to any address to the stasis resolver,
// so it survives restores and forks onto other links. It lies in
// 169.254.0.0/24, which no link is ever given.
var ResolverAddr = netip.MustParseAddr("169.254.0.53")

// How long a sandbox's lookups of a name are remembered (each lookup renews
// it), and how many names per sandbox.
const (
	lookupTTL        = 30 * time.Minute
	maxNamesPerBox   = 4096
	upstreamTimeout  = 5 * time.Second
	verifyCacheMin   = 5 * time.Second
	verifyCacheMax   = 5 * time.Minute
	maxVerifyEntries = 4096
)

// UpstreamsFromResolvConf reads the name servers of a resolv.conf file as
// host:port addresses.
func UpstreamsFromResolvConf(path string) ([]string, error) {
	cfg, err := dns.ClientConfigFromFile(path)
	if err != nil {
		return nil, fmt.Errorf("egress: reading %s: %w", path, err)
	}
	var out []string
	for _, s := range cfg.Servers {
		out = append(out, net.JoinHostPort(s, cfg.Port))
	}
	if len(out) == 0 {
		return nil, fmt.Errorf("egress: %s names no name server", path)
	}
	return out, nil
}

// resolver answers sandboxes' DNS queries by forwarding them upstream, and
// remembers per sandbox which addresses each name resolved to: name-based
// rules hold for those addresses.
type resolver struct {
	upstreams []string
	identify  func(local, remote netip.Addr) (string, bool)
	log       *slog.Logger

	mu     sync.Mutex
	boxes  map[string]*boxLookups // by sandbox ID
	verify map[string]verifyEntry // stasisd's own lookups, by name
}

type boxLookups struct {
	names map[string]*nameEntry // name → what it resolved to
	addrs map[netip.Addr]string // address → the last name that resolved to it
}

type nameEntry struct {
	addrs []netip.Addr
	seen  time.Time
}

type verifyEntry struct {
	addrs   []netip.Addr
	expires time.Time
}

func newResolver(upstreams []string, identify func(local, remote netip.Addr) (string, bool), log *slog.Logger) *resolver {
	return &resolver{upstreams: upstreams, identify: identify, log: log,
		boxes: map[string]*boxLookups{}, verify: map[string]verifyEntry{}}
}

// ServeDNS answers one query from a sandbox.
func (r *resolver) ServeDNS(w dns.ResponseWriter, req *dns.Msg) {
	// Over UDP the socket's local address is the wildcard, not where the
	// query arrived: the sandbox is known by its source address alone.
	local, remote := netip.Addr{}, addrOf(w.RemoteAddr())
	if _, tcp := w.RemoteAddr().(*net.TCPAddr); tcp {
		local = addrOf(w.LocalAddr())
	}
	id, ok := r.identify(local, remote)
	if !ok || len(req.Question) != 1 || req.Response {
		return // not a sandbox, or not a query: no answer
	}
	q := req.Question[0]
	if q.Qtype == dns.TypeAAAA {
		// Sandboxes have no IPv6: an empty answer sends clients straight
		// to IPv4 instead of trying addresses they cannot reach.
		m := new(dns.Msg)
		m.SetReply(req)
		w.WriteMsg(m)
		return
	}
	_, tcp := w.RemoteAddr().(*net.TCPAddr)
	ctx, cancel := context.WithTimeout(context.Background(), upstreamTimeout)
	defer cancel()
	resp, err := r.exchange(ctx, req, tcp)
	if err != nil {
		r.log.Debug("dns: upstream failed", "sandbox", id, "name", q.Name, "err", err)
		m := new(dns.Msg)
		m.SetRcode(req, dns.RcodeServerFailure)
		w.WriteMsg(m)
		return
	}
	resp.Id = req.Id
	resp.Answer = withoutAAAA(resp.Answer)
	if q.Qtype == dns.TypeA || q.Qtype == dns.TypeANY {
		if addrs := aRecords(resp); len(addrs) > 0 {
			r.remember(id, NormalizeHost(q.Name), addrs)
		}
	}
	if !tcp {
		resp.Truncate(dnsSize(req))
	}
	w.WriteMsg(resp)
}

func dnsSize(req *dns.Msg) int {
	if o := req.IsEdns0(); o != nil {
		return int(o.UDPSize())
	}
	return dns.MinMsgSize
}

// exchange forwards req to the upstreams in turn, over TCP when asked or
// when the UDP answer was truncated.
func (r *resolver) exchange(ctx context.Context, req *dns.Msg, tcp bool) (*dns.Msg, error) {
	var errs []error
	for _, up := range r.upstreams {
		m := req.Copy()
		m.Id = dns.Id()
		netw := "udp"
		if tcp {
			netw = "tcp"
		}
		c := &dns.Client{Net: netw, Timeout: upstreamTimeout}
		resp, _, err := c.ExchangeContext(ctx, m, up)
		if err == nil && resp.Truncated && !tcp {
			c.Net = "tcp"
			resp, _, err = c.ExchangeContext(ctx, m, up)
		}
		if err == nil {
			return resp, nil
		}
		errs = append(errs, fmt.Errorf("%s: %w", up, err))
		if ctx.Err() != nil {
			break
		}
	}
	if len(errs) == 0 {
		return nil, errors.New("no upstream name server")
	}
	return nil, errors.Join(errs...)
}

func withoutAAAA(rrs []dns.RR) []dns.RR {
	out := rrs[:0]
	for _, rr := range rrs {
		if rr.Header().Rrtype != dns.TypeAAAA {
			out = append(out, rr)
		}
	}
	return out
}

func aRecords(m *dns.Msg) []netip.Addr {
	var out []netip.Addr
	for _, rr := range m.Answer {
		if a, ok := rr.(*dns.A); ok {
			if ip, ok := netip.AddrFromSlice(a.A.To4()); ok {
				out = append(out, ip)
			}
		}
	}
	return out
}

func minTTL(m *dns.Msg) time.Duration {
	ttl := verifyCacheMax
	for _, rr := range m.Answer {
		if d := time.Duration(rr.Header().Ttl) * time.Second; d < ttl {
			ttl = d
		}
	}
	return max(ttl, verifyCacheMin)
}

// remember records that sandbox id's lookup of name returned addrs.
func (r *resolver) remember(id, name string, addrs []netip.Addr) {
	if name == "" {
		return
	}
	now := time.Now()
	r.mu.Lock()
	defer r.mu.Unlock()
	b := r.boxes[id]
	if b == nil {
		b = &boxLookups{names: map[string]*nameEntry{}, addrs: map[netip.Addr]string{}}
		r.boxes[id] = b
	}
	if _, ok := b.names[name]; !ok && len(b.names) >= maxNamesPerBox {
		b.evict(now)
	}
	b.names[name] = &nameEntry{addrs: addrs, seen: now}
	for _, a := range addrs {
		b.addrs[a] = name
	}
}

// evict drops expired names, or the oldest one if none has expired.
func (b *boxLookups) evict(now time.Time) {
	var oldest string
	for n, e := range b.names {
		if now.Sub(e.seen) > lookupTTL {
			b.drop(n)
		} else if oldest == "" || e.seen.Before(b.names[oldest].seen) {
			oldest = n
		}
	}
	if len(b.names) >= maxNamesPerBox && oldest != "" {
		b.drop(oldest)
	}
}

func (b *boxLookups) drop(name string) {
	for _, a := range b.names[name].addrs {
		if b.addrs[a] == name {
			delete(b.addrs, a)
		}
	}
	delete(b.names, name)
}

// resolvedTo reports whether sandbox id's own lookup of name returned addr.
func (r *resolver) resolvedTo(id, name string, addr netip.Addr) bool {
	r.mu.Lock()
	defer r.mu.Unlock()
	b := r.boxes[id]
	if b == nil {
		return false
	}
	e := b.names[name]
	if e == nil || time.Since(e.seen) > lookupTTL {
		return false
	}
	for _, a := range e.addrs {
		if a == addr {
			return true
		}
	}
	return false
}

// nameFor returns the name whose lookup by sandbox id last returned addr.
func (r *resolver) nameFor(id string, addr netip.Addr) string {
	r.mu.Lock()
	defer r.mu.Unlock()
	b := r.boxes[id]
	if b == nil {
		return ""
	}
	n := b.addrs[addr]
	if e := b.names[n]; e == nil || time.Since(e.seen) > lookupTTL {
		return ""
	}
	return n
}

// namesFor returns every name whose lookups by sandbox id returned addr.
func (r *resolver) namesFor(id string, addr netip.Addr) []string {
	r.mu.Lock()
	defer r.mu.Unlock()
	b := r.boxes[id]
	if b == nil {
		return nil
	}
	var out []string
	for n, e := range b.names {
		if time.Since(e.seen) > lookupTTL {
			continue
		}
		for _, a := range e.addrs {
			if a == addr {
				out = append(out, n)
				break
			}
		}
	}
	return out
}

// forget drops what sandbox id looked up.
func (r *resolver) forget(id string) {
	r.mu.Lock()
	delete(r.boxes, id)
	r.mu.Unlock()
}

// sandboxes lists the sandboxes with remembered lookups.
func (r *resolver) sandboxes() []string {
	r.mu.Lock()
	defer r.mu.Unlock()
	out := make([]string, 0, len(r.boxes))
	for id := range r.boxes {
		out = append(out, id)
	}
	return out
}

// resolvesTo reports whether name resolves to addr, asking the upstreams
// (answers are cached for their TTL, within bounds).
func (r *resolver) resolvesTo(ctx context.Context, name string, addr netip.Addr) bool {
	now := time.Now()
	r.mu.Lock()
	e, ok := r.verify[name]
	r.mu.Unlock()
	if !ok || now.After(e.expires) {
		m := new(dns.Msg)
		m.SetQuestion(dns.Fqdn(name), dns.TypeA)
		m.RecursionDesired = true
		resp, err := r.exchange(ctx, m, false)
		if err != nil {
			return false
		}
		e = verifyEntry{addrs: aRecords(resp), expires: now.Add(minTTL(resp))}
		r.mu.Lock()
		if len(r.verify) >= maxVerifyEntries {
			for n, v := range r.verify {
				if now.After(v.expires) {
					delete(r.verify, n)
				}
			}
			if len(r.verify) >= maxVerifyEntries {
				r.verify = map[string]verifyEntry{}
			}
		}
		r.verify[name] = e
		r.mu.Unlock()
	}
	for _, a := range e.addrs {
		if a == addr {
			return true
		}
	}
	return false
}

func addrOf(a net.Addr) netip.Addr {
	switch a := a.(type) {
	case *net.TCPAddr:
		ip, _ := netip.AddrFromSlice(a.IP)
		return ip.Unmap()
	case *net.UDPAddr:
		ip, _ := netip.AddrFromSlice(a.IP)
		return ip.Unmap()
	}
	if a == nil {
		return netip.Addr{}
	}
	ap, err := netip.ParseAddrPort(a.String())
	if err != nil {
		return netip.Addr{}
	}
	return ap.Addr().Unmap()
}
