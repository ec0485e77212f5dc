package inject

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"net/netip"
	"path/filepath"
	"strings"
	"sync"
	"testing"

	"github.com/stasis-sandbox/stasis/internal/egress"
	"github.com/stasis-sandbox/stasis/internal/secrets"
	"github.com/stasis-sandbox/stasis/internal/store"
)

// TestInterceptHTTP2KeepAliveLargeBody runs the interceptor between a
// client speaking HTTP/2 over one kept-alive connection and a real TLS
// upstream (loopback): the credential is injected into every request, a
// 32 MiB body passes whole, and the sandbox's TLS is terminated with a
// certificate from the server's CA.
func TestInterceptHTTP2KeepAliveLargeBody(t *testing.T) {
	ctx := context.Background()
	dir := t.TempDir()
	st, err := store.Open(ctx, filepath.Join(dir, "db"))
	if err != nil {
		t.Fatal(err)
	}
	defer st.Close()
	st.EnsureTeam(ctx, "team", "team")
	st.InsertSandbox(ctx, &store.Sandbox{ID: "sb", TeamID: "team", Name: "sb", Status: "active"})
	key, _ := secrets.LoadOrCreateKey(filepath.Join(dir, "secrets.key"))
	sec, _ := secrets.New(st, key)
	value := "REAL-upstream-value"
	if _, err := sec.Create(ctx, "team", secrets.CreateParams{Name: "s", Value: &value,
		Auth: []byte(`{"type":"bearer"}`), Hosts: []string{"example.com"}}); err != nil {
		t.Fatal(err)
	}
	if err := sec.Bind(ctx, "team", "sb", map[string]string{"TOKEN": "s"}); err != nil {
		t.Fatal(err)
	}
	env, _ := sec.Env(ctx, "sb")
	token := env["TOKEN"]

	up := httptest.NewUnstartedServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		n, _ := io.Copy(io.Discard, r.Body)
		fmt.Fprintf(w, "%s %s %d", r.Proto, r.Header.Get("Authorization"), n)
	}))
	up.EnableHTTP2 = true
	up.StartTLS()
	defer up.Close()
	roots := x509.NewCertPool()
	roots.AddCert(up.Certificate())
	ca, err := LoadOrCreateCA(dir)
	if err != nil {
		t.Fatal(err)
	}
	ic := New(Config{Secrets: sec, CA: ca, Roots: roots})

	// The sandbox's connection: a loopback TCP pair.
	ln, _ := net.Listen("tcp", "127.0.0.1:0")
	defer ln.Close()
	accepted := make(chan net.Conn, 1)
	go func() { c, _ := ln.Accept(); accepted <- c }()
	clientSide, err := net.Dial("tcp", ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	proxySide := <-accepted
	dst := netip.MustParseAddrPort(up.Listener.Addr().String())
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		ic.Serve(ctx, &egress.Conn{SandboxID: "sb", Host: "example.com", Dst: dst, Client: proxySide,
			Dial: func(ctx context.Context) (net.Conn, error) { return (&net.Dialer{}).DialContext(ctx, "tcp", dst.String()) }})
		proxySide.Close()
	}()

	caPool := x509.NewCertPool()
	caPool.AppendCertsFromPEM(ca.PEM())
	dials := 0
	cl := &http.Client{Transport: &http.Transport{
		ForceAttemptHTTP2: true,
		DialTLSContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
			dials++
			if dials > 1 {
				return nil, fmt.Errorf("a second connection: keep-alive failed")
			}
			tc := tls.Client(clientSide, &tls.Config{ServerName: "example.com", RootCAs: caPool, NextProtos: []string{"h2", "http/1.1"}})
			return tc, tc.HandshakeContext(ctx)
		},
	}}
	do := func(method string, body io.Reader) string {
		req, _ := http.NewRequest(method, "https://example.com/v1/x?q=1", body)
		req.Header.Set("Authorization", "Bearer "+token)
		resp, err := cl.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		if resp.ProtoMajor != 2 {
			t.Fatalf("sandbox side spoke %s, want HTTP/2", resp.Proto)
		}
		return string(b)
	}
	if got := do("GET", nil); got != "HTTP/2.0 Bearer "+value+" 0" {
		t.Fatalf("GET: %q", got)
	}
	const size = 32 << 20
	if got := do("POST", io.LimitReader(zeros{}, size)); got != fmt.Sprintf("HTTP/2.0 Bearer %s %d", value, size) {
		t.Fatalf("POST of %d bytes: %q", size, got)
	}
	cl.CloseIdleConnections()
	clientSide.Close()
	wg.Wait()
	ic.Wait()
	evs, err := sec.Audit(ctx, "team", "s", 10, 0, "")
	if err != nil || len(evs) != 2 || evs[0].Method != "POST" || evs[0].Path != "/v1/x" || evs[0].Status != 200 ||
		evs[0].UpstreamStatus == nil || *evs[0].UpstreamStatus != 200 {
		t.Fatalf("audit: %v %+v", err, evs)
	}
	if strings.Contains(fmt.Sprint(evs), value) {
		t.Fatal("the audit holds the value")
	}
}

type zeros struct{}

func (zeros) Read(p []byte) (int, error) { clear(p); return len(p), nil }
