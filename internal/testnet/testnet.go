// Package testnet builds a stand-in for the internet on the host: a network
// namespace reached over a veth pair, holding addresses from the
// documentation ranges, with a DNS server and web sites. Tests use it
// through internal/testenv (which ties it to testing.TB); the benchmark
// harness uses it directly.
package testnet

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/json"
	"encoding/pem"
	"errors"
	"fmt"
	"io"
	"math/big"
	"net"
	"net/http"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/miekg/dns"
	"github.com/vishvananda/netns"
)

// Internet is a network namespace reached from the host over a veth pair,
// holding addresses from the documentation ranges 198.51.100.0/24 and
// 203.0.113.0/24 (192.0.2.0/24 is taken by the host's own network on the
// test machines), with a DNS server and web sites (HTTP on 80, HTTPS on 443
// with certificates from the Internet's own CA, and a TCP echo on 7).
// The host gets routes to this Internet's addresses only; nothing here
// sends a packet anywhere else.
//
// Each Internet takes one of a few slots (an flock), a /27 of each range:
// Internets of parallel processes do not collide.
type Internet struct {
	// DNS is the name server's address, for stasisd's --dns-upstream.
	DNS string
	// HostAddr is the host's end of the link: one of the host's own
	// addresses, which sandboxes must never reach.
	HostAddr netip.Addr
	// HostIf is the host's end of the link (the interface the host's
	// routes to this Internet go through).
	HostIf string
	// CAPEM is the certificate of the CA that signed the sites' certificates.
	CAPEM []byte

	slot    int
	lock    *os.File
	netns   string
	peer    netip.Addr
	free    []netip.Addr // addresses not handed out yet
	caKey   *ecdsa.PrivateKey
	caCert  *x509.Certificate
	mu      sync.Mutex
	records map[string][]netip.Addr // name (lower case, no dot) → A records; "*.x" wildcards
	dnsWait time.Duration           // how long the name server takes to answer
	closers []io.Closer
}

// Site is a server on the Internet.
type Site struct {
	Name    string
	Addr    netip.Addr
	mu      sync.Mutex
	got     map[string]int64         // bytes received by /sink, by request ID
	headers map[string]http.Header   // received by /headers, by request ID
	release map[string]chan struct{} // /sse streams waiting for /release, by ID
}

// slots is how many Internets may exist at once on the host.
const slots = 8

// slotWait is how long Start waits for a free slot.
const slotWait = 10 * time.Minute

// Start builds an Internet; Close removes it.
func Start() (in *Internet, err error) {
	in = &Internet{records: map[string][]netip.Addr{}}
	if in.slot, in.lock, err = lockSlot(); err != nil {
		return nil, err
	}
	base := 32 * in.slot
	in.HostAddr = netip.AddrFrom4([4]byte{198, 51, 100, byte(base + 1)})
	in.peer = netip.AddrFrom4([4]byte{198, 51, 100, byte(base + 2)})
	for i := 3; i <= 30; i++ {
		in.free = append(in.free, netip.AddrFrom4([4]byte{198, 51, 100, byte(base + i)}))
	}
	for i := 1; i <= 30; i++ {
		in.free = append(in.free, netip.AddrFrom4([4]byte{203, 0, 113, byte(base + i)}))
	}
	// Not "stasis-…": a stasisd with the default --netns-prefix "stasis"
	// would take any "stasis-<name>" namespace for one of its own links.
	in.netns = fmt.Sprintf("sttestnet-%d", in.slot)
	in.HostIf = fmt.Sprintf("stnet%d", in.slot)
	in.DNS = netip.AddrPortFrom(in.peer, 53).String()
	in.teardown() // leftovers of a crashed run
	defer func() {
		if err != nil {
			in.Close()
		}
	}()
	if err := in.build(); err != nil {
		return nil, err
	}
	if err := in.newCA(); err != nil {
		return nil, err
	}
	if err := in.startDNS(); err != nil {
		return nil, err
	}
	return in, nil
}

func lockSlot() (int, *os.File, error) {
	dir := filepath.Join(os.TempDir(), "stasis-testnet-slots")
	os.MkdirAll(dir, 0o755)
	deadline := time.Now().Add(slotWait)
	for {
		for n := range slots {
			f, err := os.OpenFile(filepath.Join(dir, fmt.Sprintf("%d.lock", n)), os.O_CREATE|os.O_RDWR, 0o644)
			if err != nil {
				return 0, nil, fmt.Errorf("testnet: slot lock: %w", err)
			}
			if syscall.Flock(int(f.Fd()), syscall.LOCK_EX|syscall.LOCK_NB) == nil {
				return n, f, nil
			}
			f.Close()
		}
		if time.Now().After(deadline) {
			return 0, nil, errors.New("testnet: no free test-internet slot")
		}
		time.Sleep(time.Second)
	}
}

func ip(args ...string) error {
	if out, err := exec.Command("ip", args...).CombinedOutput(); err != nil {
		return fmt.Errorf("ip %s: %v: %s", strings.Join(args, " "), err, strings.TrimSpace(string(out)))
	}
	return nil
}

// build makes the namespace, the link and the routes on both sides.
func (in *Internet) build() error {
	base := 32 * in.slot
	cmds := [][]string{
		{"netns", "add", in.netns},
		{"link", "add", in.HostIf, "type", "veth", "peer", "name", "eth0", "netns", in.netns},
		{"addr", "add", in.HostAddr.String() + "/32", "dev", in.HostIf},
		{"link", "set", in.HostIf, "up"},
		{"route", "add", in.peer.String() + "/32", "dev", in.HostIf, "src", in.HostAddr.String()},
	}
	for _, r := range []string{fmt.Sprintf("198.51.100.%d/27", base), fmt.Sprintf("203.0.113.%d/27", base)} {
		cmds = append(cmds, []string{"route", "add", r, "via", in.peer.String(), "dev", in.HostIf, "src", in.HostAddr.String()})
	}
	cmds = append(cmds,
		[]string{"-n", in.netns, "link", "set", "lo", "up"},
		[]string{"-n", in.netns, "addr", "add", in.peer.String() + "/32", "dev", "eth0"},
		[]string{"-n", in.netns, "link", "set", "eth0", "up"},
		[]string{"-n", in.netns, "route", "add", in.HostAddr.String() + "/32", "dev", "eth0"},
	)
	for _, c := range cmds {
		if err := ip(c...); err != nil {
			return fmt.Errorf("testnet: %w", err)
		}
	}
	return nil
}

// teardown removes the namespace, link and routes (routes go with the link).
func (in *Internet) teardown() {
	exec.Command("ip", "link", "del", in.HostIf).Run()
	exec.Command("ip", "netns", "del", in.netns).Run()
}

// Close stops every server and removes the Internet from the host.
func (in *Internet) Close() {
	in.mu.Lock()
	cl := in.closers
	in.closers = nil
	in.mu.Unlock()
	for _, c := range cl {
		c.Close()
	}
	in.teardown()
	if in.lock != nil {
		in.lock.Close()
		in.lock = nil
	}
}

func (in *Internet) onClose(c io.Closer) {
	in.mu.Lock()
	in.closers = append(in.closers, c)
	in.mu.Unlock()
}

// Listen opens a listener inside the Internet's namespace; Close closes it.
func (in *Internet) Listen(network, addr string) (net.Listener, error) {
	var ln net.Listener
	if err := in.inNetns(func() (err error) { ln, err = net.Listen(network, addr); return err }); err != nil {
		return nil, err
	}
	in.onClose(ln)
	return ln, nil
}

// ListenPacket opens a packet socket inside the Internet's namespace; Close
// closes it.
func (in *Internet) ListenPacket(network, addr string) (net.PacketConn, error) {
	var pc net.PacketConn
	if err := in.inNetns(func() (err error) { pc, err = net.ListenPacket(network, addr); return err }); err != nil {
		return nil, err
	}
	in.onClose(pc)
	return pc, nil
}

// inNetns runs fn on an OS thread inside the namespace; the thread is
// thrown away afterwards. Sockets fn creates stay in the namespace.
func (in *Internet) inNetns(fn func() error) error {
	errc := make(chan error, 1)
	go func() {
		runtime.LockOSThread() // never unlocked: the thread ends with the goroutine
		ns, err := netns.GetFromName(in.netns)
		if err != nil {
			errc <- err
			return
		}
		defer ns.Close()
		if err := netns.Set(ns); err != nil {
			errc <- err
			return
		}
		errc <- fn()
	}()
	if err := <-errc; err != nil {
		return fmt.Errorf("testnet: in %s: %w", in.netns, err)
	}
	return nil
}

// newAddr takes a free address and puts it on the namespace's interface.
func (in *Internet) newAddr() (netip.Addr, error) {
	in.mu.Lock()
	if len(in.free) == 0 {
		in.mu.Unlock()
		return netip.Addr{}, errors.New("testnet: out of addresses")
	}
	a := in.free[0]
	in.free = in.free[1:]
	in.mu.Unlock()
	if err := ip("-n", in.netns, "addr", "add", a.String()+"/32", "dev", "eth0"); err != nil {
		return netip.Addr{}, fmt.Errorf("testnet: %w", err)
	}
	return a, nil
}

// SetDNS makes name resolve to addrs ("*.example.test" answers for every
// name below example.test without its own record).
func (in *Internet) SetDNS(name string, addrs ...netip.Addr) {
	in.mu.Lock()
	in.records[strings.TrimSuffix(strings.ToLower(name), ".")] = addrs
	in.mu.Unlock()
}

// SetDNSDelay makes the name server take d to answer each query, as one
// across a network would.
func (in *Internet) SetDNSDelay(d time.Duration) {
	in.mu.Lock()
	in.dnsWait = d
	in.mu.Unlock()
}

func (in *Internet) lookup(name string) ([]netip.Addr, bool) {
	name = strings.TrimSuffix(strings.ToLower(name), ".")
	in.mu.Lock()
	defer in.mu.Unlock()
	if a, ok := in.records[name]; ok {
		return a, true
	}
	for n := name; strings.Contains(n, "."); {
		_, n, _ = strings.Cut(n, ".")
		if a, ok := in.records["*."+n]; ok {
			return a, true
		}
	}
	return nil, false
}

func (in *Internet) startDNS() error {
	h := dns.HandlerFunc(func(w dns.ResponseWriter, r *dns.Msg) {
		m := new(dns.Msg)
		m.SetReply(r)
		m.Authoritative = true
		if len(r.Question) != 1 {
			m.Rcode = dns.RcodeFormatError
			w.WriteMsg(m)
			return
		}
		in.mu.Lock()
		wait := in.dnsWait
		in.mu.Unlock()
		time.Sleep(wait)
		q := r.Question[0]
		addrs, ok := in.lookup(q.Name)
		if !ok {
			m.Rcode = dns.RcodeNameError
		} else if q.Qtype == dns.TypeA || q.Qtype == dns.TypeANY {
			for _, a := range addrs {
				m.Answer = append(m.Answer, &dns.A{
					Hdr: dns.RR_Header{Name: q.Name, Rrtype: dns.TypeA, Class: dns.ClassINET, Ttl: 60},
					A:   net.IP(a.AsSlice()),
				})
			}
		}
		w.WriteMsg(m)
	})
	pc, err := in.ListenPacket("udp4", in.DNS)
	if err != nil {
		return err
	}
	ln, err := in.Listen("tcp4", in.DNS)
	if err != nil {
		return err
	}
	udp := &dns.Server{PacketConn: pc, Handler: h}
	tcp := &dns.Server{Listener: ln, Handler: h}
	go udp.ActivateAndServe()
	go tcp.ActivateAndServe()
	return nil
}

func (in *Internet) newCA() error {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return err
	}
	tmpl := &x509.Certificate{
		SerialNumber:          big.NewInt(1),
		Subject:               pkix.Name{CommonName: "stasis test internet CA"},
		NotBefore:             time.Now().Add(-time.Hour),
		NotAfter:              time.Now().Add(24 * time.Hour),
		IsCA:                  true,
		KeyUsage:              x509.KeyUsageCertSign,
		BasicConstraintsValid: true,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		return fmt.Errorf("testnet: CA: %w", err)
	}
	in.caKey = key
	in.caCert, _ = x509.ParseCertificate(der)
	in.CAPEM = pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der})
	return nil
}

// cert issues a server certificate for the given names.
func (in *Internet) cert(names ...string) (tls.Certificate, error) {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return tls.Certificate{}, err
	}
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(time.Now().UnixNano()),
		Subject:      pkix.Name{CommonName: names[0]},
		DNSNames:     names,
		NotBefore:    time.Now().Add(-time.Hour),
		NotAfter:     time.Now().Add(24 * time.Hour),
		KeyUsage:     x509.KeyUsageDigitalSignature,
		ExtKeyUsage:  []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, in.caCert, &key.PublicKey, in.caKey)
	if err != nil {
		return tls.Certificate{}, fmt.Errorf("testnet: certificate for %v: %w", names, err)
	}
	return tls.Certificate{Certificate: [][]byte{der}, PrivateKey: key}, nil
}

// AddSite starts a site at a new address that the given names resolve to
// (the first one is its name). It serves, on HTTP (80) and HTTPS (443):
//
//	GET  /            "site <name> host <Host header>"
//	GET  /bytes/N     N bytes
//	POST /sink?id=X   reads the body, answers its length (see Received)
//	ANY  /headers?id=X  records the request's headers (see Headers) and
//	                  answers them as JSON, {"Name":["value"]}, with the
//	                  Host and protocol; with quiet=1 only "recorded"
//	GET  /sse?id=X    an event stream: "data: 1", then, once /release?id=X
//	                  was requested, "data: 2" and the end
//
// and echoes whatever it gets on TCP and UDP port 7.
func (in *Internet) AddSite(names ...string) (*Site, error) {
	addr, err := in.newAddr()
	if err != nil {
		return nil, err
	}
	s := &Site{Name: names[0], Addr: addr, got: map[string]int64{}, headers: map[string]http.Header{},
		release: map[string]chan struct{}{}}
	for _, n := range names {
		in.SetDNS(n, s.Addr)
	}
	mux := http.NewServeMux()
	mux.HandleFunc("GET /{$}", func(w http.ResponseWriter, r *http.Request) {
		fmt.Fprintf(w, "site %s host %s", s.Name, r.Host)
	})
	mux.HandleFunc("GET /bytes/{n}", func(w http.ResponseWriter, r *http.Request) {
		n, err := strconv.ParseInt(r.PathValue("n"), 10, 64)
		if err != nil || n < 0 {
			http.Error(w, "bad size", http.StatusBadRequest)
			return
		}
		w.Header().Set("Content-Length", strconv.FormatInt(n, 10))
		buf := make([]byte, 64<<10)
		for i := range buf {
			buf[i] = 'x'
		}
		for n > 0 {
			k := min(n, int64(len(buf)))
			if _, err := w.Write(buf[:k]); err != nil {
				return
			}
			n -= k
		}
	})
	mux.HandleFunc("POST /sink", func(w http.ResponseWriter, r *http.Request) {
		n, _ := io.Copy(io.Discard, r.Body)
		s.mu.Lock()
		s.got[r.URL.Query().Get("id")] += n
		s.mu.Unlock()
		fmt.Fprint(w, n)
	})
	mux.HandleFunc("/headers", func(w http.ResponseWriter, r *http.Request) {
		io.Copy(io.Discard, r.Body)
		s.mu.Lock()
		s.headers[r.URL.Query().Get("id")] = r.Header.Clone()
		s.mu.Unlock()
		if r.URL.Query().Get("quiet") == "1" {
			fmt.Fprint(w, "recorded")
			return
		}
		w.Header().Set("Content-Type", "application/json")
		json.NewEncoder(w).Encode(map[string]any{"headers": r.Header, "host": r.Host, "proto": r.Proto})
	})
	mux.HandleFunc("GET /sse", func(w http.ResponseWriter, r *http.Request) {
		ch := s.releaseChan(r.URL.Query().Get("id"))
		w.Header().Set("Content-Type", "text/event-stream")
		fmt.Fprint(w, "data: 1\n\n")
		w.(http.Flusher).Flush()
		select {
		case <-ch:
		case <-r.Context().Done():
			return
		case <-time.After(time.Minute):
			fmt.Fprint(w, "data: never-released\n\n")
			return
		}
		fmt.Fprint(w, "data: 2\n\n")
	})
	mux.HandleFunc("GET /release", func(w http.ResponseWriter, r *http.Request) {
		ch := s.releaseChan(r.URL.Query().Get("id"))
		s.mu.Lock()
		select {
		case <-ch:
		default:
			close(ch)
		}
		s.mu.Unlock()
		fmt.Fprint(w, "released")
	})
	httpLn, err := in.Listen("tcp4", netip.AddrPortFrom(s.Addr, 80).String())
	if err != nil {
		return nil, err
	}
	tlsLn, err := in.Listen("tcp4", netip.AddrPortFrom(s.Addr, 443).String())
	if err != nil {
		return nil, err
	}
	cert, err := in.cert(names...)
	if err != nil {
		return nil, err
	}
	uecho, err := in.ListenPacket("udp4", netip.AddrPortFrom(s.Addr, 7).String())
	if err != nil {
		return nil, err
	}
	echo, err := in.Listen("tcp4", netip.AddrPortFrom(s.Addr, 7).String())
	if err != nil {
		return nil, err
	}
	srv := &http.Server{Handler: mux, ReadHeaderTimeout: 10 * time.Second}
	tsrv := &http.Server{Handler: mux, ReadHeaderTimeout: 10 * time.Second,
		TLSConfig: &tls.Config{Certificates: []tls.Certificate{cert}}}
	in.onClose(srv)
	in.onClose(tsrv)
	go srv.Serve(httpLn)
	go tsrv.ServeTLS(tlsLn, "", "")
	go func() {
		buf := make([]byte, 2048)
		for {
			n, from, err := uecho.ReadFrom(buf)
			if err != nil {
				return
			}
			uecho.WriteTo(buf[:n], from)
		}
	}()
	go func() {
		for {
			c, err := echo.Accept()
			if err != nil {
				return
			}
			go func() {
				defer c.Close()
				io.Copy(c, c)
			}()
		}
	}()
	return s, nil
}

func (s *Site) releaseChan(id string) chan struct{} {
	s.mu.Lock()
	defer s.mu.Unlock()
	ch, ok := s.release[id]
	if !ok {
		ch = make(chan struct{})
		s.release[id] = ch
	}
	return ch
}

// Headers returns the headers of the /headers request with ?id=id (nil if
// there was none).
func (s *Site) Headers(id string) http.Header {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.headers[id]
}

// Received is how many bytes /sink requests with ?id=id brought.
func (s *Site) Received(id string) int64 {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.got[id]
}
