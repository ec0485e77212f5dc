package e2e

import (
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/stasis-sandbox/stasis/internal/testenv"
)

// netProbe is run inside sandboxes (python3, stasis/base) to make one
// connection and print what happened on one line:
//
//	resolve NAME                      "ADDR" or "ERR ..."
//	http HOST PORT HOSTHEADER PATH    "OK <status> <body>" or "ERR ..."
//	tls HOST PORT SNI PATH            the same over TLS (CA /tmp/ca.pem)
//	echo HOST PORT                    "OK <echoed>" or "ERR ..."
//	upload HOST PORT N ID             POST N bytes to /sink?id=ID: "OK <status> <body>"
//	download HOST PORT N              GET /bytes/N: "OK <status> <length>"
//	udp HOST PORT                     a UDP datagram and its echo: "OK <echo>"
//
// HOST may be a name (looked up through the sandbox's resolver) or an address.
const netProbe = `
import socket, ssl, sys
def conn(host, port):
    return socket.create_connection((host, int(port)), timeout=10)
def request(s, hosthdr, path, method="GET", body=b""):
    hdr = "%s %s HTTP/1.1\r\nHost: %s\r\nConnection: close\r\nContent-Length: %d\r\n\r\n" % (method, path, hosthdr, len(body))
    s.sendall(hdr.encode() + body)
    data = b""
    while True:
        b = s.recv(65536)
        if not b: break
        data += b
    head, _, rest = data.partition(b"\r\n\r\n")
    return head.split(b" ")[1].decode(), rest
try:
    op = sys.argv[1]
    if op == "resolve":
        print(socket.gethostbyname(sys.argv[2]))
    elif op == "http":
        st, body = request(conn(sys.argv[2], sys.argv[3]), sys.argv[4], sys.argv[5])
        print("OK", st, body.decode()[:200])
    elif op == "tls":
        ctx = ssl.create_default_context(cafile="/tmp/ca.pem")
        s = ctx.wrap_socket(conn(sys.argv[2], sys.argv[3]), server_hostname=sys.argv[4])
        st, body = request(s, sys.argv[4], sys.argv[5])
        print("OK", st, body.decode()[:200])
    elif op == "echo":
        s = conn(sys.argv[2], sys.argv[3]); s.sendall(b"ping"); print("OK", s.recv(100).decode())
    elif op == "upload":
        st, body = request(conn(sys.argv[2], sys.argv[3]), sys.argv[2], "/sink?id=" + sys.argv[5], "POST", b"u" * int(sys.argv[4]))
        print("OK", st, body.decode())
    elif op == "udp":
        s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); s.settimeout(3)
        s.sendto(b"ping", (sys.argv[2], int(sys.argv[3]))); print("OK", s.recvfrom(100)[0].decode())
    elif op == "download":
        st, body = request(conn(sys.argv[2], sys.argv[3]), sys.argv[2], "/bytes/" + sys.argv[4])
        print("OK", st, len(body))
except Exception as e:
    print("ERR", type(e).__name__, e)
`

// netSandbox creates a stasis/base sandbox with the probe and the test
// internet's CA in it; extra goes into the create body.
func netSandbox(t *testing.T, srv *testenv.Server, in *testenv.Internet, extra map[string]any) (*client, sandboxInfo) {
	t.Helper()
	body := map[string]any{"name": "net", "from_template": "stasis/base"}
	for k, v := range extra {
		body[k] = v
	}
	c, sb := create(t, srv, body)
	c.writeFile("/tmp/probe.py", []byte(netProbe))
	c.writeFile("/tmp/ca.pem", in.CAPEM)
	return c, sb
}

// probe runs one netProbe operation and returns its line.
func (c *client) probe(args ...string) string {
	c.t.Helper()
	return c.sh("python3 /tmp/probe.py " + strings.Join(args, " "))
}

func mustOK(t *testing.T, what, got string) {
	t.Helper()
	if !strings.HasPrefix(got, "OK ") {
		t.Fatalf("%s: %q, want it to get through", what, got)
	}
}

func mustFail(t *testing.T, what, got string) {
	t.Helper()
	if !strings.HasPrefix(got, "ERR ") {
		t.Fatalf("%s: %q, want it blocked", what, got)
	}
}

// netServer starts stasisd with its resolver pointed at in.
func netServer(t *testing.T, in *testenv.Internet, egress string) *testenv.Server {
	return testenv.StartServer(t, testenv.WithArgs("--egress", egress, "--dns-upstream", in.DNS))
}

type netEvent struct {
	Kind      string `json:"kind"`
	ID        int64  `json:"id"`
	TS        string `json:"ts"`
	Host      string `json:"host"`
	DstIP     string `json:"dst_ip"`
	DstPort   int    `json:"dst_port"`
	Verdict   string `json:"verdict"`
	MatchRule string `json:"match_rule"`
	BytesSent int64  `json:"bytes_sent"`
	BytesRecv int64  `json:"bytes_recv"`
}

type netPage struct {
	Data       []netEvent `json:"data"`
	NextCursor *string    `json:"next_cursor"`
	HasMore    bool       `json:"has_more"`
}

func networkLog(t *testing.T, srv *testenv.Server, id, query string) netPage {
	t.Helper()
	var p netPage
	if err := srv.Do("GET", "/sandboxes/"+id+"/network"+query, nil, &p); err != nil {
		t.Fatalf("network log: %v", err)
	}
	return p
}

func dump(v any) string { b, _ := json.Marshal(v); return string(b) }

// waitLog polls the network log until ok accepts a page (rows are written
// in the background, within a fraction of a second).
func waitLog(t *testing.T, srv *testenv.Server, id, query string, ok func(netPage) bool) netPage {
	t.Helper()
	var p netPage
	for range 100 {
		p = networkLog(t, srv, id, query)
		if ok(p) {
			return p
		}
		time.Sleep(100 * time.Millisecond)
	}
	t.Fatalf("network log never matched; last page %s", dump(p))
	return p
}

// findRow returns the newest row for host:port with the given verdict.
func findRow(p netPage, host string, port int, verdict string) *netEvent {
	for i := range p.Data {
		e := &p.Data[i]
		if e.Host == host && e.DstPort == port && e.Verdict == verdict {
			return e
		}
	}
	return nil
}

// TestEgressDefault: with no rules a sandbox resolves names through
// stasisd's resolver and reaches the (test) internet over HTTP, HTTPS and
// other TCP ports; every connection is in the network log.
func TestEgressDefault(t *testing.T) {
	in := testenv.StartInternet(t)
	site := in.AddSite("allowed.test")
	srv := netServer(t, in, "allow")
	c, sb := netSandbox(t, srv, in, nil)
	if got := dump(sb.Network); got != `{"allow_out":[],"deny_out":[]}` {
		t.Fatalf("network of a sandbox without rules: %s", got)
	}

	if got := c.probe("resolve", "allowed.test"); got != site.Addr.String() {
		t.Fatalf("allowed.test resolved to %q, want %s", got, site.Addr)
	}
	if got := c.probe("http", "allowed.test", "80", "allowed.test", "/"); got != "OK 200 site allowed.test host allowed.test" {
		t.Fatalf("HTTP: %q", got)
	}
	if got := c.probe("tls", "allowed.test", "443", "allowed.test", "/"); got != "OK 200 site allowed.test host allowed.test" {
		t.Fatalf("HTTPS: %q", got)
	}
	if got := c.probe("echo", "allowed.test", "7"); got != "OK ping" {
		t.Fatalf("TCP echo: %q", got)
	}
	// UDP goes nowhere but to the resolver.
	mustFail(t, "UDP to the internet", c.probe("udp", "allowed.test", "7"))

	p := waitLog(t, srv, c.id, "", func(p netPage) bool { return len(p.Data) >= 3 })
	for _, port := range []int{80, 443, 7} {
		e := findRow(p, "allowed.test", port, "allowed")
		if e == nil || e.Kind != "connection" || e.DstIP != site.Addr.String() || e.MatchRule != "default" {
			t.Fatalf("no allowed row for allowed.test:%d in %s", port, dump(p))
		}
	}
}

// TestEgressDenyDefault: with --egress deny nothing gets out unless a
// rule allows it.
func TestEgressDenyDefault(t *testing.T) {
	in := testenv.StartInternet(t)
	in.AddSite("allowed.test")
	in.AddSite("other.test")
	srv := netServer(t, in, "deny")
	c, _ := netSandbox(t, srv, in, map[string]any{"network": map[string]any{"allow_out": []string{"allowed.test"}}})
	mustOK(t, "allowed.test with --egress deny and an allow rule", c.probe("http", "allowed.test", "80", "allowed.test", "/"))
	mustFail(t, "other.test with --egress deny", c.probe("http", "other.test", "80", "other.test", "/"))
}

// TestEgressRules: CIDR denies, a strict allowlist with exact and wildcard
// domains, attempts to get around it (forged SNI and Host, IP literals,
// other ports), live PATCHes, and the log of all of it.
func TestEgressRules(t *testing.T) {
	in := testenv.StartInternet(t)
	allowed := in.AddSite("allowed.test")
	other := in.AddSite("other.test")
	wild := in.AddSite("api.wild.test", "deep.a.wild.test")
	apex := in.AddSite("wild.test")
	srv := netServer(t, in, "allow")

	// Deny by CIDR.
	d, _ := netSandbox(t, srv, in, map[string]any{"network": map[string]any{"deny_out": []string{other.Addr.String() + "/32"}}})
	mustOK(t, "allowed.test next to a CIDR deny", d.probe("http", "allowed.test", "80", "allowed.test", "/"))
	mustFail(t, "other.test denied by CIDR", d.probe("http", "other.test", "80", "other.test", "/"))
	mustFail(t, "other.test denied by CIDR, HTTPS", d.probe("tls", "other.test", "443", "other.test", "/"))

	// A strict allowlist.
	strict := map[string]any{"allow_out": []string{"allowed.test", "*.wild.test"}, "deny_out": []string{"0.0.0.0/0"}}
	c, sb := netSandbox(t, srv, in, map[string]any{"network": strict})
	if got := dump(sb.Network); got != `{"allow_out":["allowed.test","*.wild.test"],"deny_out":["0.0.0.0/0"]}` {
		t.Fatalf("create answered network %s", got)
	}
	if got := dump(getInfo(t, srv, c.id).Network); got != dump(sb.Network) {
		t.Fatalf("GET shows network %s", got)
	}
	mustOK(t, "allowed name over HTTP", c.probe("http", "allowed.test", "80", "allowed.test", "/"))
	mustOK(t, "allowed name over HTTPS", c.probe("tls", "allowed.test", "443", "allowed.test", "/"))
	mustFail(t, "another name", c.probe("http", "other.test", "80", "other.test", "/"))
	mustFail(t, "another name over HTTPS", c.probe("tls", "other.test", "443", "other.test", "/"))
	mustFail(t, "an IP literal", c.probe("http", other.Addr.String(), "80", other.Addr.String(), "/"))
	mustFail(t, "the allowed site's IP literal", c.probe("http", allowed.Addr.String(), "80", allowed.Addr.String(), "/"))
	// Wildcards: subdomains at any depth, not the apex.
	mustOK(t, "*.wild.test: api.wild.test", c.probe("tls", "api.wild.test", "443", "api.wild.test", "/"))
	mustOK(t, "*.wild.test: deep.a.wild.test", c.probe("http", "deep.a.wild.test", "80", "deep.a.wild.test", "/"))
	mustFail(t, "*.wild.test does not allow wild.test", c.probe("http", "wild.test", "80", "wild.test", "/"))
	_ = wild
	_ = apex
	// Forged names aimed at a denied address.
	mustFail(t, "SNI allowed.test to other.test's address",
		c.probe("tls", other.Addr.String(), "443", "allowed.test", "/"))
	mustFail(t, "Host allowed.test to other.test's address",
		c.probe("http", other.Addr.String(), "80", "allowed.test", "/"))
	// Another port of an allowed name, through the sandbox's own lookup.
	if got := c.probe("echo", "allowed.test", "7"); got != "OK ping" {
		t.Fatalf("echo port of allowed.test: %q", got)
	}
	mustFail(t, "echo port of other.test", c.probe("echo", "other.test", "7"))

	// Byte counts: an upload and a download through the allowed name.
	const up, down = 200000, 300000
	if got := c.probe("upload", "allowed.test", "80", strconv.Itoa(up), "bytes1"); got != "OK 200 "+strconv.Itoa(up) {
		t.Fatalf("upload: %q", got)
	}
	if got := c.probe("download", "allowed.test", "80", strconv.Itoa(down)); got != "OK 200 "+strconv.Itoa(down) {
		t.Fatalf("download: %q", got)
	}
	within := func(got int64, want int) bool {
		return float64(got) >= float64(want) && float64(got) <= float64(want)*1.05
	}
	p := waitLog(t, srv, c.id, "?limit=200", func(p netPage) bool {
		n := 0
		for _, e := range p.Data {
			if e.Verdict == "allowed" && e.Host == "allowed.test" && e.DstPort == 80 && (within(e.BytesSent, up) || within(e.BytesRecv, down)) {
				n++
			}
		}
		return n == 2
	})
	if e := findRow(p, "other.test", 80, "blocked"); e == nil || e.MatchRule != "deny_out:0.0.0.0/0" || e.DstIP != other.Addr.String() || e.BytesSent != 0 {
		t.Fatalf("no blocked row for other.test in %s", dump(p))
	}
	if e := findRow(p, "allowed.test", 443, "allowed"); e == nil || e.MatchRule != "allow_out:allowed.test" {
		t.Fatalf("no allowed row for allowed.test:443 in %s", dump(p))
	}
	if e := findRow(p, "deep.a.wild.test", 80, "allowed"); e == nil || e.MatchRule != "allow_out:*.wild.test" {
		t.Fatalf("no wildcard row in %s", dump(p))
	}
	if e := findRow(p, "allowed.test", 443, "blocked"); e == nil || e.DstIP != other.Addr.String() {
		t.Fatalf("the forged SNI is not logged as blocked: %s", dump(p))
	}

	// The log API: verdict filter, paging with the cursor, time filters.
	blocked := networkLog(t, srv, c.id, "?verdict=blocked&limit=200")
	if len(blocked.Data) == 0 {
		t.Fatal("no blocked rows")
	}
	for _, e := range blocked.Data {
		if e.Verdict != "blocked" {
			t.Fatalf("verdict=blocked returned %s", dump(e))
		}
	}
	var paged []netEvent
	q := "?limit=3"
	for {
		pg := networkLog(t, srv, c.id, q)
		paged = append(paged, pg.Data...)
		if !pg.HasMore {
			if pg.NextCursor != nil {
				t.Fatalf("last page has a cursor: %s", dump(pg))
			}
			break
		}
		q = "?limit=3&before=" + *pg.NextCursor
	}
	if len(paged) != len(p.Data) {
		t.Fatalf("paging gave %d rows, one page of 200 gave %d", len(paged), len(p.Data))
	}
	for i := range paged {
		if paged[i].ID != p.Data[i].ID || i > 0 && paged[i].ID >= paged[i-1].ID {
			t.Fatalf("paged rows out of order at %d: %s", i, dump(paged))
		}
	}
	oldest, _ := time.Parse(time.RFC3339Nano, p.Data[len(p.Data)-1].TS)
	if got := networkLog(t, srv, c.id, "?limit=200&before="+oldest.Format(time.RFC3339Nano)); len(got.Data) != 0 {
		t.Fatalf("before the oldest row: %s", dump(got))
	}
	if got := networkLog(t, srv, c.id, "?limit=200&since="+oldest.Format(time.RFC3339Nano)); len(got.Data) != len(p.Data) {
		t.Fatalf("since the oldest row: %d rows, want %d", len(got.Data), len(p.Data))
	}
	for _, bad := range []string{"?limit=0", "?limit=201", "?verdict=maybe", "?before=yesterday", "?since=x", "?color=red"} {
		if err := srv.Do("GET", "/sandboxes/"+c.id+"/network"+bad, nil, nil); statusOf(err) != http.StatusBadRequest {
			t.Fatalf("GET network%s: %v, want 400", bad, err)
		}
	}

	// PATCH applies to the next connection, with no restart.
	if err := srv.Do("PATCH", "/sandboxes/"+c.id, map[string]any{"network": map[string]any{"allow_out": []string{"other.test"}, "deny_out": []string{"0.0.0.0/0"}}}, nil); err != nil {
		t.Fatal(err)
	}
	mustOK(t, "other.test after PATCH", c.probe("http", "other.test", "80", "other.test", "/"))
	mustFail(t, "allowed.test after PATCH replaced the list", c.probe("http", "allowed.test", "80", "allowed.test", "/"))
	if err := srv.Do("PATCH", "/sandboxes/"+d.id, map[string]any{"network": map[string]any{"deny_out": []string{}}}, nil); err != nil {
		t.Fatal(err)
	}
	mustOK(t, "other.test after its deny was removed", d.probe("http", "other.test", "80", "other.test", "/"))
	if got := dump(getInfo(t, srv, d.id).Network); got != `{"allow_out":[],"deny_out":[]}` {
		t.Fatalf("network after PATCH: %s", got)
	}
}

// TestEgressAlwaysBlocked: private, shared, loopback, link-local and
// multicast ranges, the host's own addresses and other sandboxes stay out
// of reach even with allow_out 0.0.0.0/0. Nothing answers at those
// addresses: the connections must fail at the host.
func TestEgressAlwaysBlocked(t *testing.T) {
	in := testenv.StartInternet(t)
	in.AddSite("allowed.test")
	srv := netServer(t, in, "allow")
	other, _ := createMinimal(t, srv, "neighbour")
	other.sh("mkdir -p /tmp/www && echo neighbour > /tmp/www/index.html && httpd -p 8000 -h /tmp/www")
	otherAddr := other.sh(`ip -4 addr show eth0 | awk '/inet /{print $2}' | cut -d/ -f1`)

	c, _ := netSandbox(t, srv, in, map[string]any{"network": map[string]any{"allow_out": []string{"0.0.0.0/0"}}})
	gateway := c.sh(`python3 -c "
import socket,struct
for l in open('/proc/net/route'):
    f=l.split()
    if f[1]=='00000000': print(socket.inet_ntoa(struct.pack('<L',int(f[2],16))))"`)
	mustOK(t, "the internet with allow_out 0.0.0.0/0", c.probe("http", "allowed.test", "80", "allowed.test", "/"))
	targets := []string{
		"10.0.0.1:80", "172.16.0.1:80", "192.168.0.1:80", "100.64.0.1:80", "127.0.0.1:8000",
		"169.254.169.254:80", "224.0.0.1:80", "0.0.0.1:80",
		in.HostAddr.String() + ":80",              // the host, on its test-internet address
		gateway + ":8080",                         // the host, on the sandbox's link
		otherAddr + ":8000", otherAddr + ":49983", // another sandbox, its server and its agent
	}
	for _, tg := range targets {
		host, port, _ := strings.Cut(tg, ":")
		mustFail(t, "connection to "+tg, c.probe("http", host, port, host, "/"))
	}
	// Refused at the host, they are in the network log as blocked (not
	// loopback, multicast or 0/8: gVisor refuses those inside the sandbox).
	refused := append([]string{"10.0.0.1:80", "172.16.0.1:80", "192.168.0.1:80", "100.64.0.1:80", "169.254.169.254:80"}, targets[8:]...)
	waitLog(t, srv, c.id, "?verdict=blocked&limit=200", func(p netPage) bool {
		for _, tg := range refused {
			host, port, _ := strings.Cut(tg, ":")
			n, _ := strconv.Atoi(port)
			if r := findRow(p, host, n, "blocked"); r == nil || r.DstIP != host || r.MatchRule != "internal-ip" {
				return false
			}
		}
		return true
	})
	// The host reaches the neighbour (positive control for its server).
	resp, err := (&http.Client{Timeout: 10 * time.Second}).Get("http://" + otherAddr + ":8000/")
	if err != nil {
		t.Fatalf("host to neighbour: %v", err)
	}
	resp.Body.Close()
}

// TestEgressRulesPersist: rules survive pause/resume, a stasisd restart,
// fork, and a saved snapshot a new sandbox starts from; PATCH of network
// on a paused sandbox is a conflict.
func TestEgressRulesPersist(t *testing.T) {
	in := testenv.StartInternet(t)
	in.AddSite("allowed.test")
	in.AddSite("other.test")
	srv := netServer(t, in, "allow")
	strict := map[string]any{"allow_out": []string{"allowed.test"}, "deny_out": []string{"0.0.0.0/0"}}
	c, _ := netSandbox(t, srv, in, map[string]any{"network": strict})
	check := func(c *client, what string) {
		t.Helper()
		mustOK(t, what+": allowed.test", c.probe("http", "allowed.test", "80", "allowed.test", "/"))
		mustFail(t, what+": other.test", c.probe("http", "other.test", "80", "other.test", "/"))
		if got := dump(getInfo(t, srv, c.id).Network); got != `{"allow_out":["allowed.test"],"deny_out":["0.0.0.0/0"]}` {
			t.Fatalf("%s: network %s", what, got)
		}
	}
	if err := srv.Do("POST", "/sandboxes/"+c.id+"/pause", nil, nil); err != nil {
		t.Fatal(err)
	}
	err := srv.Do("PATCH", "/sandboxes/"+c.id, map[string]any{"network": map[string]any{"allow_out": []string{"other.test"}}}, nil)
	if statusOf(err) != http.StatusConflict {
		t.Fatalf("PATCH network of a paused sandbox: %v, want 409", err)
	}
	var sb sandboxInfo
	if err := srv.Do("POST", "/sandboxes/"+c.id+"/resume", nil, &sb); err != nil {
		t.Fatal(err)
	}
	c.token = sb.AccessToken
	check(c, "after pause/resume")

	srv.Stop()
	srv.Restart()
	check(c, "after a restart")

	if err := srv.Do("POST", "/sandboxes/"+c.id+"/pause", nil, nil); err != nil {
		t.Fatal(err)
	}
	var forks struct{ Sandboxes []sandboxInfo }
	if err := srv.Do("POST", "/sandboxes/"+c.id+"/fork", map[string]any{"count": 1}, &forks); err != nil {
		t.Fatal(err)
	}
	f := &client{t: t, srv: srv, id: forks.Sandboxes[0].ID, token: forks.Sandboxes[0].AccessToken}
	check(f, "in a fork")

	var snap struct{ ID string }
	if err := srv.Do("POST", "/sandboxes/"+f.id+"/snapshots", map[string]any{"name": "strict"}, &snap); err != nil {
		t.Fatal(err)
	}
	n, _ := create(t, srv, map[string]any{"name": "from-snap", "from_snapshot": snap.ID})
	check(n, "from a saved snapshot")
}

// TestNetworkRulesValidation: bad rules are a 400 naming the entry, on
// create and on PATCH, and change nothing.
func TestNetworkRulesValidation(t *testing.T) {
	srv := testenv.StartServer(t)
	many := make([]string, 257)
	for i := range many {
		many[i] = fmt.Sprintf("203.0.113.%d/32", i%256)
	}
	cases := []struct {
		network map[string]any
		names   string
	}{
		{map[string]any{"allow_out": []string{"203.0.113.0/33"}}, `allow_out[0] "203.0.113.0/33"`},
		{map[string]any{"deny_out": []string{"0.0.0.0/0", "10.0.0.0/8/8"}}, `deny_out[1] "10.0.0.0/8/8"`},
		{map[string]any{"deny_out": []string{"example.com"}}, `deny_out[0] "example.com"`},
		{map[string]any{"allow_out": []string{"ok.test", ""}}, `allow_out[1] ""`},
		{map[string]any{"allow_out": []string{"bad domain.test"}}, `allow_out[0] "bad domain.test"`},
		{map[string]any{"allow_out": []string{"a.*.test"}}, `allow_out[0] "a.*.test"`},
		{map[string]any{"allow_out": many}, "257 entries"},
		{map[string]any{"allow_out": []string{"x.test"}, "color": "red"}, "color"},
	}
	message := func(err error) string {
		var he *testenv.HTTPError
		if !errors.As(err, &he) {
			return ""
		}
		var e struct{ Error struct{ Message string } }
		json.Unmarshal([]byte(he.Body), &e)
		return e.Error.Message
	}
	for _, tc := range cases {
		err := srv.Do("POST", "/sandboxes", map[string]any{"name": "bad", "network": tc.network}, nil)
		if statusOf(err) != http.StatusBadRequest || !strings.Contains(message(err), tc.names) {
			t.Fatalf("create with %v: %v, want 400 naming %s", tc.network, err, tc.names)
		}
	}
	var list []sandboxInfo
	if err := srv.Do("GET", "/sandboxes", nil, &list); err != nil || len(list) != 0 {
		t.Fatalf("bad creates left sandboxes: %v %v", list, err)
	}
	c, _ := create(t, srv, map[string]any{"name": "ok", "from_template": "stasis/minimal",
		"network": map[string]any{"allow_out": []string{"ok.test"}}})
	for _, tc := range cases {
		err := srv.Do("PATCH", "/sandboxes/"+c.id, map[string]any{"network": tc.network, "metadata": map[string]string{"changed": "yes"}}, nil)
		if statusOf(err) != http.StatusBadRequest || !strings.Contains(message(err), tc.names) {
			t.Fatalf("PATCH with %v: %v, want 400 naming %s", tc.network, err, tc.names)
		}
	}
	info := getInfo(t, srv, c.id)
	if dump(info.Network) != `{"allow_out":["ok.test"],"deny_out":[]}` || info.Metadata["changed"] != "" {
		t.Fatalf("bad PATCHes changed the sandbox: %+v", info)
	}
}
