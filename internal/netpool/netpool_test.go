package netpool

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"runtime"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"

	"github.com/stasis-sandbox/stasis/internal/testenv"
)

// Tests use their own name prefixes and address range, so they never touch
// links that belong to anything else (a running stasisd, other test packages).
var testRange = netip.MustParsePrefix("169.254.200.0/22")

// TestMain takes turns with the tests of other checkouts, which use the
// same interface prefix: one's cleanup would remove the other's links.
func TestMain(m *testing.M) {
	if os.Geteuid() == 0 {
		lock, err := AwaitLinksLock(context.Background(), "sttn", "netpool tests")
		if err != nil {
			fmt.Fprintln(os.Stderr, err)
			os.Exit(1)
		}
		code := m.Run()
		lock.Release()
		os.Exit(code)
	}
	os.Exit(m.Run())
}

func testConfig(t *testing.T) Config {
	return Config{
		Prefix:   fmt.Sprintf("stnptest%d", os.Getpid()),
		IfPrefix: "sttn",
		Range:    testRange,
	}
}

func newTestPool(t *testing.T) *Pool {
	t.Helper()
	testenv.RequireRoot(t)
	p, err := New(testConfig(t))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := p.Cleanup(context.Background(), nil); err != nil {
			t.Errorf("cleanup: %v", err)
		}
	})
	return p
}

// inNetns runs fn on an OS thread inside the namespace at path. The thread is
// discarded afterwards. Sockets created by fn stay in that namespace.
func inNetns(path string, fn func() error) error {
	errc := make(chan error, 1)
	go func() {
		runtime.LockOSThread() // never unlocked: the thread dies with the goroutine
		ns, err := netns.GetFromPath(path)
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
	return <-errc
}

// serveIn starts a TCP server inside l's namespace on its sandbox address;
// it answers every connection with "hello <id>".
func serveIn(t *testing.T, l *Link) netip.AddrPort {
	t.Helper()
	var ln net.Listener
	err := inNetns(l.NetnsPath, func() (err error) {
		ln, err = net.Listen("tcp", netip.AddrPortFrom(l.SandboxAddr, 0).String())
		return err
	})
	if err != nil {
		t.Fatalf("listen in %s: %v", l.Netns, err)
	}
	t.Cleanup(func() { ln.Close() })
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			fmt.Fprintf(c, "hello %s", l.ID)
			c.Close()
		}
	}()
	return netip.MustParseAddrPort(ln.Addr().String())
}

func dialRead(addr string) (string, error) {
	c, err := net.DialTimeout("tcp", addr, 2*time.Second)
	if err != nil {
		return "", err
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(2 * time.Second))
	b, err := io.ReadAll(c)
	return string(b), err
}

// checkConnects checks that l carries TCP both ways and that its
// namespace has the default route via the host end.
func checkConnects(t *testing.T, l *Link) {
	t.Helper()
	// Host to sandbox.
	srv := serveIn(t, l)
	if got, err := dialRead(srv.String()); err != nil || got != "hello "+l.ID {
		t.Fatalf("host -> sandbox: %q, %v", got, err)
	}
	// Sandbox to host, through the default route's gateway.
	hostLn, err := net.Listen("tcp", netip.AddrPortFrom(l.HostAddr, 0).String())
	if err != nil {
		t.Fatal(err)
	}
	defer hostLn.Close()
	go func() {
		if c, err := hostLn.Accept(); err == nil {
			io.WriteString(c, "host")
			c.Close()
		}
	}()
	var got string
	err = inNetns(l.NetnsPath, func() (err error) {
		got, err = dialRead(hostLn.Addr().String())
		return err
	})
	if err != nil || got != "host" {
		t.Fatalf("sandbox -> host: %q, %v", got, err)
	}
	// The default route exists inside the namespace.
	err = inNetns(l.NetnsPath, func() error {
		routes, err := netlink.RouteList(nil, netlink.FAMILY_V4)
		if err != nil {
			return err
		}
		for _, r := range routes {
			if (r.Dst == nil || r.Dst.IP.IsUnspecified()) && r.Gw.Equal(net.IP(l.HostAddr.AsSlice())) {
				return nil
			}
		}
		return fmt.Errorf("no default route via %v in %v", l.HostAddr, routes)
	})
	if err != nil {
		t.Fatal(err)
	}
}

func TestSubnets(t *testing.T) {
	all := subnetsIn(linkLocal)
	if got, want := len(all), (256-3)*64; got != want {
		t.Fatalf("got %d subnets, want %d", got, want)
	}
	if all[0] != netip.MustParsePrefix("169.254.1.0/30") {
		t.Errorf("first subnet %v", all[0])
	}
	for _, s := range all {
		for _, x := range excluded {
			if x.Overlaps(s) {
				t.Fatalf("subnet %v overlaps excluded %v", s, x)
			}
		}
	}
	if got := len(subnetsIn(testRange)); got != 256 {
		t.Errorf("test range: %d subnets", got)
	}
}

func TestNames(t *testing.T) {
	p := &Pool{cfg: Config{Prefix: "stasis", IfPrefix: "stx"}}
	ns1, if1 := p.names("sbx-0123456789abcdef0123456789abcdef")
	ns2, if2 := p.names("sbx-0123456789abcdef0123456789abcdef")
	ns3, if3 := p.names("sbx-0123456789abcdef0123456789abcdee")
	if ns1 != ns2 || if1 != if2 {
		t.Fatal("names are not deterministic")
	}
	if if1 == if3 || ns1 == ns3 {
		t.Fatal("different IDs share names")
	}
	if len(if1) != 15 || !strings.HasPrefix(if1, "stx") {
		t.Fatalf("bad interface name %q", if1)
	}
	if ns1 != "stasis-sbx-0123456789abcdef0123456789abcdef" {
		t.Fatalf("netns name %q", ns1)
	}
	for _, bad := range []string{"", "a/b", "..", ".x", "a b", strings.Repeat("a", 200)} {
		if ValidID(bad) {
			t.Errorf("ValidID(%q) = true", bad)
		}
	}
}

func TestSetupConnectTeardown(t *testing.T) {
	p := newTestPool(t)
	ctx := context.Background()

	l, err := p.Setup(ctx, "one")
	if err != nil {
		t.Fatal(err)
	}
	if !testRange.Contains(l.SandboxAddr) || l.HostAddr.Next() != l.SandboxAddr || l.Subnet.Bits() != 30 {
		t.Fatalf("bad addresses: %+v", l)
	}
	if _, err := os.Stat(l.NetnsPath); err != nil {
		t.Fatalf("netns file: %v", err)
	}
	host, err := netlink.LinkByName(l.HostIf)
	if err != nil {
		t.Fatal(err)
	}
	if host.Attrs().Alias != "one" {
		t.Errorf("alias %q", host.Attrs().Alias)
	}
	if _, err := p.Setup(ctx, "one"); !errors.Is(err, ErrExists) {
		t.Errorf("second Setup: %v, want ErrExists", err)
	}

	checkConnects(t, l)

	if err := p.Teardown(ctx, "one"); err != nil {
		t.Fatal(err)
	}
	if err := p.Teardown(ctx, "one"); err != nil {
		t.Fatalf("second Teardown: %v", err)
	}
	if err := p.Teardown(ctx, "never-seen"); err != nil {
		t.Fatalf("Teardown of unknown ID: %v", err)
	}
	if _, err := os.Stat(l.NetnsPath); !os.IsNotExist(err) {
		t.Errorf("netns file still there: %v", err)
	}
	if _, err := netlink.LinkByName(l.HostIf); err == nil {
		t.Errorf("host veth %s still there", l.HostIf)
	}
	if _, ok := p.Lookup("one"); ok {
		t.Error("Lookup finds torn-down link")
	}
}

func TestReaddress(t *testing.T) {
	p := newTestPool(t)
	ctx := context.Background()
	l, err := p.Setup(ctx, "readdr")
	if err != nil {
		t.Fatal(err)
	}
	// Do what runsc does: strip the sandbox-side addresses (the connected
	// route and the default route go with them).
	ns, err := netns.GetFromPath(l.NetnsPath)
	if err != nil {
		t.Fatal(err)
	}
	h, err := netlink.NewHandleAt(ns)
	ns.Close()
	if err != nil {
		t.Fatal(err)
	}
	defer h.Close()
	eth, err := h.LinkByName(SandboxIf)
	if err != nil {
		t.Fatal(err)
	}
	addrs, err := h.AddrList(eth, netlink.FAMILY_V4)
	if err != nil || len(addrs) != 1 {
		t.Fatalf("addrs %v, %v", addrs, err)
	}
	if err := h.AddrDel(eth, &addrs[0]); err != nil {
		t.Fatal(err)
	}
	if routes, _ := h.RouteList(eth, netlink.FAMILY_V4); len(routes) != 0 {
		t.Fatalf("routes left after address removal: %v", routes)
	}

	if err := p.Readdress(ctx, "readdr"); err != nil {
		t.Fatal(err)
	}
	if err := p.Readdress(ctx, "readdr"); err != nil { // idempotent
		t.Fatal(err)
	}
	srv := serveIn(t, l)
	if got, err := dialRead(srv.String()); err != nil || got != "hello readdr" {
		t.Fatalf("after Readdress: %q, %v", got, err)
	}
	if err := p.Readdress(ctx, "unknown"); !errors.Is(err, ErrNotFound) {
		t.Errorf("Readdress(unknown) = %v", err)
	}
}

func TestIsolation(t *testing.T) {
	p := newTestPool(t)
	ctx := context.Background()
	a, err := p.Setup(ctx, "iso-a")
	if err != nil {
		t.Fatal(err)
	}
	b, err := p.Setup(ctx, "iso-b")
	if err != nil {
		t.Fatal(err)
	}
	if a.Subnet == b.Subnet || a.Netns == b.Netns || a.HostIf == b.HostIf {
		t.Fatalf("links share resources: %+v %+v", a, b)
	}
	srvB := serveIn(t, b)
	if got, err := dialRead(srvB.String()); err != nil || got != "hello iso-b" {
		t.Fatalf("host -> b: %q, %v", got, err)
	}
	err = inNetns(a.NetnsPath, func() error {
		c, err := net.DialTimeout("tcp", srvB.String(), 500*time.Millisecond)
		if err == nil {
			c.Close()
			return errors.New("a reached b")
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
}

func TestConcurrentSetup(t *testing.T) {
	p := newTestPool(t)
	ctx := context.Background()
	const n = 16
	links := make([]*Link, n)
	errs := make([]error, n)
	var wg sync.WaitGroup
	for i := range n {
		wg.Add(1)
		go func() {
			defer wg.Done()
			links[i], errs[i] = p.Setup(ctx, fmt.Sprintf("conc-%d", i))
		}()
	}
	wg.Wait()
	seen := make(map[netip.Prefix]string)
	for i, l := range links {
		if errs[i] != nil {
			t.Fatalf("setup %d: %v", i, errs[i])
		}
		if other, dup := seen[l.Subnet]; dup {
			t.Fatalf("%s and %s share %v", other, l.ID, l.Subnet)
		}
		seen[l.Subnet] = l.ID
	}
	if got := len(p.List()); got != n {
		t.Fatalf("List has %d links, want %d", got, n)
	}
	for i := range n {
		wg.Add(1)
		go func() {
			defer wg.Done()
			errs[i] = p.Teardown(ctx, links[i].ID)
		}()
	}
	wg.Wait()
	for i, err := range errs {
		if err != nil {
			t.Errorf("teardown %d: %v", i, err)
		}
	}
	if got := len(p.List()); got != 0 {
		t.Fatalf("List has %d links after teardown", got)
	}
}

// A new pool (say, after a crash) learns the links an earlier one left,
// does not reuse their subnets, and cleans them up.
func TestLearnAndCleanup(t *testing.T) {
	testenv.RequireRoot(t)
	ctx := context.Background()
	cfg := testConfig(t)
	p1, err := New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { p1.Cleanup(ctx, nil) })
	left, err := p1.Setup(ctx, "leftover")
	if err != nil {
		t.Fatal(err)
	}
	kept, err := p1.Setup(ctx, "kept")
	if err != nil {
		t.Fatal(err)
	}
	// A half-built leftover: only the namespace file.
	half := filepath.Join(DefaultNetnsDir, cfg.Prefix+"-half")
	if err := createNetns(half); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { deleteNetns(half) })

	p2, err := New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	ids := map[string]*Link{}
	for _, l := range p2.List() {
		ids[l.ID] = l
	}
	if l := ids["leftover"]; l == nil || l.Subnet != left.Subnet || l.SandboxAddr != left.SandboxAddr {
		t.Fatalf("p2 did not learn leftover: %+v", ids)
	}
	if l := ids["half"]; l == nil || l.Subnet.IsValid() {
		t.Fatalf("p2 did not learn half-built link: %+v", ids)
	}
	fresh, err := p2.Setup(ctx, "fresh")
	if err != nil {
		t.Fatal(err)
	}
	if fresh.Subnet == left.Subnet || fresh.Subnet == kept.Subnet {
		t.Fatalf("p2 reused subnet %v", fresh.Subnet)
	}
	if err := p2.Cleanup(ctx, func(id string) bool { return id == "kept" }); err != nil {
		t.Fatal(err)
	}
	var got []string
	for _, l := range p2.List() {
		got = append(got, l.ID)
	}
	if len(got) != 1 || got[0] != "kept" {
		t.Fatalf("after Cleanup: %v", got)
	}
	for _, path := range []string{left.NetnsPath, half, fresh.NetnsPath} {
		if _, err := os.Stat(path); !os.IsNotExist(err) {
			t.Errorf("%s still there", path)
		}
	}
	if _, err := os.Stat(kept.NetnsPath); err != nil {
		t.Errorf("kept netns gone: %v", err)
	}
	if err := p2.Cleanup(ctx, nil); err != nil {
		t.Fatal(err)
	}
	// p1's view is stale now; its Cleanup must still succeed.
	if err := p1.Cleanup(ctx, nil); err != nil {
		t.Fatal(err)
	}
	if ents, _ := os.ReadDir(DefaultNetnsDir); ents != nil {
		for _, e := range ents {
			if strings.HasPrefix(e.Name(), cfg.Prefix+"-") {
				t.Errorf("netns %s left", e.Name())
			}
		}
	}
}

// TestCheck: a host end that lost its address or was set down is repaired
// in place; one that was deleted is reported gone.
func TestCheck(t *testing.T) {
	p := newTestPool(t)
	ctx := context.Background()
	l, err := p.Setup(ctx, "checked")
	if err != nil {
		t.Fatal(err)
	}
	if repaired, err := p.Check(ctx, "checked"); err != nil || repaired {
		t.Fatalf("intact link: repaired=%v err=%v", repaired, err)
	}
	host, err := netlink.LinkByName(l.HostIf)
	if err != nil {
		t.Fatal(err)
	}
	if err := netlink.AddrDel(host, &netlink.Addr{IPNet: ipNet(l.HostAddr, 30)}); err != nil {
		t.Fatal(err)
	}
	if err := netlink.LinkSetDown(host); err != nil {
		t.Fatal(err)
	}
	if repaired, err := p.Check(ctx, "checked"); err != nil || !repaired {
		t.Fatalf("address removed, link down: repaired=%v err=%v", repaired, err)
	}
	host, _ = netlink.LinkByName(l.HostIf)
	addrs, _ := netlink.AddrList(host, netlink.FAMILY_V4)
	if len(addrs) != 1 || !addrs[0].IP.Equal(net.IP(l.HostAddr.AsSlice())) || host.Attrs().Flags&net.FlagUp == 0 {
		t.Fatalf("after repair: addrs %v flags %v", addrs, host.Attrs().Flags)
	}
	if err := netlink.LinkDel(host); err != nil {
		t.Fatal(err)
	}
	if _, err := p.Check(ctx, "checked"); !errors.Is(err, ErrGone) {
		t.Fatalf("deleted veth: %v, want ErrGone", err)
	}
}
