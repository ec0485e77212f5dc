package e2e

import (
	"os"
	"path/filepath"
	"testing"

	"golang.org/x/sys/unix"

	"github.com/stasis-sandbox/stasis/internal/testenv"
)

// coldHoldScript keeps 48 MiB of random bytes and writes their SHA-256 to
// /tmp/sum.before, and again to /tmp/sum.now on SIGUSR1.
const coldHoldScript = `import hashlib, os, signal, time
b = bytearray(os.urandom(48 << 20))
def report(path):
    with open(path + ".tmp", "w") as f:
        f.write(hashlib.sha256(b).hexdigest())
    os.rename(path + ".tmp", path)
signal.signal(signal.SIGUSR1, lambda *a: report("/tmp/sum.now"))
with open("/tmp/pid", "w") as f:
    f.write(str(os.getpid()))
report("/tmp/sum.before")
while True:
    time.sleep(3600)
`

// TestColdResumeKeepsMemory: a sandbox whose snapshot has left the page
// cache (as after a long pause) comes back with its processes' memory
// exactly as it was (stasis restores such a snapshot with O_DIRECT reads
// and checks its checksums the same way).
func TestColdResumeKeepsMemory(t *testing.T) {
	srv := testenv.StartServer(t)
	c, _ := create(t, srv, map[string]any{"name": "cold", "from_template": "stasis/base"})
	c.writeFile("/tmp/hold.py", []byte(coldHoldScript))
	c.sh("python3 /tmp/hold.py >/dev/null 2>&1 &")
	before := c.sh("for i in $(seq 600); do [ -s /tmp/sum.before ] && break; sleep 0.1; done; cat /tmp/sum.before")
	if len(before) != 64 {
		t.Fatalf("the memory holder did not report: %q", before)
	}
	if err := srv.Do("POST", "/sandboxes/"+c.id+"/pause", nil, nil); err != nil {
		t.Fatal(err)
	}
	waitPauseState(t, srv, c.id, true, false)
	files, _ := filepath.Glob(filepath.Join(srv.DataDir(), "snapshots", c.id, "*", "*"))
	if len(files) == 0 {
		t.Fatal("no snapshot files")
	}
	for _, p := range files {
		f, err := os.Open(p)
		if err != nil {
			t.Fatal(err)
		}
		if err := unix.Fadvise(int(f.Fd()), 0, 0, unix.FADV_DONTNEED); err != nil {
			t.Fatal(err)
		}
		f.Close()
	}
	// The data plane resumes a paused sandbox transparently.
	after := c.sh(`kill -USR1 "$(cat /tmp/pid)"; for i in $(seq 600); do [ -s /tmp/sum.now ] && break; sleep 0.1; done; cat /tmp/sum.now`)
	if after != before {
		t.Fatalf("memory after a cold resume: sha256 %s, before the pause %s", after, before)
	}
	if info := getInfo(t, srv, c.id); info.Status != "active" {
		t.Fatalf("after the cold resume: status %q", info.Status)
	}
}
