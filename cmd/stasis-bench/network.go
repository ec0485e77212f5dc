package main

import (
	"context"
	"fmt"
	"io"
	"net/http"
	"net/http/httptrace"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	"github.com/stasis-sandbox/stasis/internal/testnet"
)

// The network phase: egress through stasis (its transparent proxy and DNS
// resolver) against a raw runsc container whose link is plainly NATed to
// the same test internet, and preview URLs against the host talking to the
// sandbox's address directly. The test internet is a netns of the
// harness's own (internal/testnet): no packet leaves loopback and it.

// previewServer is a small HTTP/1.1 server (keep-alive, one thread per
// connection) that a preview URL reaches: argv[1] is the port. It sends
// each response in one write: python's default (headers, then body, on a
// socket without TCP_NODELAY) meets the host's delayed ACK and adds about
// 40 ms to most responses, directly and through stasis alike, which would
// drown what is measured here.
const previewServer = `import sys
from http.server import ThreadingHTTPServer, BaseHTTPRequestHandler
class H(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    wbufsize = 65536
    def do_GET(self):
        b = b"ok\n"
        self.send_response(200)
        self.send_header("Content-Length", str(len(b)))
        self.end_headers()
        self.wfile.write(b)
    def log_message(self, *a):
        pass
ThreadingHTTPServer(("0.0.0.0", int(sys.argv[1])), H).serve_forever()
`

const previewPort = 8000

// netDNSDelay is how long the test internet's name server takes to answer.
const netDNSDelay = 5 * time.Millisecond

// startInternet builds the phase's test internet when the phase will run
// and stasisd can be pointed at it; it returns stasisd's extra flags.
func (b *bench) startInternet() []string {
	if !serverHasFlag(b.cfg.Stasisd, "dns-upstream") {
		return nil // a stasisd without egress: the phase reports not_available
	}
	if !b.runsPhase("network") {
		// Sandboxes of the other phases have no business resolving names.
		return []string{"--dns-upstream", "127.0.0.1:1"}
	}
	in, err := testnet.Start()
	if err != nil {
		b.problem("network: test internet: %v", err)
		return []string{"--dns-upstream", "127.0.0.1:1"}
	}
	b.inet = in
	flags := []string{"--egress", "allow", "--dns-upstream", in.DNS}
	if serverHasFlag(b.cfg.Stasisd, "egress-ca-file") {
		// Secret injection verifies the test internet's HTTPS sites.
		f, err := os.CreateTemp(b.cfg.TempDir, "stasis-bench-inet-ca-*.pem")
		if err == nil {
			_, err = f.Write(in.CAPEM)
			f.Close()
			b.inetCAFile = f.Name()
		}
		if err != nil {
			b.problem("network: test internet CA file: %v", err)
		} else {
			flags = append(flags, "--egress-ca-file", f.Name())
		}
	}
	return flags
}

func (b *bench) runsPhase(name string) bool {
	if b.cfg.Phases == "" {
		return true
	}
	for _, p := range strings.Split(b.cfg.Phases, ",") {
		if strings.TrimSpace(p) == name {
			return true
		}
	}
	return false
}

// netRows are the phase's rows, for "not available" reporting.
var netRows = []string{
	"egress HTTP download",
	"egress small HTTP GET by IP (new connection)",
	"egress small HTTP GET by name (DNS lookup + new connection)",
	"preview GET (new connection each)",
	"preview GET (keep-alive)",
	"preview request waking a paused sandbox (time to first byte)",
	"DNS lookup of a name (A record)",
}

func (b *bench) benchNetwork(ctx context.Context) error {
	if b.inet == nil {
		for _, n := range netRows {
			b.add(Row{Group: "network", Name: n, Status: "not_available",
				Note: "this stasisd has no sandbox egress (--dns-upstream), or the test internet could not be built"})
		}
		for _, n := range secretRows {
			b.add(Row{Group: "secrets", Name: n, Status: "not_available",
				Note: "this stasisd has no sandbox egress (--dns-upstream), or the test internet could not be built"})
		}
		return nil
	}
	// One site under two names: one a bench secret names (its TLS is
	// intercepted), one no secret names (its TLS passes through).
	site, err := b.inet.AddSite("bench.test", secretHost)
	if err != nil {
		return err
	}
	// A name server a few ms away, as a real one is (the test internet's
	// answers in microseconds otherwise): what a resolver's cache saves.
	b.inet.SetDNSDelay(netDNSDelay)
	bx, err := b.srv.create(ctx, b.name("net"), tmplBase, 0)
	if err != nil {
		return err
	}
	defer bx.delete(context.WithoutCancel(ctx))
	rb, err := b.raw.prepare(ctx, b.rootfs(tmplBase), sleepInit, 1024, 1)
	if err != nil {
		return err
	}
	defer rb.destroy(context.WithoutCancel(ctx))
	if err := rb.start(ctx); err != nil {
		return err
	}
	undo, err := b.rawNAT(ctx, rb)
	defer undo()
	if err != nil {
		return err
	}
	// The baseline resolves through the test internet's name server
	// directly (through the NAT); stasis's sandboxes through stasisd.
	dnsIP, _, _ := strings.Cut(b.inet.DNS, ":")
	if err := rb.exec(ctx, strings.NewReader("nameserver "+dnsIP+"\n"), nil, "/bin/sh", "-c", "cat > /etc/resolv.conf"); err != nil {
		return err
	}
	if err := b.netEgress(ctx, bx, rb, site); err != nil {
		return err
	}
	if err := b.netSecrets(ctx, bx, site); err != nil {
		return err
	}
	return b.netPreview(ctx, bx, site)
}

// rawNAT forwards the baseline container's link to the test internet, and
// nowhere else: forwarding on those two interfaces only, MASQUERADE to the
// test internet's link, everything else from the container's link dropped.
func (b *bench) rawNAT(ctx context.Context, rb *rawBox) (func(), error) {
	l, ok := b.raw.pool.Lookup(rb.ID)
	if !ok {
		return func() {}, fmt.Errorf("no link for %s", rb.ID)
	}
	in, out := l.HostIf, b.inet.HostIf
	// In order; inserted at the top of the chain in reverse.
	rules := [][]string{
		{"-t", "filter", "FORWARD", "-i", in, "-o", out, "-j", "ACCEPT"},
		{"-t", "filter", "FORWARD", "-i", out, "-o", in, "-m", "conntrack", "--ctstate", "ESTABLISHED,RELATED", "-j", "ACCEPT"},
		{"-t", "filter", "FORWARD", "-i", in, "-j", "DROP"},
		{"-t", "nat", "POSTROUTING", "-s", l.SandboxAddr.String() + "/32", "-o", out, "-j", "MASQUERADE"},
	}
	var undo []func()
	done := func() {
		for i := len(undo) - 1; i >= 0; i-- {
			undo[i]()
		}
	}
	for i := len(rules) - 1; i >= 0; i-- {
		r := rules[i]
		ins := append([]string{r[0], r[1], "-I", r[2], "1"}, r[3:]...)
		del := append([]string{r[0], r[1], "-D", r[2]}, r[3:]...)
		if out, err := exec.CommandContext(ctx, "iptables", ins...).CombinedOutput(); err != nil {
			return done, fmt.Errorf("iptables %s: %v: %s", strings.Join(ins, " "), err, out)
		}
		undo = append(undo, func() { exec.Command("iptables", del...).Run() })
	}
	for _, ifc := range []string{in, out} {
		p := filepath.Join("/proc/sys/net/ipv4/conf", ifc, "forwarding")
		old, err := os.ReadFile(p)
		if err != nil {
			return done, err
		}
		if err := os.WriteFile(p, []byte("1"), 0o644); err != nil {
			return done, fmt.Errorf("forwarding on %s: %w", ifc, err)
		}
		undo = append(undo, func() { os.WriteFile(p, old, 0o644) })
	}
	return done, nil
}

// curlTimes runs curl n times in the sandbox (stasis through the API, the
// baseline with runsc exec) and returns each transfer's time_total, as
// curl itself measured it inside the sandbox; with wantSize > 0 each
// transfer must bring that many bytes.
func curlTimes(ctx context.Context, run func(string) (string, error), url string, n int, wantSize int64) (durations, error) {
	return curlTimesOpts(ctx, run, "", url, n, wantSize)
}

// curlTimesOpts is curlTimes with more curl options (shell words).
func curlTimesOpts(ctx context.Context, run func(string) (string, error), opts, url string, n int, wantSize int64) (durations, error) {
	cmd := fmt.Sprintf(`for i in $(seq %d); do curl -sS --max-time 120 %s -o /dev/null -w '%%{time_total} %%{size_download}\n' %s || exit 1; done`, n, opts, url)
	out, err := run(cmd)
	if err != nil {
		return nil, err
	}
	var ds durations
	for _, line := range strings.Split(strings.TrimSpace(out), "\n") {
		var secs float64
		var size int64
		if _, err := fmt.Sscan(line, &secs, &size); err != nil {
			return nil, fmt.Errorf("curl printed %q", line)
		}
		if wantSize > 0 && size != wantSize {
			return nil, fmt.Errorf("%s: got %d bytes, want %d", url, size, wantSize)
		}
		ds.add(time.Duration(secs * float64(time.Second)))
	}
	if len(ds) != n {
		return nil, fmt.Errorf("%s: %d timings for %d transfers", url, len(ds), n)
	}
	return ds, nil
}

func (b *bench) netEgress(ctx context.Context, bx *box, rb *rawBox, site *testnet.Site) error {
	sRun := func(cmd string) (string, error) {
		res, err := bx.exec(ctx, cmd)
		if err != nil {
			return "", err
		}
		return res.Stdout, nil
	}
	rRun := func(cmd string) (string, error) {
		var buf strings.Builder
		err := rb.exec(ctx, nil, &buf, "/bin/sh", "-c", cmd)
		return buf.String(), err
	}
	byIP := "http://" + site.Addr.String() + "/"
	byName := "http://" + site.Name + "/"
	// Warm-up: both paths, both kinds of request.
	for _, run := range []func(string) (string, error){sRun, rRun} {
		for _, u := range []string{byIP, byName} {
			if _, err := curlTimes(ctx, run, u, 2, 0); err != nil {
				return fmt.Errorf("warm-up: %w", err)
			}
		}
	}

	size := int64(b.cfg.NetDownloadMiB) * mib
	big := fmt.Sprintf("http://%s/bytes/%d", site.Addr, size)
	var sDown, rDown durations
	for range b.cfg.NetDownloadReps {
		for _, side := range []struct {
			run func(string) (string, error)
			d   *durations
		}{{sRun, &sDown}, {rRun, &rDown}} {
			ds, err := curlTimes(ctx, side.run, big, 1, size)
			if err != nil {
				return err
			}
			*side.d = append(*side.d, ds...)
		}
	}
	ss, rs := sDown.stat(), rDown.stat()
	extra := map[string]any{"stasis_mb_per_s": throughput(size, ss), "raw_mb_per_s": throughput(size, rs)}
	if ss != nil && rs != nil && ss.Median > 0 {
		extra["throughput_vs_raw"] = round(rs.Median / ss.Median)
	}
	b.add(Row{Group: "network", Name: fmt.Sprintf("egress HTTP download %s", sizeLabel(size)),
		Stasis: ss, StasisOp: "curl in the sandbox, through stasisd's transparent proxy (curl's time_total)",
		Raw: rs, RawOp: "curl in the container, link NATed (MASQUERADE) to the test internet",
		Note: "time for the whole download; throughput_vs_raw is stasis's MB/s over raw's (goal ≥ 0.9)", Extra: extra})

	for _, m := range []struct{ name, url, note string }{
		{netRows[1], byIP, "curl http://IP/ (a few bytes), a new connection each time"},
		{netRows[2], byName, "curl http://bench.test/: a DNS lookup (stasis: stasisd's resolver; raw: the test internet's name server through the NAT) and a new connection each time"},
	} {
		var sd, rd durations
		// Alternate in batches, so drift on the host hits both sides.
		batch := min(10, b.cfg.NetGetReps)
		for done := 0; done < b.cfg.NetGetReps; done += batch {
			k := min(batch, b.cfg.NetGetReps-done)
			ds, err := curlTimes(ctx, sRun, m.url, k, 0)
			if err != nil {
				return err
			}
			sd = append(sd, ds...)
			if ds, err = curlTimes(ctx, rRun, m.url, k, 0); err != nil {
				return err
			}
			rd = append(rd, ds...)
		}
		b.addOverhead(Row{Group: "network", Name: m.name,
			Stasis: sd.stat(), StasisOp: m.note + ", through stasisd (curl's time_total)",
			Raw: rd.stat(), RawOp: m.note + ", plain NAT"})
	}
	return b.netLookups(ctx, sRun, rRun, site.Name)
}

// lookupScript resolves argv[1] argv[2] times with the C library (no
// cache in between) and prints each lookup's time in ms.
const lookupScript = `import socket, sys, time
for _ in range(int(sys.argv[2])):
    t = time.perf_counter()
    socket.gethostbyname(sys.argv[1])
    print((time.perf_counter() - t) * 1000)
`

// netLookups times name lookups alone, in one process per batch: stasis's
// resolver against the test internet's name server through the NAT.
func (b *bench) netLookups(ctx context.Context, sRun, rRun func(string) (string, error), name string) error {
	write := fmt.Sprintf("cat > /tmp/lookup.py <<'EOF'\n%sEOF\n", lookupScript)
	for _, run := range []func(string) (string, error){sRun, rRun} {
		if _, err := run(write); err != nil {
			return err
		}
	}
	cmd := func(n int) string { return fmt.Sprintf("python3 /tmp/lookup.py %s %d", name, n) }
	parse := func(out string, n int) (durations, error) {
		var ds durations
		for _, l := range strings.Fields(out) {
			ms, err := strconv.ParseFloat(l, 64)
			if err != nil {
				return nil, fmt.Errorf("lookup timing %q", l)
			}
			ds.add(time.Duration(ms * float64(time.Millisecond)))
		}
		if len(ds) != n {
			return nil, fmt.Errorf("%d lookup timings for %d lookups", len(ds), n)
		}
		return ds, nil
	}
	var sd, rd durations
	n := b.cfg.PreviewReps
	batch := min(50, n)
	for done := 0; done < n; done += batch {
		k := min(batch, n-done)
		for _, side := range []struct {
			run func(string) (string, error)
			d   *durations
		}{{sRun, &sd}, {rRun, &rd}} {
			out, err := side.run(cmd(k))
			if err != nil {
				return err
			}
			ds, err := parse(out, k)
			if err != nil {
				return err
			}
			*side.d = append(*side.d, ds...)
		}
	}
	b.addOverhead(Row{Group: "network", Name: netRows[6],
		Stasis: sd.stat(), StasisOp: "socket.gethostbyname in python in the sandbox, through stasisd's resolver",
		Raw: rd.stat(), RawOp: "the same, the test internet's name server asked through the NAT",
		Note: fmt.Sprintf("the test internet's name server answers after %s, as one across a network would; stasisd's resolver caches answers for their TTL (60 s here)", netDNSDelay)})
	return nil
}

// addOverhead adds a row with its p50 difference (goal: at most +1 ms).
func (b *bench) addOverhead(r Row) {
	if r.Stasis != nil && r.Raw != nil {
		if r.Extra == nil {
			r.Extra = map[string]any{}
		}
		r.Extra["p50_overhead_ms"] = round(r.Stasis.Median - r.Raw.Median)
	}
	b.add(r)
}

// sandboxAddr asks the sandbox for its own address (a UDP socket
// "connected" to the test internet sends nothing).
func sandboxAddr(ctx context.Context, bx *box, via netip.Addr) (netip.Addr, error) {
	res, err := bx.exec(ctx, fmt.Sprintf(`python3 -c 'import socket; s=socket.socket(socket.AF_INET, socket.SOCK_DGRAM); s.connect(("%s", 9)); print(s.getsockname()[0])'`, via))
	if err != nil {
		return netip.Addr{}, err
	}
	return netip.ParseAddr(strings.TrimSpace(res.Stdout))
}

// httpGet does one GET and reads the body; host, if set, is the Host
// header. It returns the time to the first response byte and in all.
func httpGet(ctx context.Context, c *http.Client, url, host string) (ttfb, total time.Duration, err error) {
	var first time.Time
	tr := &httptrace.ClientTrace{GotFirstResponseByte: func() { first = time.Now() }}
	req, err := http.NewRequestWithContext(httptrace.WithClientTrace(ctx, tr), "GET", url, nil)
	if err != nil {
		return 0, 0, err
	}
	if host != "" {
		req.Host = host
	}
	t0 := time.Now()
	resp, err := c.Do(req)
	if err != nil {
		return 0, 0, err
	}
	body, err := io.ReadAll(resp.Body)
	resp.Body.Close()
	total = time.Since(t0)
	if err != nil {
		return 0, 0, err
	}
	if resp.StatusCode != http.StatusOK || string(body) != "ok\n" {
		return 0, 0, fmt.Errorf("GET %s (Host %s): %d %q", url, host, resp.StatusCode, body)
	}
	return first.Sub(t0), total, nil
}

func (b *bench) netPreview(ctx context.Context, bx *box, site *testnet.Site) error {
	if err := bx.writeFile(ctx, "/tmp/preview_server.py", []byte(previewServer)); err != nil {
		return err
	}
	if _, err := bx.exec(ctx, fmt.Sprintf("nohup python3 /tmp/preview_server.py %d >/dev/null 2>&1 &", previewPort)); err != nil {
		return err
	}
	addr, err := sandboxAddr(ctx, bx, site.Addr)
	if err != nil {
		return err
	}
	direct := fmt.Sprintf("http://%s/", netip.AddrPortFrom(addr, previewPort))
	previewURL := b.srv.URL + "/"
	previewHost := fmt.Sprintf("%d-%s.sandbox.localhost", previewPort, bx.ID)
	fresh := &http.Client{Transport: &http.Transport{Proxy: nil, DisableKeepAlives: true, DisableCompression: true}}
	kept := &http.Client{Transport: &http.Transport{Proxy: nil, MaxIdleConnsPerHost: 4, DisableCompression: true}}
	defer kept.CloseIdleConnections()
	if err := waitFor(ctx, time.Minute, func() error { _, _, err := httpGet(ctx, fresh, direct, ""); return err }); err != nil {
		return fmt.Errorf("preview server in the sandbox: %w", err)
	}
	for _, m := range []struct {
		name string
		c    *http.Client
		how  string
	}{{netRows[3], fresh, "a new TCP connection for every request, as curl does"}, {netRows[4], kept, "one kept-alive connection"}} {
		for range 3 { // warm-up
			if _, _, err := httpGet(ctx, m.c, previewURL, previewHost); err != nil {
				return err
			}
			if _, _, err := httpGet(ctx, m.c, direct, ""); err != nil {
				return err
			}
		}
		var sd, rd durations
		for range b.cfg.PreviewReps {
			_, d, err := httpGet(ctx, m.c, previewURL, previewHost)
			if err != nil {
				return err
			}
			sd.add(d)
			if _, d, err = httpGet(ctx, m.c, direct, ""); err != nil {
				return err
			}
			rd.add(d)
		}
		b.addOverhead(Row{Group: "network", Name: m.name,
			Stasis: sd.stat(), StasisOp: "GET http://8000-ID.sandbox.localhost:PORT/ from the host to stasisd's API listener (" + m.how + "), proxied to a python HTTP/1.1 server in the sandbox",
			Raw: rd.stat(), RawOp: "the same GET from the host straight to the sandbox's address:8000 (" + m.how + ")"})
	}

	// Waking: a preview request to a paused (on disk only) sandbox, against
	// what a client would otherwise do: resume, then run a command.
	var sWake, rWake durations
	pauseCold := func() error {
		if err := bx.pause(ctx); err != nil {
			return err
		}
		return bx.waitDiskOnly(ctx)
	}
	for range b.cfg.WakeReps {
		if err := pauseCold(); err != nil {
			return err
		}
		ttfb, _, err := httpGet(ctx, fresh, previewURL, previewHost)
		if err != nil {
			return fmt.Errorf("preview waking the sandbox: %w", err)
		}
		sWake.add(ttfb)
		if err := pauseCold(); err != nil {
			return err
		}
		d, err := timed(func() error {
			if err := bx.resume(ctx); err != nil {
				return err
			}
			_, err := bx.exec(ctx, "true")
			return err
		})
		if err != nil {
			return err
		}
		rWake.add(d)
	}
	b.add(Row{Group: "network", Name: netRows[5],
		Stasis: sWake.stat(), StasisOp: "GET on the preview URL of a paused sandbox (snapshot on disk only) until the first response byte",
		Raw: rWake.stat(), RawOp: "(here not raw runsc) stasis's own POST /resume + POST /exec `true` on the same sandbox, paused the same way",
		Note: "the baseline column of this row is the API way to wake a sandbox, not raw runsc"})
	return nil
}
