package main

import (
	"context"
	"fmt"
	"strconv"
	"strings"
	"time"

	"github.com/stasis-sandbox/stasis/internal/testnet"
)

// The secrets rows of the network phase: HTTPS from the sandbox through
// stasisd's injecting proxy (the sandbox's TLS terminated with stasisd's CA,
// the stand-in token swapped for the real value, the request re-encrypted
// to the site over verified TLS) against the same HTTPS request, from the
// same sandbox to the same site, through egress without interception (a
// name no secret names: the proxy splices its TLS through unread).

// secretHost is the bench site's name that the bench secret names.
const secretHost = "secret.test"

var secretRows = []string{
	"HTTPS request with secret injection (kept-alive)",
	"HTTPS download with secret injection",
}

// keptAliveScript sends argv[2] GETs to https://argv[1]/headers on one
// kept-alive connection with the bench secret's stand-in as a bearer token
// and prints each one's time in ms (the first, which makes the connection,
// is left out). argv[3] is a CA file to trust, or "-" for the system's
// (which holds stasisd's CA). argv[4] tells the site which request it is.
const keptAliveScript = `import http.client, os, ssl, sys, time
host, n, ca, rid = sys.argv[1], int(sys.argv[2]), sys.argv[3], sys.argv[4]
ctx = ssl.create_default_context(cafile=None if ca == "-" else ca)
c = http.client.HTTPSConnection(host, 443, context=ctx)
h = {"Authorization": "Bearer " + os.environ["BENCH_TOKEN"]}
for i in range(n + 1):
    t = time.perf_counter()
    c.request("GET", "/headers?quiet=1&id=" + rid, headers=h)
    r = c.getresponse()
    body = r.read()
    ms = (time.perf_counter() - t) * 1000
    if r.status != 200 or body != b"recorded":
        sys.exit("GET %s: %d %r" % (host, r.status, body[:200]))
    if i:
        print(ms)
`

func (b *bench) netSecrets(ctx context.Context, bx *box, site *testnet.Site) error {
	if b.inetCAFile == "" {
		for _, n := range secretRows {
			b.add(Row{Group: "secrets", Name: n, Status: "not_available",
				Note: "this stasisd cannot trust the test internet's CA (--egress-ca-file)"})
		}
		return nil
	}
	value := "bench-value-" + randomHex(16)
	if err := b.srv.do(ctx, "POST", "/secrets", map[string]any{"name": "bench-secret", "value": value,
		"auth": map[string]string{"type": "bearer"}, "hosts": []string{secretHost}}, nil); err != nil {
		return fmt.Errorf("create the bench secret: %w", err)
	}
	defer b.srv.do(context.WithoutCancel(ctx), "DELETE", "/secrets/bench-secret", nil, nil)
	if err := b.srv.do(ctx, "POST", "/sandboxes/"+bx.ID+"/secrets",
		map[string]string{"env_key": "BENCH_TOKEN", "secret_name": "bench-secret"}, nil); err != nil {
		return fmt.Errorf("attach the bench secret: %w", err)
	}
	if err := bx.writeFile(ctx, "/tmp/inet-ca.pem", b.inet.CAPEM); err != nil {
		return err
	}
	if err := bx.writeFile(ctx, "/tmp/keptalive.py", []byte(keptAliveScript)); err != nil {
		return err
	}
	run := func(cmd string) (string, error) {
		res, err := bx.exec(ctx, cmd)
		if err != nil {
			return "", err
		}
		if res.ExitCode != 0 {
			return "", fmt.Errorf("%s: exit %d: %s", cmd, res.ExitCode, res.Stderr)
		}
		return res.Stdout, nil
	}
	injected := struct{ host, ca, id string }{secretHost, "-", "bench-injected"}
	passed := struct{ host, ca, id string }{"bench.test", "/tmp/inet-ca.pem", "bench-passed"}

	// Small requests, kept alive, alternating in batches.
	kept := func(side struct{ host, ca, id string }, n int) (durations, error) {
		out, err := run(fmt.Sprintf("python3 /tmp/keptalive.py %s %d %s %s", side.host, n, side.ca, side.id))
		if err != nil {
			return nil, err
		}
		var ds durations
		for _, l := range strings.Fields(out) {
			ms, err := strconv.ParseFloat(l, 64)
			if err != nil {
				return nil, fmt.Errorf("request timing %q", l)
			}
			ds.add(time.Duration(ms * float64(time.Millisecond)))
		}
		if len(ds) != n {
			return nil, fmt.Errorf("%d timings for %d requests", len(ds), n)
		}
		return ds, nil
	}
	if _, err := kept(injected, 2); err != nil { // warm-up
		return err
	}
	if _, err := kept(passed, 2); err != nil {
		return err
	}
	// The injected request must really have been injected, and the
	// passed-through one not: else the rows compare the wrong things.
	if got := site.Headers(injected.id).Get("Authorization"); got != "Bearer "+value {
		return fmt.Errorf("secrets: the site got Authorization %q through the injecting proxy, not the secret's value", got)
	}
	if got := site.Headers(passed.id).Get("Authorization"); got == "Bearer "+value || !strings.HasPrefix(got, "Bearer ") {
		return fmt.Errorf("secrets: the pass-through request arrived with Authorization %q, want the stand-in", got)
	}
	var sd, pd durations
	n := b.cfg.PreviewReps
	batch := min(50, n)
	for done := 0; done < n; done += batch {
		k := min(batch, n-done)
		ds, err := kept(injected, k)
		if err != nil {
			return err
		}
		sd = append(sd, ds...)
		if ds, err = kept(passed, k); err != nil {
			return err
		}
		pd = append(pd, ds...)
	}
	b.addOverhead(Row{Group: "secrets", Name: secretRows[0],
		Stasis: sd.stat(), StasisOp: "python http.client in the sandbox, GET https://" + secretHost + "/headers with the stand-in as bearer token on one kept-alive connection: TLS terminated by stasisd, the token swapped for the secret's value, the request re-encrypted to the site",
		Raw: pd.stat(), RawOp: "(not raw runsc) the same GET from the same sandbox to the same site under a name no secret names: egress without interception (the proxy splices the TLS through)",
		Note: "both columns are stasis; p50_overhead_ms is what injection adds (goal: at most +2 ms)"})

	// A large body, alternating.
	size := int64(b.cfg.NetDownloadMiB) * mib
	auth := `-H "Authorization: Bearer $BENCH_TOKEN"`
	var sDown, pDown durations
	for range b.cfg.NetDownloadReps {
		ds, err := curlTimesOpts(ctx, run, auth, fmt.Sprintf("https://%s/bytes/%d", secretHost, size), 1, size)
		if err != nil {
			return err
		}
		sDown = append(sDown, ds...)
		if ds, err = curlTimesOpts(ctx, run, auth+" --cacert /tmp/inet-ca.pem", fmt.Sprintf("https://bench.test/bytes/%d", size), 1, size); err != nil {
			return err
		}
		pDown = append(pDown, ds...)
	}
	ss, ps := sDown.stat(), pDown.stat()
	extra := map[string]any{"stasis_mb_per_s": throughput(size, ss), "passthrough_mb_per_s": throughput(size, ps)}
	if ss != nil && ps != nil && ss.Median > 0 {
		extra["throughput_vs_passthrough"] = round(ps.Median / ss.Median)
	}
	b.add(Row{Group: "secrets", Name: fmt.Sprintf("%s %s", secretRows[1], sizeLabel(size)),
		Stasis: ss, StasisOp: "curl in the sandbox, GET https://" + secretHost + "/bytes/N with the stand-in as bearer token, through the injecting proxy (curl's time_total)",
		Raw: ps, RawOp: "(not raw runsc) the same download from the same site under a name no secret names: TLS passed through",
		Note: "both columns are stasis; throughput_vs_passthrough is the injected MB/s over the pass-through MB/s (goal ≥ 0.8)", Extra: extra})
	return nil
}
