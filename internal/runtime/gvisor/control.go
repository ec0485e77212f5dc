package gvisor

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"syscall"
	"time"

	"golang.org/x/sys/unix"

	"github.com/stasis-sandbox/stasis/internal/runtime"
)

// The sandbox's control socket speaks gVisor's urpc: one JSON call, with any
// file descriptors attached to its first bytes, answered by one JSON result
// on a stream socket. Pause, resume and checkpoint go straight to it: through
// the runsc binary each costs a process start and runsc's own bookkeeping,
// 10-15 ms, which was a fifth of a small sandbox's pause. What runsc would
// record of a freeze, the driver records itself (frozenMarker).
const (
	methodPause      = "containerManager.Pause"
	methodResume     = "containerManager.Resume"
	methodCheckpoint = "containerManager.Checkpoint"
)

// controlCall is urpc's request; controlResult its answer.
type controlCall struct {
	Method string `json:"method"`
	Arg    any    `json:"arg"`
}

type controlResult struct {
	Success bool   `json:"success"`
	Err     string `json:"err"`
}

// saveOpts is the argument of methodCheckpoint (gVisor's control.SaveOpts);
// the state, pages-metadata and pages files travel as descriptors.
type saveOpts struct {
	Metadata      map[string]string `json:"metadata"`
	HavePagesFile bool              `json:"have_pages_file"`
	// Resume lets the kernel carry on after the save: a frozen sandbox
	// stays frozen (the freeze is counted apart), a running one keeps going.
	Resume bool `json:"Resume"`
}

// controlSocket is where runsc creates sandbox id's control socket: the
// first directory it tries, its root dir.
func (d *Driver) controlSocket(id string) string {
	return filepath.Join(d.cfg.RootDir, "runsc-"+id+".sock")
}

// control makes one call on sandbox id's control socket, passing files.
// A sandbox that is not there is runtime.ErrNotFound (via notFound).
func (d *Driver) control(ctx context.Context, id, method string, arg any, files ...*os.File) error {
	path := d.controlSocket(id)
	if len(path) >= len(unix.RawSockaddrUnix{}.Path) {
		// Too long for sockaddr_un: go through an O_PATH descriptor.
		fd, err := unix.Open(path, unix.O_PATH|unix.O_CLOEXEC, 0)
		if err != nil {
			return fmt.Errorf("control socket: %w", err)
		}
		defer unix.Close(fd)
		path = fmt.Sprintf("/proc/self/fd/%d", fd)
	}
	var dialer net.Dialer
	c, err := dialer.DialContext(ctx, "unix", path)
	if err != nil {
		return fmt.Errorf("control socket: %w", err)
	}
	conn := c.(*net.UnixConn)
	defer conn.Close()
	if dl, ok := ctx.Deadline(); ok {
		conn.SetDeadline(dl)
	}
	// Closing the connection ends a call the context gave up on.
	stop := context.AfterFunc(ctx, func() { conn.SetDeadline(time.Unix(1, 0)) })
	defer stop()

	req, err := json.Marshal(controlCall{Method: method, Arg: arg})
	if err != nil {
		return err
	}
	var oob []byte
	if len(files) > 0 {
		fds := make([]int, len(files))
		for i, f := range files {
			fds[i] = int(f.Fd())
		}
		oob = unix.UnixRights(fds...)
	}
	n, _, err := conn.WriteMsgUnix(req, oob, nil)
	if err == nil && n < len(req) {
		_, err = conn.Write(req[n:])
	}
	if err != nil {
		return fmt.Errorf("%s: %w", method, ctxErr(ctx, err))
	}
	var res controlResult
	if err := json.NewDecoder(conn).Decode(&res); err != nil {
		return fmt.Errorf("%s: reading the answer: %w", method, ctxErr(ctx, err))
	}
	if !res.Success {
		return fmt.Errorf("%s: %s", method, res.Err)
	}
	return nil
}

// ctxErr prefers the context's error to the timeout it caused.
func ctxErr(ctx context.Context, err error) error {
	if ctx.Err() != nil {
		return ctx.Err()
	}
	return err
}

// frozenMarker exists while sandbox id is frozen by Freeze. It is written
// only after the sandbox answered the freeze and removed before the thaw is
// sent, so it never claims a freeze that is not there: a thaw too many would
// crash the sandbox (gVisor counts freezes and panics below zero).
func (d *Driver) frozenMarker(id string) string { return filepath.Join(d.sandboxDir(id), "frozen") }

func (d *Driver) isFrozen(id string) bool {
	_, err := os.Stat(d.frozenMarker(id))
	return err == nil
}

// Freeze stops every process in the sandbox where it is, keeping its
// memory. The agent does not answer while frozen. Freezing a frozen
// sandbox does nothing.
func (d *Driver) Freeze(ctx context.Context, id string) error {
	if !validID(id) {
		return fmt.Errorf("gvisor: freeze: invalid sandbox ID %q", id)
	}
	if !d.known(id) {
		return runtime.ErrNotFound
	}
	if d.isFrozen(id) {
		return nil
	}
	if err := d.control(ctx, id, methodPause, nil); err != nil {
		return fmt.Errorf("gvisor: freeze %s: %w", id, d.notFound(ctx, id, err))
	}
	if err := os.WriteFile(d.frozenMarker(id), nil, 0o600); err != nil {
		// Undo rather than leave a freeze nobody knows of.
		if terr := d.control(context.WithoutCancel(ctx), id, methodResume, nil); terr != nil {
			err = errors.Join(err, terr)
		}
		return fmt.Errorf("gvisor: freeze %s: %w", id, err)
	}
	d.frozenAt.Store(id, time.Now())
	return nil
}

// freezeSettle is how long after a freeze a checkpoint waits. Measured
// here: a checkpoint sent within a millisecond or two of the freeze often
// took 0.6-1 s for a 200 MB sandbox instead of 0.1-0.15 s (runsc's own
// commands never hit it: starting the runsc process takes longer than this);
// 3 ms was enough in every run.
const freezeSettle = 5 * time.Millisecond

// settleAfterFreeze waits out freezeSettle if sandbox id was frozen just now.
func (d *Driver) settleAfterFreeze(id string) {
	if v, ok := d.frozenAt.Load(id); ok {
		if wait := freezeSettle - time.Since(v.(time.Time)); wait > 0 {
			time.Sleep(wait)
		}
	}
}

// Thaw lets a frozen sandbox continue. Thawing a running one does nothing.
func (d *Driver) Thaw(ctx context.Context, id string) error {
	if !validID(id) {
		return fmt.Errorf("gvisor: thaw: invalid sandbox ID %q", id)
	}
	if !d.known(id) {
		return runtime.ErrNotFound
	}
	if !d.isFrozen(id) {
		return nil
	}
	if err := os.Remove(d.frozenMarker(id)); err != nil {
		return fmt.Errorf("gvisor: thaw %s: %w", id, err)
	}
	d.frozenAt.Delete(id)
	if err := d.control(ctx, id, methodResume, nil); err != nil {
		// Not thawed after all: put the marker back.
		os.WriteFile(d.frozenMarker(id), nil, 0o600)
		return fmt.Errorf("gvisor: thaw %s: %w", id, d.notFound(ctx, id, err))
	}
	return nil
}

// checkpointTo saves sandbox id into dir (existing, empty) through the
// control socket, as `runsc checkpoint --leave-running` would: the state
// file, the pages metadata and the pages (O_DIRECT when direct).
func (d *Driver) checkpointTo(ctx context.Context, id, dir string, direct bool) error {
	names := []string{"checkpoint.img", "pages_meta.img", "pages.img"}
	files := make([]*os.File, 0, len(names))
	defer func() {
		for _, f := range files {
			f.Close()
		}
	}()
	for i, name := range names {
		flags := os.O_CREATE | os.O_EXCL | os.O_RDWR
		if direct && i == 2 {
			flags |= syscall.O_DIRECT // runsc writes the pages page-aligned
		}
		f, err := os.OpenFile(filepath.Join(dir, name), flags, 0o644)
		if err != nil {
			return err
		}
		files = append(files, f)
	}
	d.settleAfterFreeze(id)
	opts := saveOpts{Metadata: map[string]string{"compression": "none"}, HavePagesFile: true, Resume: true}
	return d.control(ctx, id, methodCheckpoint, opts, files...)
}
