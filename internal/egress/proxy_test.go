package egress

import (
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/netip"
	"strings"
	"sync"
	"testing"
	"time"
)

// proxyRig is the transparent proxy on loopback, in front of a small HTTP
// server. Every connection is taken to be headed for dst, a test-internet
// address, and dialing dst reaches the server on loopback instead: nothing
// is sent anywhere else (on a real host the firewall's redirection gives
// the destination).
type proxyRig struct {
	srv      *Server
	upstream netip.AddrPort // where the server really listens
	log      *eventLog
}

var rigDst = netip.MustParseAddrPort("198.51.100.10:80")

func newProxyRig(tb testing.TB, pol *Policy) *proxyRig {
	ln, err := net.Listen("tcp4", "127.0.0.1:0")
	if err != nil {
		tb.Fatal(err)
	}
	hs := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Length", "3")
		io.WriteString(w, "ok\n")
	})}
	go hs.Serve(ln)
	tb.Cleanup(func() { hs.Close() })
	up := netip.MustParseAddrPort(ln.Addr().String())
	r := &proxyRig{upstream: up, log: &eventLog{}}
	r.srv, err = Start(Config{
		Identify:     func(local, remote netip.Addr) (string, bool) { return "sb", true },
		Policy:       func(context.Context, string) (*Policy, error) { return pol, nil },
		DefaultAllow: true,
		Upstreams:    []string{"127.0.0.1:1"},
		Log:          r.log,
		ListenAddr:   "127.0.0.1",
		origDst:      func(*net.TCPConn) (netip.AddrPort, error) { return rigDst, nil },
		dialTCP: func(ctx context.Context, dst netip.AddrPort) (*net.TCPConn, error) {
			if dst != rigDst {
				return nil, fmt.Errorf("dial %v: not the rig's destination", dst)
			}
			c, err := (&net.Dialer{}).DialContext(ctx, "tcp4", up.String())
			if err != nil {
				return nil, err
			}
			return c.(*net.TCPConn), nil
		},
	})
	if err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(func() { r.srv.Close() })
	return r
}

func (r *proxyRig) proxyAddr() string { return fmt.Sprintf("127.0.0.1:%d", r.srv.ProxyPort()) }

const smallGET = "GET / HTTP/1.1\r\nHost: bench.test\r\nConnection: close\r\n\r\n"

// get sends a small GET on a new connection to addr, as curl does, and
// returns the whole response.
func get(addr string) (string, error) {
	c, err := net.Dial("tcp4", addr)
	if err != nil {
		return "", err
	}
	defer c.Close()
	if _, err := io.WriteString(c, smallGET); err != nil {
		return "", err
	}
	b, err := io.ReadAll(c)
	return string(b), err
}

// eventLog records what the proxy logs.
type eventLog struct {
	mu     sync.Mutex
	events []Event
	bytes  [][2]int64
}

func (l *eventLog) Begin(ev Event) func(sent, recv int64) {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.events = append(l.events, ev)
	i := len(l.events) - 1
	l.bytes = append(l.bytes, [2]int64{-1, -1})
	return func(sent, recv int64) {
		l.mu.Lock()
		defer l.mu.Unlock()
		l.bytes[i] = [2]int64{sent, recv}
	}
}

// wait returns the first event and its byte counts once the connection ended.
func (l *eventLog) wait(t *testing.T) (Event, [2]int64) {
	t.Helper()
	for deadline := time.Now().Add(10 * time.Second); time.Now().Before(deadline); time.Sleep(5 * time.Millisecond) {
		l.mu.Lock()
		if len(l.events) > 0 && l.bytes[0][0] >= 0 {
			ev, b := l.events[0], l.bytes[0]
			l.mu.Unlock()
			return ev, b
		}
		l.mu.Unlock()
	}
	t.Fatal("the proxy logged no finished connection")
	return Event{}, [2]int64{}
}

// TestProxySplicesAndLogs: an allowed connection reaches its destination
// both ways, and is logged under the Host it named with the bytes each way.
func TestProxySplicesAndLogs(t *testing.T) {
	r := newProxyRig(t, nil)
	resp, err := get(r.proxyAddr())
	if err != nil {
		t.Fatal(err)
	}
	if !strings.HasPrefix(resp, "HTTP/1.1 200 OK\r\n") || !strings.HasSuffix(resp, "\r\n\r\nok\n") {
		t.Fatalf("response through the proxy: %q", resp)
	}
	ev, b := r.log.wait(t)
	if ev.Verdict != Allowed || ev.Host != "bench.test" || ev.Dst != rigDst || ev.SandboxID != "sb" {
		t.Fatalf("logged %+v", ev)
	}
	if b != [2]int64{int64(len(smallGET)), int64(len(resp))} {
		t.Fatalf("logged bytes sent/received %v, want %d/%d", b, len(smallGET), len(resp))
	}
}

// TestProxyBlocks: a connection the rules deny is reset and logged
// blocked, with the rule.
func TestProxyBlocks(t *testing.T) {
	pol, err := Compile(nil, []string{"0.0.0.0/0"})
	if err != nil {
		t.Fatal(err)
	}
	r := newProxyRig(t, pol)
	if resp, err := get(r.proxyAddr()); err == nil && resp != "" {
		t.Fatalf("a denied connection got %q", resp)
	}
	ev, _ := r.log.wait(t)
	if ev.Verdict != Blocked || ev.Rule != "deny_out:0.0.0.0/0" {
		t.Fatalf("logged %+v", ev)
	}
}

// BenchmarkConnection is a small GET on a new connection, straight to the
// server and through the proxy: the proxy's per-connection cost (accept,
// identify, decide, dial, first bytes, splice) is the difference in ns/op.
func BenchmarkConnection(b *testing.B) {
	r := newProxyRig(b, nil)
	for _, tc := range []struct{ name, addr string }{
		{"direct", r.upstream.String()},
		{"proxied", r.proxyAddr()},
	} {
		b.Run(tc.name, func(b *testing.B) {
			for b.Loop() {
				if resp, err := get(tc.addr); err != nil || !strings.HasSuffix(resp, "ok\n") {
					b.Fatalf("%q %v", resp, err)
				}
			}
		})
	}
}
