package lockfile

import (
	"context"
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

func TestSecondHolderIsRefusedAndNamed(t *testing.T) {
	path := filepath.Join(t.TempDir(), "sub", "x.lock")
	first, err := TryAcquire(path, Holder{PID: 4242, DataDir: "/srv/a", Listen: "127.0.0.1:1"})
	if err != nil {
		t.Fatal(err)
	}
	// flock locks belong to open file descriptions: a second open in the
	// same process conflicts just like another process would.
	_, err = TryAcquire(path, Holder{PID: 1})
	var held *HeldError
	if !errors.As(err, &held) {
		t.Fatalf("second TryAcquire: %v, want *HeldError", err)
	}
	if held.Holder.PID != 4242 || held.Holder.DataDir != "/srv/a" || held.Holder.Listen != "127.0.0.1:1" {
		t.Errorf("holder %+v", held.Holder)
	}
	if msg := held.Error(); !strings.Contains(msg, "stasisd pid 4242") || !strings.Contains(msg, "listening on 127.0.0.1:1") {
		t.Errorf("message %q does not name the holder", msg)
	}
	if err := first.Release(); err != nil {
		t.Fatal(err)
	}
	again, err := TryAcquire(path, Holder{PID: 7})
	if err != nil {
		t.Fatalf("after release: %v", err)
	}
	again.Release()
}

func TestLockDiesWithItsProcess(t *testing.T) {
	if os.Getenv("LOCKFILE_CHILD") != "" {
		if _, err := TryAcquire(os.Getenv("LOCKFILE_CHILD"), Holder{PID: os.Getpid()}); err != nil {
			os.Exit(3)
		}
		os.Stdout.WriteString("locked\n")
		time.Sleep(time.Hour)
	}
	path := filepath.Join(t.TempDir(), "x.lock")
	cmd := exec.Command(os.Args[0], "-test.run=^TestLockDiesWithItsProcess$")
	cmd.Env = append(os.Environ(), "LOCKFILE_CHILD="+path)
	out, _ := cmd.StdoutPipe()
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	buf := make([]byte, 7)
	if _, err := out.Read(buf); err != nil || string(buf) != "locked\n" {
		t.Fatalf("child did not lock: %q %v", buf, err)
	}
	_, err := TryAcquire(path, Holder{PID: os.Getpid()})
	var held *HeldError
	if !errors.As(err, &held) || held.Holder.PID != cmd.Process.Pid {
		t.Fatalf("while the child holds it: %v", err)
	}
	cmd.Process.Kill() // our own child, as a crash would end it
	cmd.Wait()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	l, err := Acquire(ctx, path, Holder{PID: os.Getpid()})
	if err != nil {
		t.Fatalf("after the holder died: %v", err)
	}
	l.Release()
}

// TestReleaseRemovesTheFile: a released lock leaves no file behind, and
// the next holder gets a fresh one.
func TestReleaseRemovesTheFile(t *testing.T) {
	path := filepath.Join(t.TempDir(), "x.lock")
	l, err := TryAcquire(path, Holder{PID: 1})
	if err != nil {
		t.Fatal(err)
	}
	l.Release()
	if _, err := os.Stat(path); !os.IsNotExist(err) {
		t.Fatalf("lock file still there after release: %v", err)
	}
	l2, err := TryAcquire(path, Holder{PID: 2})
	if err != nil {
		t.Fatal(err)
	}
	defer l2.Release()
	var held *HeldError
	if _, err := TryAcquire(path, Holder{PID: 3}); !errors.As(err, &held) || held.Holder.PID != 2 {
		t.Fatalf("while the second holds it: %v", err)
	}
}
