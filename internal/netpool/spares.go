package netpool

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"os"
	"sync"

	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netlink/nl"
	"golang.org/x/sys/unix"
)

// Building a link takes a few milliseconds (a netns, a veth pair, a dozen
// netlink requests); renaming a ready one takes a tenth of that. So a pool
// can keep a few spare links, built in the background under IDs of their
// own ("spare-<random>", learned and cleaned up after a crash like any
// other link), and Setup renames one after the sandbox that takes it.

// spareState is the part of Pool that keeps spares; guarded by Pool.mu.
type spareState struct {
	spares   []spare         // ready, newest last
	spareIDs map[string]bool // IDs of spares ready or being built
	want     int             // how many spares to keep
	failed   func(error)     // told of a spare that could not be built or taken
	wake     chan struct{}   // tells the refiller to look
	stop     chan struct{}   // closed by Close
	refiller sync.WaitGroup
}

type spare struct {
	link      *Link
	hostIndex int
}

const spareIDPrefix = "spare-"

// KeepSpares makes the pool keep n links ready (built in the background)
// for Setup to hand out; failed (if not nil) is told of each spare that
// could not be built, or taken (Setup then builds the link itself). Call
// it once, after the start-up Cleanup; Close stops it and removes the
// spares.
func (p *Pool) KeepSpares(n int, failed func(error)) {
	if n <= 0 {
		return
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.wake != nil {
		return
	}
	p.want, p.failed = n, failed
	p.wake = make(chan struct{}, 1)
	p.stop = make(chan struct{})
	p.wake <- struct{}{}
	p.refiller.Add(1)
	go p.refill()
}

// reportSpareFailure tells KeepSpares's failed of a spare that could not
// be built or taken.
func (p *Pool) reportSpareFailure(err error) {
	p.mu.Lock()
	failed := p.failed
	p.mu.Unlock()
	if failed != nil {
		failed(err)
	}
}

// Close stops building spares and removes the ones left. Setup keeps
// working (building each link).
func (p *Pool) Close() error {
	p.mu.Lock()
	stop := p.stop
	p.want = 0
	p.mu.Unlock()
	if stop == nil {
		return nil
	}
	select {
	case <-stop:
	default:
		close(stop)
	}
	p.refiller.Wait()
	p.mu.Lock()
	spares := p.spares
	p.spares = nil
	p.mu.Unlock()
	var errs []error
	for _, s := range spares {
		err := p.Teardown(context.Background(), s.link.ID)
		p.mu.Lock()
		delete(p.spareIDs, s.link.ID)
		p.mu.Unlock()
		errs = append(errs, err)
	}
	return errors.Join(errs...)
}

// refill builds spares until the pool holds want of them, each time it is
// woken (at start and after each take). A failed build waits for the next
// wake rather than retrying at once.
func (p *Pool) refill() {
	defer p.refiller.Done()
	for {
		select {
		case <-p.stop:
			return
		case <-p.wake:
		}
		for {
			id, ok := p.startSpare()
			if !ok {
				break
			}
			l, index, err := p.build(id)
			p.mu.Lock()
			if err != nil {
				delete(p.spareIDs, id)
				p.mu.Unlock()
				p.reportSpareFailure(err)
				break
			}
			p.spares = append(p.spares, spare{link: l, hostIndex: index})
			p.mu.Unlock()
			select {
			case <-p.stop:
				return // Close removes what was built
			default:
			}
		}
	}
}

// startSpare names the next spare to build, if the pool wants one and has
// a subnet to spare beyond it: a spare never takes the last free subnet.
func (p *Pool) startSpare() (string, bool) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if len(p.spareIDs) >= p.want || len(p.subnets)-len(p.used) < 2 {
		return "", false
	}
	var b [6]byte
	if _, err := rand.Read(b[:]); err != nil {
		return "", false
	}
	id := spareIDPrefix + hex.EncodeToString(b[:])
	p.spareIDs[id] = true
	return id, true
}

// take renames a ready spare after id and returns it; nil if no spare is
// ready. The spare's netns is bind-mounted under id's name and its host
// veth gets id's name and alias in one request: a crash in between leaves
// objects that learn() finds under one ID or the other, and Cleanup
// removes them.
func (p *Pool) take(id string) (_ *Link, err error) {
	p.mu.Lock()
	if _, ok := p.links[id]; ok {
		p.mu.Unlock()
		return nil, fmt.Errorf("%w: %s", ErrExists, id)
	}
	if len(p.spares) == 0 {
		p.mu.Unlock()
		return nil, nil
	}
	s := p.spares[len(p.spares)-1]
	p.spares = p.spares[:len(p.spares)-1]
	delete(p.links, s.link.ID)
	delete(p.spareIDs, s.link.ID)
	l := p.newLink(id, s.link.Subnet)
	p.links[id] = l
	wake := p.wake
	p.mu.Unlock()
	defer func() {
		// The refill waits until this link is done: building one holds
		// the kernel's rtnl lock that the renames need.
		if wake != nil {
			select {
			case wake <- struct{}{}:
			default:
			}
		}
		if err != nil {
			_ = p.destroy(s.link)
			_ = p.destroy(l)
			p.release(id)
			err = fmt.Errorf("netpool: setting up link for %s from %s: %w", id, s.link.ID, err)
		}
	}()
	if err := p.destroy(l); err != nil { // leftovers with id's names
		return nil, fmt.Errorf("removing leftovers: %w", err)
	}
	if err := moveNetns(s.link.NetnsPath, l.NetnsPath); err != nil {
		return nil, fmt.Errorf("renaming netns %s: %w", s.link.Netns, err)
	}
	if err := renameLink(s.hostIndex, l.HostIf, id); err != nil {
		return nil, fmt.Errorf("renaming %s to %s: %w", s.link.HostIf, l.HostIf, err)
	}
	out := *l
	return &out, nil
}

// moveNetns gives the namespace bind-mounted at from the path to instead
// (a mount point cannot be renamed).
func moveNetns(from, to string) error {
	f, err := os.OpenFile(to, os.O_CREATE|os.O_EXCL|os.O_RDONLY, 0o444)
	if err != nil {
		return err
	}
	f.Close()
	if err := unix.Mount(from, to, "none", unix.MS_BIND, ""); err != nil {
		os.Remove(to)
		return fmt.Errorf("bind mount: %w", err)
	}
	return deleteNetns(from)
}

// renameLink sets the name and alias of interface index in one request.
// Kernels that refuse to rename an interface that is up (older ones) get
// it set down around the rename.
func renameLink(index int, name, alias string) error {
	set := func() error {
		req := nl.NewNetlinkRequest(unix.RTM_SETLINK, unix.NLM_F_ACK)
		msg := nl.NewIfInfomsg(unix.AF_UNSPEC)
		msg.Index = int32(index)
		req.AddData(msg)
		req.AddData(nl.NewRtAttr(unix.IFLA_IFNAME, nl.ZeroTerminated(name)))
		req.AddData(nl.NewRtAttr(unix.IFLA_IFALIAS, []byte(alias)))
		_, err := req.Execute(unix.NETLINK_ROUTE, 0)
		return err
	}
	err := set()
	if !errors.Is(err, unix.EBUSY) {
		return err
	}
	attrs := netlink.NewLinkAttrs()
	attrs.Index = index
	dev := &netlink.Device{LinkAttrs: attrs}
	if err := netlink.LinkSetDown(dev); err != nil {
		return err
	}
	if err := set(); err != nil {
		return err
	}
	return netlink.LinkSetUp(dev)
}
