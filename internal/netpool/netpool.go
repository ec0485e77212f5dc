// Package netpool gives every sandbox its own network link: a named network
// namespace holding one end of a veth pair, the other end in the host's root
// namespace, and a small link-local subnet between them.
//
// For a sandbox with ID id, the pool creates
//
//	netns  <Prefix>-<id>            (a file under NetnsDir, /run/netns by default)
//	veth   <IfPrefix><hash>         host end, root netns, address .1 of a /30,
//	                                interface alias = id
//	veth   eth0                     sandbox end, inside the netns, address .2,
//	                                default route via .1
//
// Names are derived from the ID only, so a pool that starts after a crash
// finds the links its predecessor left (New learns them; Cleanup removes the
// ones nobody claims). A pool may keep a few spare links built ahead under
// IDs of their own, "spare-<random>", and rename one after the sandbox that
// needs a link (KeepSpares). Subnets are /30s taken from 169.254.0.0/16
// (never from 169.254.0.0/24, 169.254.169.0/24 or 169.254.255.0/24), tracked
// in memory, and never handed out while any interface in the root namespace
// still holds an address inside them.
//
// The host end has IPv4 forwarding off (packets from a sandbox are never
// routed on to another sandbox, whatever the host's global setting) and
// IPv6 disabled. Nothing here stops a sandbox from reaching services that
// listen on the host's addresses (e.g. 0.0.0.0): that needs a firewall rule
// on input from IfPrefix* interfaces.
//
// One Pool per host and prefix: two pools sharing a range in different
// processes can race for a subnet. Call Cleanup when no Setup is in flight
// (at startup, after re-adopting the running sandboxes).
package netpool

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"regexp"
	"runtime"
	"slices"
	"sort"
	"strings"
	"sync"

	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"
	"golang.org/x/sys/unix"
)

// SandboxIf is the name of the sandbox-side interface inside every netns.
const SandboxIf = "eth0"

// Defaults for Config.
const (
	DefaultPrefix   = "stasis"
	DefaultIfPrefix = "stx"
	DefaultNetnsDir = "/run/netns"
)

var (
	// ErrExists is returned by Setup when the pool already holds a link for the ID.
	ErrExists = errors.New("netpool: link already exists")
	// ErrExhausted is returned by Setup when no subnet is free.
	ErrExhausted = errors.New("netpool: no free subnet")
	// ErrNotFound is returned when the pool has no link for an ID.
	ErrNotFound = errors.New("netpool: link not found")
)

// linkLocal is the only range the pool ever allocates from.
var linkLocal = netip.MustParsePrefix("169.254.0.0/16")

// excluded ranges are never allocated: the first and last /24 of the
// link-local range (reserved by RFC 3927) and the cloud metadata /24.
var excluded = []netip.Prefix{
	netip.MustParsePrefix("169.254.0.0/24"),
	netip.MustParsePrefix("169.254.169.0/24"),
	netip.MustParsePrefix("169.254.255.0/24"),
}

// idRE is what a sandbox ID may look like: safe as a file name and as a
// runsc container ID (runsc's state file names use "_" as a separator).
var idRE = regexp.MustCompile(`^[A-Za-z0-9][A-Za-z0-9.-]{0,127}$`)

// LinkMTU is the MTU stasisd gives sandbox links by default. Nothing on a
// link is routed (the sandbox talks only to stasisd on this host), so it need
// not match any wire, and gVisor's network stack moves a big file or output
// in far fewer packets than at 1500.
const LinkMTU = 65520

// Config configures a Pool. The zero value is usable.
type Config struct {
	// Prefix names the network namespaces: "<Prefix>-<id>". Default "stasis".
	Prefix string
	// IfPrefix starts the host-side veth names; at most 6 characters.
	// Default "stx".
	IfPrefix string
	// NetnsDir is where named namespaces are bind-mounted. Default /run/netns
	// (where `ip netns` looks).
	NetnsDir string
	// Range is the address range subnets are taken from; it must lie inside
	// 169.254.0.0/16. Default 169.254.0.0/16.
	Range netip.Prefix
	// MTU of both veth ends (0: kernel default).
	MTU int
}

// Link is one sandbox's network link.
type Link struct {
	ID          string
	Netns       string       // namespace name
	NetnsPath   string       // bind-mount path of the namespace
	HostIf      string       // host-side veth, in the root namespace
	SandboxIf   string       // sandbox-side veth, inside the namespace
	Subnet      netip.Prefix // the /30; invalid for a half-built leftover
	HostAddr    netip.Addr   // .1, on HostIf
	SandboxAddr netip.Addr   // .2, on SandboxIf
}

// Pool allocates subnets and builds links. It is safe for concurrent use.
type Pool struct {
	cfg     Config
	subnets []netip.Prefix // every allocatable /30, in order

	mu    sync.Mutex
	links map[string]*Link          // by ID
	used  map[netip.Prefix]struct{} // subnets held by links or seen on the host
	next  int                       // round-robin cursor into subnets
	spareState
}

// New returns a pool and learns the links left by earlier pools with the
// same prefixes (see List and Cleanup).
func New(cfg Config) (*Pool, error) {
	if cfg.Prefix == "" {
		cfg.Prefix = DefaultPrefix
	}
	if cfg.IfPrefix == "" {
		cfg.IfPrefix = DefaultIfPrefix
	}
	if cfg.NetnsDir == "" {
		cfg.NetnsDir = DefaultNetnsDir
	}
	if !cfg.Range.IsValid() {
		cfg.Range = linkLocal
	}
	if len(cfg.IfPrefix) > 6 || strings.ContainsAny(cfg.IfPrefix, "/ :") {
		return nil, fmt.Errorf("netpool: bad IfPrefix %q: at most 6 characters, no '/', ' ' or ':'", cfg.IfPrefix)
	}
	if strings.ContainsAny(cfg.Prefix, "/") {
		return nil, fmt.Errorf("netpool: bad Prefix %q", cfg.Prefix)
	}
	cfg.Range = cfg.Range.Masked()
	if !cfg.Range.Addr().Is4() || cfg.Range.Bits() > 30 || cfg.Range.Bits() < linkLocal.Bits() || !linkLocal.Contains(cfg.Range.Addr()) {
		return nil, fmt.Errorf("netpool: range %v must be a /16../30 inside %v", cfg.Range, linkLocal)
	}
	if !filepath.IsAbs(cfg.NetnsDir) {
		return nil, fmt.Errorf("netpool: NetnsDir %q is not absolute", cfg.NetnsDir)
	}
	p := &Pool{
		cfg:     cfg,
		subnets: subnetsIn(cfg.Range),
		links:   make(map[string]*Link),
		used:    make(map[netip.Prefix]struct{}),
	}
	p.spareIDs = make(map[string]bool)
	if len(p.subnets) == 0 {
		return nil, fmt.Errorf("netpool: range %v has no usable subnet", cfg.Range)
	}
	if err := p.learn(); err != nil {
		return nil, err
	}
	return p, nil
}

// subnetsIn lists the /30s of r, skipping the excluded ranges.
func subnetsIn(r netip.Prefix) []netip.Prefix {
	var out []netip.Prefix
	n := 1 << (30 - r.Bits())
	a := r.Addr().As4()
	base := uint32(a[0])<<24 | uint32(a[1])<<16 | uint32(a[2])<<8 | uint32(a[3])
outer:
	for i := 0; i < n; i++ {
		v := base + uint32(i)*4
		s := netip.PrefixFrom(netip.AddrFrom4([4]byte{byte(v >> 24), byte(v >> 16), byte(v >> 8), byte(v)}), 30)
		for _, x := range excluded {
			if x.Contains(s.Addr()) {
				continue outer
			}
		}
		out = append(out, s)
	}
	return out
}

// names derives the deterministic names for id.
func (p *Pool) names(id string) (nsName, hostIf string) {
	sum := sha256.Sum256([]byte(id))
	h := hex.EncodeToString(sum[:])
	return p.cfg.Prefix + "-" + id, p.cfg.IfPrefix + h[:15-len(p.cfg.IfPrefix)]
}

func (p *Pool) newLink(id string, subnet netip.Prefix) *Link {
	nsName, hostIf := p.names(id)
	l := &Link{
		ID:        id,
		Netns:     nsName,
		NetnsPath: filepath.Join(p.cfg.NetnsDir, nsName),
		HostIf:    hostIf,
		SandboxIf: SandboxIf,
	}
	if subnet.IsValid() {
		l.Subnet = subnet
		l.HostAddr = subnet.Addr().Next()
		l.SandboxAddr = l.HostAddr.Next()
	}
	return l
}

// ValidID reports whether id can name a link.
func ValidID(id string) bool { return idRE.MatchString(id) }

// learn rebuilds the in-memory state from the kernel: every namespace named
// <Prefix>-* and every veth named <IfPrefix>* whose alias names its sandbox.
func (p *Pool) learn() error {
	links, err := linkList(nil)
	if err != nil {
		return fmt.Errorf("netpool: listing links: %w", err)
	}
	found := make(map[string]netip.Prefix)
	for _, l := range links {
		a := l.Attrs()
		if !strings.HasPrefix(a.Name, p.cfg.IfPrefix) || l.Type() != "veth" || !ValidID(a.Alias) {
			continue
		}
		if _, hostIf := p.names(a.Alias); hostIf != a.Name {
			continue
		}
		var subnet netip.Prefix
		if addrs, err := netlink.AddrList(l, netlink.FAMILY_V4); err == nil {
			for _, ad := range addrs {
				if pr, ok := toPrefix(ad.IPNet); ok && pr.Bits() == 30 {
					subnet = pr.Masked()
					break
				}
			}
		}
		found[a.Alias] = subnet
	}
	ents, err := os.ReadDir(p.cfg.NetnsDir)
	if err != nil && !errors.Is(err, os.ErrNotExist) {
		return fmt.Errorf("netpool: %w", err)
	}
	for _, e := range ents {
		id, ok := strings.CutPrefix(e.Name(), p.cfg.Prefix+"-")
		if !ok || !ValidID(id) {
			continue
		}
		if _, ok := found[id]; !ok {
			found[id] = netip.Prefix{}
		}
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	for id, subnet := range found {
		if _, ok := p.links[id]; ok {
			continue // ours, maybe being built right now
		}
		p.links[id] = p.newLink(id, subnet)
		if subnet.IsValid() {
			p.used[subnet] = struct{}{}
		}
	}
	return nil
}

// hostSubnets returns every allocatable subnet that overlaps an IPv4
// address configured on any interface of the root namespace.
func (p *Pool) hostSubnets() (map[netip.Prefix]struct{}, error) {
	addrs, err := netlink.AddrList(nil, netlink.FAMILY_V4)
	if errors.Is(err, netlink.ErrDumpInterrupted) {
		addrs, err = netlink.AddrList(nil, netlink.FAMILY_V4)
	}
	if err != nil {
		return nil, fmt.Errorf("netpool: listing addresses: %w", err)
	}
	used := make(map[netip.Prefix]struct{})
	for _, a := range addrs {
		pr, ok := toPrefix(a.IPNet)
		if !ok || !pr.Overlaps(p.cfg.Range) {
			continue
		}
		if pr.Bits() >= 30 {
			used[netip.PrefixFrom(pr.Addr(), 30).Masked()] = struct{}{}
			continue
		}
		for _, s := range p.subnets {
			if pr.Overlaps(s) {
				used[s] = struct{}{}
			}
		}
	}
	return used, nil
}

func toPrefix(n *net.IPNet) (netip.Prefix, bool) {
	if n == nil {
		return netip.Prefix{}, false
	}
	a, ok := netip.AddrFromSlice(n.IP)
	if !ok {
		return netip.Prefix{}, false
	}
	ones, _ := n.Mask.Size()
	return netip.PrefixFrom(a.Unmap(), ones), true
}

// allocate reserves a free subnet for id and records the (not yet built) link.
func (p *Pool) allocate(id string) (*Link, error) {
	// Addresses others put on the host since we last looked are off limits
	// too, as are subnets still held by an interface after a Teardown.
	hostUsed, err := p.hostSubnets()
	if err != nil {
		return nil, err
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	if _, ok := p.links[id]; ok {
		return nil, fmt.Errorf("%w: %s", ErrExists, id)
	}
	for i := range p.subnets {
		s := p.subnets[(p.next+i)%len(p.subnets)]
		if _, busy := p.used[s]; busy {
			continue
		}
		if _, busy := hostUsed[s]; busy {
			continue
		}
		p.next = (p.next + i + 1) % len(p.subnets)
		p.used[s] = struct{}{}
		l := p.newLink(id, s)
		p.links[id] = l
		return l, nil
	}
	return nil, ErrExhausted
}

// release forgets id's link and frees its subnet.
func (p *Pool) release(id string) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if l, ok := p.links[id]; ok {
		if l.Subnet.IsValid() {
			delete(p.used, l.Subnet)
		}
		delete(p.links, id)
	}
}

// Setup gives id a link: namespace, veth pair, addresses and routes. It
// hands out a spare (see KeepSpares) renamed after id when there is one,
// else (or if renaming it fails) builds the link. Leftover kernel objects carrying id's names (from a
// crash) are removed first. It fails with ErrExists if the pool already
// holds a link for id.
func (p *Pool) Setup(ctx context.Context, id string) (*Link, error) {
	if !ValidID(id) {
		return nil, fmt.Errorf("netpool: invalid sandbox ID %q", id)
	}
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	l, err := p.take(id)
	if l != nil || errors.Is(err, ErrExists) {
		return l, err
	}
	if err != nil {
		// The spare is gone; a sandbox does not fail for it: build.
		p.reportSpareFailure(err)
	}
	l, _, err = p.build(id)
	return l, err
}

// build allocates a subnet for id and builds its link; it returns the
// link and the index of its host end.
func (p *Pool) build(id string) (_ *Link, hostIndex int, err error) {
	l, err := p.allocate(id)
	if err != nil {
		return nil, 0, err
	}
	defer func() {
		if err != nil {
			_ = p.destroy(l)
			p.release(id)
			err = fmt.Errorf("netpool: setting up link for %s: %w", id, err)
		}
	}()
	if err := p.destroy(l); err != nil { // leftovers with our names
		return nil, 0, fmt.Errorf("removing leftovers: %w", err)
	}
	if err := p.ensureNetnsDir(); err != nil {
		return nil, 0, err
	}
	if err := createNetns(l.NetnsPath); err != nil {
		return nil, 0, fmt.Errorf("creating netns %s: %w", l.Netns, err)
	}
	ns, err := netns.GetFromPath(l.NetnsPath)
	if err != nil {
		return nil, 0, fmt.Errorf("opening netns: %w", err)
	}
	defer ns.Close()

	veth := &netlink.Veth{
		LinkAttrs: netlink.LinkAttrs{
			Name:  l.HostIf,
			Alias: id,
			MTU:   p.cfg.MTU,
		},
		PeerName:      l.SandboxIf,
		PeerNamespace: netlink.NsFd(int(ns)),
	}
	if err := netlink.LinkAdd(veth); err != nil {
		return nil, 0, fmt.Errorf("adding veth %s: %w", l.HostIf, err)
	}
	host, err := netlink.LinkByName(l.HostIf)
	if err != nil {
		return nil, 0, fmt.Errorf("finding %s: %w", l.HostIf, err)
	}
	if host.Attrs().Alias != id { // kernels that ignore IFLA_IFALIAS on create
		if err := netlink.LinkSetAlias(host, id); err != nil {
			return nil, 0, fmt.Errorf("setting alias on %s: %w", l.HostIf, err)
		}
	}
	// Packets from the sandbox are never routed on to other links (other
	// sandboxes) even if the host forwards in general, and the host end has no
	// IPv6 link-local address the sandbox could reach the host through.
	if err := sysctl("net/ipv4/conf/"+l.HostIf+"/forwarding", "0"); err != nil {
		return nil, 0, err
	}
	if err := sysctl("net/ipv6/conf/"+l.HostIf+"/disable_ipv6", "1"); err != nil && !errors.Is(err, os.ErrNotExist) {
		return nil, 0, err
	}
	if err := netlink.AddrAdd(host, &netlink.Addr{IPNet: ipNet(l.HostAddr, l.Subnet.Bits())}); err != nil {
		return nil, 0, fmt.Errorf("adding %v to %s: %w", l.HostAddr, l.HostIf, err)
	}
	if err := netlink.LinkSetUp(host); err != nil {
		return nil, 0, fmt.Errorf("bringing up %s: %w", l.HostIf, err)
	}
	if err := p.configureSandboxSide(l, ns); err != nil {
		return nil, 0, err
	}
	out := *l
	return &out, host.Attrs().Index, nil
}

// Readdress (re)configures the sandbox side of id's link: interface up,
// its address, the default route, loopback up. runsc removes the addresses
// from the interface it takes over, so this must run before every restore.
func (p *Pool) Readdress(ctx context.Context, id string) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	l, ok := p.Lookup(id)
	if !ok || !l.Subnet.IsValid() {
		return fmt.Errorf("netpool: readdress %s: %w", id, ErrNotFound)
	}
	ns, err := netns.GetFromPath(l.NetnsPath)
	if err != nil {
		return fmt.Errorf("netpool: readdress %s: opening netns: %w", id, err)
	}
	defer ns.Close()
	if err := p.configureSandboxSide(l, ns); err != nil {
		return fmt.Errorf("netpool: readdress %s: %w", id, err)
	}
	return nil
}

func (p *Pool) configureSandboxSide(l *Link, ns netns.NsHandle) error {
	h, err := netlink.NewHandleAt(ns)
	if err != nil {
		return fmt.Errorf("netlink handle in %s: %w", l.Netns, err)
	}
	defer h.Close()
	lo, err := h.LinkByName("lo")
	if err != nil {
		return fmt.Errorf("finding lo in %s: %w", l.Netns, err)
	}
	if err := h.LinkSetUp(lo); err != nil {
		return fmt.Errorf("bringing up lo in %s: %w", l.Netns, err)
	}
	sb, err := h.LinkByName(l.SandboxIf)
	if err != nil {
		return fmt.Errorf("finding %s in %s: %w", l.SandboxIf, l.Netns, err)
	}
	if err := h.AddrReplace(sb, &netlink.Addr{IPNet: ipNet(l.SandboxAddr, l.Subnet.Bits())}); err != nil {
		return fmt.Errorf("adding %v to %s in %s: %w", l.SandboxAddr, l.SandboxIf, l.Netns, err)
	}
	if err := h.LinkSetUp(sb); err != nil {
		return fmt.Errorf("bringing up %s in %s: %w", l.SandboxIf, l.Netns, err)
	}
	route := &netlink.Route{
		LinkIndex: sb.Attrs().Index,
		Gw:        net.IP(l.HostAddr.AsSlice()),
		Dst:       nil, // default
	}
	if err := h.RouteReplace(route); err != nil {
		return fmt.Errorf("adding default route in %s: %w", l.Netns, err)
	}
	return nil
}

func sysctl(name, value string) error {
	if err := os.WriteFile("/proc/sys/"+name, []byte(value), 0o644); err != nil {
		return fmt.Errorf("sysctl %s=%s: %w", strings.ReplaceAll(name, "/", "."), value, err)
	}
	return nil
}

func ipNet(a netip.Addr, bits int) *net.IPNet {
	return &net.IPNet{IP: net.IP(a.AsSlice()), Mask: net.CIDRMask(bits, 32)}
}

// Teardown removes id's namespace and veth pair and frees its subnet. It is
// idempotent: an ID the pool has never seen is not an error.
func (p *Pool) Teardown(ctx context.Context, id string) error {
	if !ValidID(id) {
		return fmt.Errorf("netpool: invalid sandbox ID %q", id)
	}
	if err := ctx.Err(); err != nil {
		return err
	}
	l, ok := p.Lookup(id)
	if !ok {
		l = p.newLink(id, netip.Prefix{})
	}
	if err := p.destroy(l); err != nil {
		return fmt.Errorf("netpool: tearing down %s: %w", id, err)
	}
	p.release(id)
	return nil
}

// destroy deletes the kernel objects named after l.ID. The host veth goes
// first and explicitly: deleting a namespace frees its interfaces
// asynchronously, and the names must be free when destroy returns.
func (p *Pool) destroy(l *Link) error {
	var errs []error
	if host, err := netlink.LinkByName(l.HostIf); err == nil {
		if err := netlink.LinkDel(host); err != nil && !isNotExist(err) {
			errs = append(errs, fmt.Errorf("deleting %s: %w", l.HostIf, err))
		}
	} else if !isNotExist(err) {
		errs = append(errs, fmt.Errorf("finding %s: %w", l.HostIf, err))
	}
	if err := deleteNetns(l.NetnsPath); err != nil {
		errs = append(errs, fmt.Errorf("deleting netns %s: %w", l.Netns, err))
	}
	return errors.Join(errs...)
}

func isNotExist(err error) bool {
	var nf netlink.LinkNotFoundError
	return errors.As(err, &nf) || errors.Is(err, unix.ENODEV) || errors.Is(err, os.ErrNotExist)
}

// Lookup returns a copy of the pool's link for id.
func (p *Pool) Lookup(id string) (*Link, bool) {
	p.mu.Lock()
	defer p.mu.Unlock()
	l, ok := p.links[id]
	if !ok {
		return nil, false
	}
	out := *l
	return &out, true
}

// List returns copies of all links the pool holds, sorted by ID: the ones
// it built and the ones it found when it started, not its own spares.
func (p *Pool) List() []*Link {
	p.mu.Lock()
	out := make([]*Link, 0, len(p.links))
	for _, l := range p.links {
		if p.spareIDs[l.ID] {
			continue
		}
		c := *l
		out = append(out, &c)
	}
	p.mu.Unlock()
	sort.Slice(out, func(i, j int) bool { return out[i].ID < out[j].ID })
	return out
}

// Cleanup tears down every link whose ID keep rejects (keep == nil: all),
// including leftovers found in the kernel since the pool started (spares
// of an earlier pool among them); the pool's own spares stay (see Close).
func (p *Pool) Cleanup(ctx context.Context, keep func(id string) bool) error {
	if err := p.learn(); err != nil {
		return err
	}
	var errs []error
	for _, l := range p.List() {
		if keep != nil && keep(l.ID) {
			continue
		}
		if err := p.Teardown(ctx, l.ID); err != nil {
			errs = append(errs, err)
		}
	}
	return errors.Join(errs...)
}

// ensureNetnsDir makes NetnsDir a shared mount point, as iproute2 does, so
// that namespace bind mounts propagate to (and unmounts from) mount
// namespaces created later, and `ip netns` interoperates.
func (p *Pool) ensureNetnsDir() error {
	dir := p.cfg.NetnsDir
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return err
	}
	made := false
	for {
		err := unix.Mount("", dir, "none", unix.MS_SHARED|unix.MS_REC, "")
		if err == nil {
			return nil
		}
		if !errors.Is(err, unix.EINVAL) || made {
			return fmt.Errorf("making %s a shared mount: %w", dir, err)
		}
		if err := unix.Mount(dir, dir, "none", unix.MS_BIND|unix.MS_REC, ""); err != nil {
			return fmt.Errorf("bind-mounting %s: %w", dir, err)
		}
		made = true
	}
}

// createNetns creates a network namespace and bind-mounts it at path. The
// unshare happens on a locked OS thread that is thrown away afterwards, so no
// goroutine ever runs in the new namespace by accident.
func createNetns(path string) error {
	f, err := os.OpenFile(path, os.O_CREATE|os.O_EXCL|os.O_RDONLY, 0o444)
	if err != nil {
		return err
	}
	f.Close()
	errc := make(chan error, 1)
	go func() {
		// Never unlocked: when this goroutine returns, the runtime ends the
		// thread instead of reusing it in a foreign namespace.
		runtime.LockOSThread()
		if err := unix.Unshare(unix.CLONE_NEWNET); err != nil {
			errc <- fmt.Errorf("unshare: %w", err)
			return
		}
		src := fmt.Sprintf("/proc/%d/task/%d/ns/net", os.Getpid(), unix.Gettid())
		if err := unix.Mount(src, path, "none", unix.MS_BIND, ""); err != nil {
			errc <- fmt.Errorf("bind mount: %w", err)
			return
		}
		errc <- nil
	}()
	if err := <-errc; err != nil {
		os.Remove(path)
		return err
	}
	return nil
}

// deleteNetns unmounts and removes a namespace bind mount; a missing one is
// not an error.
func deleteNetns(path string) error {
	if err := unix.Unmount(path, unix.MNT_DETACH); err != nil && !errors.Is(err, unix.EINVAL) && !errors.Is(err, unix.ENOENT) {
		return fmt.Errorf("unmount: %w", err)
	}
	if err := os.Remove(path); err != nil && !errors.Is(err, os.ErrNotExist) {
		return err
	}
	return nil
}

// linkList lists links in the namespace of h (nil: the root namespace),
// retrying once when the kernel interrupts the dump.
func linkList(h *netlink.Handle) ([]netlink.Link, error) {
	list := netlink.LinkList
	if h != nil {
		list = h.LinkList
	}
	links, err := list()
	if errors.Is(err, netlink.ErrDumpInterrupted) {
		links, err = list()
	}
	return links, err
}

// ErrGone is returned by Check when id's host veth no longer exists. Its
// peer in the namespace went with it, and the sandbox's network stack was
// bound to that interface: building a new pair does not reconnect it.
var ErrGone = errors.New("netpool: link is gone")

// Check looks at id's link in the kernel. A host end that lost its address
// or was set down is repaired (repaired is true); a missing host end is
// ErrGone.
func (p *Pool) Check(ctx context.Context, id string) (repaired bool, err error) {
	if err := ctx.Err(); err != nil {
		return false, err
	}
	l, ok := p.Lookup(id)
	if !ok || !l.Subnet.IsValid() {
		return false, fmt.Errorf("netpool: check %s: %w", id, ErrNotFound)
	}
	host, err := netlink.LinkByName(l.HostIf)
	if isNotExist(err) {
		return false, fmt.Errorf("netpool: check %s: veth %s: %w", id, l.HostIf, ErrGone)
	}
	if err != nil {
		return false, fmt.Errorf("netpool: check %s: %w", id, err)
	}
	if host.Attrs().Alias != id {
		return false, fmt.Errorf("netpool: check %s: veth %s now belongs to %q: %w", id, l.HostIf, host.Attrs().Alias, ErrGone)
	}
	addrs, err := linkAddrs4(host.Attrs().Index)
	if err != nil {
		return false, fmt.Errorf("netpool: check %s: %w", id, err)
	}
	hasAddr := slices.Contains(addrs, l.HostAddr)
	if !hasAddr {
		if err := netlink.AddrReplace(host, &netlink.Addr{IPNet: ipNet(l.HostAddr, l.Subnet.Bits())}); err != nil {
			return false, fmt.Errorf("netpool: check %s: re-adding %v: %w", id, l.HostAddr, err)
		}
		repaired = true
	}
	if host.Attrs().Flags&net.FlagUp == 0 {
		if err := netlink.LinkSetUp(host); err != nil {
			return repaired, fmt.Errorf("netpool: check %s: bringing up %s: %w", id, l.HostIf, err)
		}
		repaired = true
	}
	return repaired, nil
}

// LookupAddr returns a copy of the link whose sandbox-side address is addr.
func (p *Pool) LookupAddr(addr netip.Addr) (*Link, bool) {
	p.mu.Lock()
	defer p.mu.Unlock()
	for _, l := range p.links {
		if l.SandboxAddr == addr && l.Subnet.IsValid() {
			out := *l
			return &out, true
		}
	}
	return nil, false
}
