package netpool

import (
	"context"
	"errors"
	"fmt"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/vishvananda/netlink"

	"github.com/stasis-sandbox/stasis/internal/testenv"
)

// awaitSpares waits until p holds n ready spares and returns copies of them.
func awaitSpares(t *testing.T, p *Pool, n int) []spare {
	t.Helper()
	for {
		p.mu.Lock()
		if len(p.spares) == n {
			out := make([]spare, n)
			for i, s := range p.spares {
				c := *s.link
				out[i] = spare{link: &c, hostIndex: s.hostIndex}
			}
			p.mu.Unlock()
			return out
		}
		p.mu.Unlock()
		time.Sleep(2 * time.Millisecond)
	}
}

// gone fails unless neither l's namespace nor its host veth exists.
func gone(t *testing.T, l *Link) {
	t.Helper()
	if _, err := os.Stat(l.NetnsPath); !os.IsNotExist(err) {
		t.Errorf("netns %s still there: %v", l.Netns, err)
	}
	if _, err := netlink.LinkByName(l.HostIf); err == nil {
		t.Errorf("veth %s (%s) still there", l.HostIf, l.ID)
	}
}

// TestSpareTaken: Setup hands out a spare renamed after the sandbox (its
// namespace and veth, not new ones), which works and which a later pool
// learns under the sandbox's ID; the pool builds a new spare; spares are
// not in List, and Close removes them.
func TestSpareTaken(t *testing.T) {
	p := newTestPool(t)
	ctx := context.Background()
	p.KeepSpares(2, nil)
	spares := awaitSpares(t, p, 2)
	if len(p.List()) != 0 {
		t.Fatalf("List shows spares: %v", p.List())
	}
	inos := map[uint64]*Link{}
	for _, s := range spares {
		inos[testenv.NetnsIno(t, s.link.NetnsPath)] = s.link
	}

	l, err := p.Setup(ctx, "taker")
	if err != nil {
		t.Fatal(err)
	}
	from := inos[testenv.NetnsIno(t, l.NetnsPath)]
	if from == nil {
		t.Fatal("Setup built a new namespace with spares ready")
	}
	if l.Subnet != from.Subnet || l.Netns != testConfig(t).Prefix+"-taker" {
		t.Fatalf("link %+v from spare %+v", l, from)
	}
	host, err := netlink.LinkByName(l.HostIf)
	if err != nil {
		t.Fatal(err)
	}
	if host.Attrs().Alias != "taker" {
		t.Errorf("alias %q", host.Attrs().Alias)
	}
	if _, err := os.Stat(from.NetnsPath); !os.IsNotExist(err) {
		t.Errorf("spare's netns name still there: %v", err)
	}
	checkConnects(t, l)
	if _, err := p.Setup(ctx, "taker"); !errors.Is(err, ErrExists) {
		t.Errorf("second Setup: %v, want ErrExists", err)
	}

	refilled := awaitSpares(t, p, 2)
	if got := p.List(); len(got) != 1 || got[0].ID != "taker" {
		t.Fatalf("List: %v", got)
	}
	p2, err := New(testConfig(t))
	if err != nil {
		t.Fatal(err)
	}
	if got, ok := p2.Lookup("taker"); !ok || got.Subnet != l.Subnet || got.HostIf != l.HostIf {
		t.Fatalf("a new pool learned %+v, want %+v", got, l)
	}

	if err := p.Close(); err != nil {
		t.Fatal(err)
	}
	for _, s := range refilled {
		gone(t, s.link)
	}
	if _, err := os.Stat(l.NetnsPath); err != nil {
		t.Errorf("Close removed a taken link: %v", err)
	}
	if _, err := p.Setup(ctx, "after-close"); err != nil {
		t.Errorf("Setup after Close: %v", err)
	}
}

// TestSparesConcurrentSetup: spares taken by concurrent Setups go to one
// sandbox each; no subnet, namespace or veth is handed out twice.
func TestSparesConcurrentSetup(t *testing.T) {
	p := newTestPool(t)
	t.Cleanup(func() { p.Close() })
	ctx := context.Background()
	p.KeepSpares(3, nil)
	awaitSpares(t, p, 3)
	const n = 10
	links := make([]*Link, n)
	var wg sync.WaitGroup
	errs := make(chan error, n)
	for i := range n {
		wg.Add(1)
		go func() {
			defer wg.Done()
			l, err := p.Setup(ctx, fmt.Sprintf("c%d", i))
			links[i] = l
			errs <- err
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		if err != nil {
			t.Fatal(err)
		}
	}
	subnets := map[netip.Prefix]string{}
	inos := map[uint64]string{}
	for _, l := range links {
		if other, dup := subnets[l.Subnet]; dup {
			t.Errorf("%s and %s share %v", l.ID, other, l.Subnet)
		}
		subnets[l.Subnet] = l.ID
		ino := testenv.NetnsIno(t, l.NetnsPath)
		if other, dup := inos[ino]; dup {
			t.Errorf("%s and %s share a namespace", l.ID, other)
		}
		inos[ino] = l.ID
		host, err := netlink.LinkByName(l.HostIf)
		if err != nil || host.Attrs().Alias != l.ID {
			t.Errorf("%s: veth %s: %v %+v", l.ID, l.HostIf, err, host)
		}
	}
	for _, s := range awaitSpares(t, p, 3) {
		if id, dup := subnets[s.link.Subnet]; dup {
			t.Errorf("spare %s holds %s's subnet %v", s.link.ID, id, s.link.Subnet)
		}
	}
}

// TestSparesAfterCrash: spares, and a spare a crash caught half renamed,
// are learned by the next pool and removed by its Cleanup.
func TestSparesAfterCrash(t *testing.T) {
	testenv.RequireRoot(t)
	ctx := context.Background()
	cfg := testConfig(t)
	p1, err := New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { p1.Cleanup(ctx, nil) })
	p1.KeepSpares(2, nil)
	spares := awaitSpares(t, p1, 2)
	// "Crash": the refiller stops, nothing is removed.
	close(p1.stop)
	p1.refiller.Wait()
	half := p1.newLink("half-taken", spares[0].link.Subnet)
	if err := moveNetns(spares[0].link.NetnsPath, half.NetnsPath); err != nil {
		t.Fatal(err)
	}

	p2, err := New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	var ids []string
	for _, l := range p2.List() {
		ids = append(ids, l.ID)
	}
	if len(ids) != 3 || !strings.HasPrefix(ids[2], spareIDPrefix) {
		t.Fatalf("p2 learned %v, want half-taken and two spares", ids)
	}
	if err := p2.Cleanup(ctx, nil); err != nil {
		t.Fatal(err)
	}
	gone(t, half)
	for _, s := range spares {
		gone(t, s.link)
	}
	if ents, _ := os.ReadDir(DefaultNetnsDir); ents != nil {
		for _, e := range ents {
			if strings.HasPrefix(e.Name(), cfg.Prefix+"-") {
				t.Errorf("netns %s left", e.Name())
			}
		}
	}
}

// TestSpareNeverLastSubnet: no spare is built on the range's last free
// subnet, so a Setup racing the refill never finds the range exhausted by
// a spare still being built.
func TestSpareNeverLastSubnet(t *testing.T) {
	testenv.RequireRoot(t)
	cfg := testConfig(t)
	cfg.Range = netip.MustParsePrefix("169.254.203.248/29") // two /30s
	p, err := New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	p.want = 2
	if _, ok := p.startSpare(); !ok {
		t.Fatal("no spare with both subnets free")
	}
	if _, err := p.allocate("spare-one"); err != nil {
		t.Fatal(err)
	}
	if id, ok := p.startSpare(); ok {
		t.Fatalf("spare %s would take the last subnet", id)
	}
}

// TestSpareBuildFailure: a spare that cannot be built is reported, not
// dropped silently.
func TestSpareBuildFailure(t *testing.T) {
	testenv.RequireRoot(t)
	cfg := testConfig(t)
	cfg.NetnsDir = filepath.Join(t.TempDir(), "not-a-dir")
	p, err := New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(cfg.NetnsDir, nil, 0o644); err != nil {
		t.Fatal(err)
	}
	failed := make(chan error, 1)
	p.KeepSpares(1, func(err error) {
		select {
		case failed <- err:
		default:
		}
	})
	if err := <-failed; err == nil || !strings.Contains(err.Error(), "spare-") {
		t.Errorf("reported %v, want the spare's failed set-up", err)
	}
	if err := p.Close(); err != nil {
		t.Fatal(err)
	}
}

// TestSpareTakeFailureBuilds: a spare that cannot be taken (its namespace
// went away under the pool) is reported, and Setup builds the sandbox's
// link instead of failing the sandbox.
func TestSpareTakeFailureBuilds(t *testing.T) {
	p := newTestPool(t)
	failed := make(chan error, 4)
	p.KeepSpares(1, func(err error) { failed <- err })
	defer p.Close()
	s := awaitSpares(t, p, 1)[0]
	if err := deleteNetns(s.link.NetnsPath); err != nil {
		t.Fatal(err)
	}
	l, err := p.Setup(context.Background(), "builder")
	if err != nil {
		t.Fatalf("Setup with a broken spare: %v", err)
	}
	checkConnects(t, l)
	select {
	case err := <-failed:
		if !strings.Contains(err.Error(), s.link.ID) {
			t.Errorf("reported %v, want the spare %s", err, s.link.ID)
		}
	default:
		t.Error("the broken spare was not reported")
	}
	gone(t, s.link)
}
