// Package lockfile takes exclusive locks on files (flock) and records in
// each who holds it, so that a second process refused the lock can name the
// process in its way. The kernel drops a lock when its holder exits, however
// it exits, so a crash never leaves a stale lock behind. The lock's file
// descriptor is close-on-exec: children (runsc sandboxes that outlive
// stasisd) never inherit it.
package lockfile

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"time"

	"golang.org/x/sys/unix"
)

// Holder describes the process holding a lock.
type Holder struct {
	Program string `json:"program,omitempty"` // default "stasisd"
	PID     int    `json:"pid"`
	DataDir string `json:"data_dir,omitempty"`
	Listen  string `json:"listen,omitempty"`
}

// String says who the holder is, for error messages.
func (h Holder) String() string {
	if h.PID == 0 {
		return "another process"
	}
	prog := h.Program
	if prog == "" {
		prog = "stasisd"
	}
	s := fmt.Sprintf("%s pid %d", prog, h.PID)
	var extra []string
	if h.DataDir != "" {
		extra = append(extra, "data dir "+h.DataDir)
	}
	if h.Listen != "" {
		extra = append(extra, "listening on "+h.Listen)
	}
	if len(extra) > 0 {
		s += " (" + strings.Join(extra, ", ") + ")"
	}
	return s
}

// HeldError is returned when another process holds the lock.
type HeldError struct {
	Path   string
	Holder Holder // zero if the holder did not (yet) write itself down
}

func (e *HeldError) Error() string {
	return fmt.Sprintf("%s is held by %s", e.Path, e.Holder)
}

// Lock is a held lock. Release it, or exit.
type Lock struct {
	f    *os.File
	path string
}

// TryAcquire takes the lock on path (created if missing, with its parent
// directory) without waiting, and writes h into it. If another process
// holds it, the error is a *HeldError naming that process.
func TryAcquire(path string, h Holder) (*Lock, error) {
	for {
		f, err := open(path)
		if err != nil {
			return nil, err
		}
		if err := unix.Flock(int(f.Fd()), unix.LOCK_EX|unix.LOCK_NB); err != nil {
			f.Close()
			if errors.Is(err, unix.EWOULDBLOCK) {
				return nil, &HeldError{Path: path, Holder: readHolder(path)}
			}
			return nil, fmt.Errorf("lock %s: %w", path, err)
		}
		// Release removes the file: the one we locked may have been
		// removed since we opened it, and a new one may be locked by
		// someone else. Ours only counts if it is still the path's.
		if fi, err := f.Stat(); err == nil {
			if cur, err := os.Stat(path); err == nil && os.SameFile(fi, cur) {
				return record(f, path, h)
			}
		}
		f.Close()
	}
}

// Acquire is TryAcquire that waits (polling) until the lock is free or ctx
// ends; tests use it to take turns on a shared name.
func Acquire(ctx context.Context, path string, h Holder) (*Lock, error) {
	for {
		l, err := TryAcquire(path, h)
		var held *HeldError
		if !errors.As(err, &held) {
			return l, err
		}
		select {
		case <-ctx.Done():
			return nil, fmt.Errorf("waiting for %w: %w", held, ctx.Err())
		case <-time.After(100 * time.Millisecond):
		}
	}
}

// Release removes the lock file (while still holding the lock, so nobody
// is named after we are gone; see TryAcquire for why that is safe) and
// drops the lock.
func (l *Lock) Release() error {
	if l == nil || l.f == nil {
		return nil
	}
	os.Remove(l.path)
	err := l.f.Close()
	l.f = nil
	return err
}

// HeldBy reports whether some process holds the lock on path, and who,
// without taking it or creating the file.
func HeldBy(path string) (Holder, bool) {
	f, err := os.Open(path)
	if err != nil {
		return Holder{}, false
	}
	defer f.Close()
	if err := unix.Flock(int(f.Fd()), unix.LOCK_SH|unix.LOCK_NB); err != nil {
		return readHolder(path), errors.Is(err, unix.EWOULDBLOCK)
	}
	unix.Flock(int(f.Fd()), unix.LOCK_UN)
	return Holder{}, false
}

func open(path string) (*os.File, error) {
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		return nil, fmt.Errorf("lock %s: %w", path, err)
	}
	f, err := os.OpenFile(path, os.O_RDWR|os.O_CREATE, 0o644)
	if err != nil {
		return nil, fmt.Errorf("lock %s: %w", path, err)
	}
	return f, nil
}

func record(f *os.File, path string, h Holder) (*Lock, error) {
	b, _ := json.Marshal(h)
	err := f.Truncate(0)
	if err == nil {
		_, err = f.WriteAt(append(b, '\n'), 0)
	}
	if err != nil {
		f.Close()
		return nil, fmt.Errorf("lock %s: recording the holder: %w", path, err)
	}
	return &Lock{f: f, path: path}, nil
}

// readHolder reads what the holder recorded; a zero Holder if nothing
// readable is there (yet).
func readHolder(path string) Holder {
	var h Holder
	if b, err := os.ReadFile(path); err == nil {
		json.Unmarshal(b, &h)
	}
	return h
}
