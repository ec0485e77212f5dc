package egress

import (
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/netip"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/miekg/dns"
)

// fakeUpstream is a name server on loopback that counts the queries it gets.
type fakeUpstream struct {
	addr string
	mu   sync.Mutex
	n    map[string]int // queries by lower-case name
	ttl  uint32
}

func startUpstream(t *testing.T) *fakeUpstream {
	t.Helper()
	pc, err := net.ListenPacket("udp4", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	u := &fakeUpstream{addr: pc.LocalAddr().String(), n: map[string]int{}, ttl: 60}
	srv := &dns.Server{PacketConn: pc, Handler: dns.HandlerFunc(func(w dns.ResponseWriter, r *dns.Msg) {
		q := r.Question[0]
		name := strings.ToLower(q.Name)
		u.mu.Lock()
		u.n[name]++
		ttl := u.ttl
		u.mu.Unlock()
		m := new(dns.Msg)
		m.SetReply(r)
		switch {
		case strings.HasPrefix(name, "gone."):
			m.Rcode = dns.RcodeNameError
			m.Ns = []dns.RR{&dns.SOA{Hdr: dns.RR_Header{Name: "test.", Rrtype: dns.TypeSOA, Class: dns.ClassINET, Ttl: 600},
				Ns: "ns.test.", Mbox: "admin.test.", Minttl: 30}}
		case q.Qtype == dns.TypeA:
			m.Answer = []dns.RR{&dns.A{Hdr: dns.RR_Header{Name: q.Name, Rrtype: dns.TypeA, Class: dns.ClassINET, Ttl: ttl},
				A: net.IPv4(198, 51, 100, 7)}}
		}
		w.WriteMsg(m)
	})}
	go srv.ActivateAndServe()
	t.Cleanup(func() { srv.Shutdown() })
	return u
}

func (u *fakeUpstream) queries(name string) int {
	u.mu.Lock()
	defer u.mu.Unlock()
	return u.n[name]
}

// sandboxWriter is a sandbox's UDP socket as the resolver sees it.
type sandboxWriter struct {
	from netip.Addr
	got  *dns.Msg
}

func (w *sandboxWriter) LocalAddr() net.Addr {
	return &net.UDPAddr{IP: net.IPv4zero, Port: 53}
}
func (w *sandboxWriter) RemoteAddr() net.Addr {
	return &net.UDPAddr{IP: net.IP(w.from.AsSlice()), Port: 40000}
}
func (w *sandboxWriter) WriteMsg(m *dns.Msg) error { w.got = m; return nil }
func (w *sandboxWriter) Write([]byte) (int, error) { return 0, io.ErrClosedPipe }
func (w *sandboxWriter) Close() error              { return nil }
func (w *sandboxWriter) TsigStatus() error         { return nil }
func (w *sandboxWriter) TsigTimersOnly(bool)       {}
func (w *sandboxWriter) Hijack()                   {}

// testResolver identifies sandboxes by address: 169.254.1.2 is "a", 169.254.1.6 "b".
func testResolver(u *fakeUpstream, now func() time.Time) *resolver {
	boxes := map[netip.Addr]string{netip.MustParseAddr("169.254.1.2"): "a", netip.MustParseAddr("169.254.1.6"): "b"}
	r := newResolver([]string{u.addr}, func(_, remote netip.Addr) (string, bool) {
		id, ok := boxes[remote]
		return id, ok
	}, slog.New(slog.NewTextHandler(io.Discard, nil)))
	r.cache.now = now
	return r
}

func ask(t *testing.T, r *resolver, from, name string, qtype uint16) *dns.Msg {
	t.Helper()
	req := new(dns.Msg)
	req.SetQuestion(name, qtype)
	w := &sandboxWriter{from: netip.MustParseAddr(from)}
	r.ServeDNS(w, req)
	if w.got == nil {
		t.Fatalf("no answer to %s", name)
	}
	if w.got.Id != req.Id {
		t.Fatalf("answer ID %d, query ID %d", w.got.Id, req.Id)
	}
	return w.got
}

// A name asked again within its TTL is answered from the cache, with the
// TTL counting down, and still counts as that sandbox's lookup (the rules
// depend on it) — for another sandbox too.
func TestResolverCachesWithinTTL(t *testing.T) {
	u := startUpstream(t)
	now := time.Unix(1_000_000, 0)
	r := testResolver(u, func() time.Time { return now })
	site := netip.MustParseAddr("198.51.100.7")

	m := ask(t, r, "169.254.1.2", "Site.Test.", dns.TypeA)
	if len(m.Answer) != 1 || m.Answer[0].Header().Ttl != 60 {
		t.Fatalf("first answer: %v", m.Answer)
	}
	now = now.Add(20 * time.Second)
	m = ask(t, r, "169.254.1.6", "site.test.", dns.TypeA)
	if got := u.queries("site.test."); got != 1 {
		t.Errorf("upstream asked %d times for a name within its TTL, want 1", got)
	}
	if len(m.Answer) != 1 || m.Answer[0].Header().Ttl != 40 || m.Question[0].Name != "site.test." {
		t.Errorf("cached answer: question %v, answer %v; want the asker's question and TTL 40", m.Question, m.Answer)
	}
	if !r.resolvedTo("b", "site.test", site) || !r.resolvedTo("a", "site.test", site) {
		t.Error("a cached answer was not recorded as the sandbox's lookup")
	}
	if r.resolvedTo("b", "other.test", site) {
		t.Error("resolvedTo a name never looked up")
	}

	now = now.Add(41 * time.Second) // past the TTL
	ask(t, r, "169.254.1.2", "site.test.", dns.TypeA)
	if got := u.queries("site.test."); got != 2 {
		t.Errorf("upstream asked %d times after the TTL ran out, want 2", got)
	}
}

// "No such name" is cached for the SOA's negative TTL; a zero TTL is not
// cached at all; unknown sandboxes get no answer, cached or not.
func TestResolverCacheNegativeAndZeroTTL(t *testing.T) {
	u := startUpstream(t)
	now := time.Unix(1_000_000, 0)
	r := testResolver(u, func() time.Time { return now })

	for range 2 {
		if m := ask(t, r, "169.254.1.2", "gone.test.", dns.TypeA); m.Rcode != dns.RcodeNameError {
			t.Fatalf("rcode %d, want NXDOMAIN", m.Rcode)
		}
	}
	if got := u.queries("gone.test."); got != 1 {
		t.Errorf("NXDOMAIN asked upstream %d times within its negative TTL, want 1", got)
	}
	now = now.Add(31 * time.Second)
	ask(t, r, "169.254.1.2", "gone.test.", dns.TypeA)
	if got := u.queries("gone.test."); got != 2 {
		t.Errorf("NXDOMAIN asked upstream %d times after 31 s (SOA minimum 30 s), want 2", got)
	}

	u.mu.Lock()
	u.ttl = 0
	u.mu.Unlock()
	ask(t, r, "169.254.1.2", "zero.test.", dns.TypeA)
	ask(t, r, "169.254.1.2", "zero.test.", dns.TypeA)
	if got := u.queries("zero.test."); got != 2 {
		t.Errorf("a TTL-0 answer was cached (%d upstream queries for 2 lookups)", got)
	}

	w := &sandboxWriter{from: netip.MustParseAddr("169.254.9.9")}
	req := new(dns.Msg)
	req.SetQuestion("site.test.", dns.TypeA)
	r.ServeDNS(w, req)
	if w.got != nil {
		t.Errorf("a host that is no sandbox got an answer: %v", w.got)
	}
}

// The cache holds at most its bound, however many names are asked.
func TestResolverCacheBounded(t *testing.T) {
	u := startUpstream(t)
	r := testResolver(u, time.Now)
	r.cache.max = 16
	for i := range 50 {
		ask(t, r, "169.254.1.2", fmt.Sprintf("n%d.test.", i), dns.TypeA)
		r.cache.mu.Lock()
		n := len(r.cache.m)
		r.cache.mu.Unlock()
		if n > 16 {
			t.Fatalf("cache holds %d answers, bound 16", n)
		}
	}
}
