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
	"strconv"
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
// certificate from the server's CA. Upstream, requests go over HTTP/1.1,
// gRPC over HTTP/2.
func TestInterceptHTTP2KeepAliveLargeBody(t *testing.T) {
	ctx := context.Background()
	r := newRig(t)
	value, token, sec, ca := r.value, r.token, r.sec, r.ca
	clientSide, wg := r.connect(t)

	caPool := x509.NewCertPool()
	caPool.AppendCertsFromPEM(ca.PEM())
	cl := oneConnClient(clientSide, caPool) // a second connection fails: keep-alive is checked
	do := func(method string, body io.Reader, contentType string) string {
		req, _ := http.NewRequest(method, "https://example.com/v1/x?q=1", body)
		req.Header.Set("Authorization", "Bearer "+token)
		if contentType != "" {
			req.Header.Set("Content-Type", contentType)
		}
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
	if got := do("GET", nil, ""); got != "HTTP/1.1 Bearer "+value+" 0" {
		t.Fatalf("GET: %q", got)
	}
	const size = 32 << 20
	if got := do("POST", io.LimitReader(zeros{}, size), ""); got != fmt.Sprintf("HTTP/1.1 Bearer %s %d", value, size) {
		t.Fatalf("POST of %d bytes: %q", size, got)
	}
	if got := do("POST", strings.NewReader("msg"), "application/grpc+proto"); got != "HTTP/2.0 Bearer "+value+" 3" {
		t.Fatalf("gRPC: %q", got)
	}
	cl.CloseIdleConnections()
	clientSide.Close()
	wg.Wait()
	r.ic.Wait()
	evs, err := sec.Audit(ctx, "team", "s", 10, 0, "")
	if err != nil || len(evs) != 3 || evs[0].Method != "POST" || evs[0].Path != "/v1/x" || evs[0].Status != 200 ||
		evs[0].UpstreamStatus == nil || *evs[0].UpstreamStatus != 200 {
		t.Fatalf("audit: %v %+v", err, evs)
	}
	if strings.Contains(fmt.Sprint(evs), value) {
		t.Fatal("the audit holds the value")
	}
}

// rig is a secret bound to a sandbox, an HTTP/2 TLS upstream on loopback
// that names it, and an interceptor in front of it.
type rig struct {
	value, token string
	sec          *secrets.Service
	ca           *CA
	up           *httptest.Server
	ic           *Interceptor
}

func newRig(t testing.TB) *rig {
	ctx := context.Background()
	dir := t.TempDir()
	st, err := store.Open(ctx, filepath.Join(dir, "db"))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { st.Close() })
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
	up := httptest.NewUnstartedServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if size, ok := strings.CutPrefix(r.URL.Path, "/bytes/"); ok {
			n, _ := strconv.ParseInt(size, 10, 64)
			w.Header().Set("Content-Length", size)
			io.Copy(w, io.LimitReader(zeros{}, n))
			return
		}
		n, _ := io.Copy(io.Discard, r.Body)
		fmt.Fprintf(w, "%s %s %d", r.Proto, r.Header.Get("Authorization"), n)
	}))
	up.EnableHTTP2 = true
	up.StartTLS()
	t.Cleanup(up.Close)
	roots := x509.NewCertPool()
	roots.AddCert(up.Certificate())
	ca, err := LoadOrCreateCA(dir)
	if err != nil {
		t.Fatal(err)
	}
	return &rig{value: value, token: env["TOKEN"], sec: sec, ca: ca, up: up, ic: New(Config{Secrets: sec, CA: ca, Roots: roots})}
}

// connect hands the interceptor one connection, as the egress proxy does,
// and returns the sandbox's end of it.
func (r *rig) connect(t testing.TB) (net.Conn, *sync.WaitGroup) {
	ln, _ := net.Listen("tcp", "127.0.0.1:0")
	defer ln.Close()
	accepted := make(chan net.Conn, 1)
	go func() { c, _ := ln.Accept(); accepted <- c }()
	clientSide, err := net.Dial("tcp", ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	proxySide := <-accepted
	dst := netip.MustParseAddrPort(r.up.Listener.Addr().String())
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		r.ic.Serve(context.Background(), &egress.Conn{SandboxID: "sb", Host: "example.com", Dst: dst, Client: proxySide,
			Dial: func(ctx context.Context) (net.Conn, error) {
				return (&net.Dialer{}).DialContext(ctx, "tcp", dst.String())
			}})
		proxySide.Close()
	}()
	return clientSide, &wg
}

// client returns an HTTP client over conn (one connection, kept alive)
// trusting pool.
func oneConnClient(conn net.Conn, pool *x509.CertPool) *http.Client {
	used := false
	return &http.Client{Transport: &http.Transport{
		ForceAttemptHTTP2: true,
		DialTLSContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
			if used {
				return nil, fmt.Errorf("a second connection")
			}
			used = true
			tc := tls.Client(conn, &tls.Config{ServerName: "example.com", RootCAs: pool, NextProtos: []string{"h2", "http/1.1"}})
			return tc, tc.HandshakeContext(ctx)
		},
	}}
}

// BenchmarkRequest compares a small request through the interceptor with
// the same request straight to the upstream (both kept alive, HTTP/2);
// BenchmarkBody the same for a 100 MB upload. Compare ns/op within a run.
func BenchmarkRequest(b *testing.B) {
	for _, via := range []string{"direct", "intercepted"} {
		b.Run(via, func(b *testing.B) {
			cl, tok := benchClient(b, via)
			for b.Loop() {
				benchDo(b, cl, tok, nil)
			}
		})
	}
}

func BenchmarkBody(b *testing.B) {
	const size = 100 << 20
	for _, via := range []string{"direct", "intercepted"} {
		b.Run(via, func(b *testing.B) {
			cl, tok := benchClient(b, via)
			b.SetBytes(size)
			for b.Loop() {
				benchDo(b, cl, tok, io.LimitReader(zeros{}, size))
			}
		})
	}
}

// BenchmarkDownload is BenchmarkBody for a 100 MB response body.
func BenchmarkDownload(b *testing.B) {
	const size = 100 << 20
	for _, via := range []string{"direct", "intercepted"} {
		b.Run(via, func(b *testing.B) {
			cl, tok := benchClient(b, via)
			b.SetBytes(size)
			for b.Loop() {
				req, _ := http.NewRequest("GET", fmt.Sprintf("https://example.com/bytes/%d", size), nil)
				req.Header.Set("Authorization", "Bearer "+tok)
				resp, err := cl.Do(req)
				if err != nil {
					b.Fatal(err)
				}
				if n, _ := io.Copy(io.Discard, resp.Body); n != size {
					b.Fatalf("got %d bytes", n)
				}
				resp.Body.Close()
			}
		})
	}
}

func benchClient(b *testing.B, via string) (*http.Client, string) {
	r := newRig(b)
	if via == "direct" {
		pool := x509.NewCertPool()
		pool.AddCert(r.up.Certificate())
		conn, err := net.Dial("tcp", r.up.Listener.Addr().String())
		if err != nil {
			b.Fatal(err)
		}
		b.Cleanup(func() { conn.Close() })
		return oneConnClient(conn, pool), r.token
	}
	conn, wg := r.connect(b)
	b.Cleanup(func() { conn.Close(); wg.Wait(); r.ic.Wait() })
	pool := x509.NewCertPool()
	pool.AppendCertsFromPEM(r.ca.PEM())
	return oneConnClient(conn, pool), r.token
}

func benchDo(b *testing.B, cl *http.Client, token string, body io.Reader) {
	req, _ := http.NewRequest("POST", "https://example.com/x", body)
	req.Header.Set("Authorization", "Bearer "+token)
	resp, err := cl.Do(req)
	if err != nil {
		b.Fatal(err)
	}
	io.Copy(io.Discard, resp.Body)
	resp.Body.Close()
}

type zeros struct{}

func (zeros) Read(p []byte) (int, error) { clear(p); return len(p), nil }
