package cluster

import (
	"io"
	"net/http"
	"strings"
	"testing"
)

// BenchmarkExecHop: a small data-plane request (POST /exec, JSON answer)
// sent to the sandbox's owner ("direct") and to another node that forwards
// it ("forwarded"), over real loopback HTTP with an in-memory directory;
// the difference is what the forwarding hop adds, without the store lookup.
func BenchmarkExecHop(b *testing.B) {
	c := newTestCluster(b, "a", "b")
	c.dir.owners["sb1"] = "b"
	client := &http.Client{Transport: &http.Transport{Proxy: nil, MaxIdleConnsPerHost: 4}}
	for _, bc := range []struct{ name, via string }{{"direct", "b"}, {"forwarded", "a"}} {
		b.Run(bc.name, func(b *testing.B) {
			for b.Loop() {
				req, _ := http.NewRequest("POST", c.urls[bc.via]+"/exec", strings.NewReader(`{"command":"true"}`))
				req.Header.Set("X-Superserve-Sandbox-Id", "sb1")
				resp, err := client.Do(req)
				if err != nil {
					b.Fatal(err)
				}
				io.Copy(io.Discard, resp.Body)
				resp.Body.Close()
				if resp.StatusCode != http.StatusOK || resp.Header.Get(NodeHeader) != "b" {
					b.Fatalf("via %s: status %d, served by %q", bc.via, resp.StatusCode, resp.Header.Get(NodeHeader))
				}
			}
		})
	}
}
