package e2e

import (
	"bytes"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

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
	dropSnapshotCache(t, srv, c.id)
	// The data plane resumes a paused sandbox transparently.
	after := c.sh(`kill -USR1 "$(cat /tmp/pid)"; for i in $(seq 600); do [ -s /tmp/sum.now ] && break; sleep 0.1; done; cat /tmp/sum.now`)
	if after != before {
		t.Fatalf("memory after a cold resume: sha256 %s, before the pause %s", after, before)
	}
	if info := getInfo(t, srv, c.id); info.Status != "active" {
		t.Fatalf("after the cold resume: status %q", info.Status)
	}
}

// dropSnapshotCache evicts the files of sandbox id's snapshot from the page
// cache, as a long pause on a busy host would.
func dropSnapshotCache(t *testing.T, srv *testenv.Server, id string) {
	t.Helper()
	files, _ := filepath.Glob(filepath.Join(srv.DataDir(), "snapshots", id, "*", "*"))
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
}

// pageHoldScript keeps argv[1] MiB of random bytes and writes a digest of
// the SHA-1 of every 4 KiB page of it to /tmp/pages.before, and again to
// /tmp/pages.now on SIGUSR1.
const pageHoldScript = `import hashlib, os, signal, sys, time
n = int(sys.argv[1]) << 20
b = bytearray(os.urandom(n))
def report(path):
    d = hashlib.sha256()
    for off in range(0, n, 4096):
        d.update(hashlib.sha1(b[off:off + 4096]).digest())
    with open(path + ".tmp", "w") as f:
        f.write("%d %s" % (n // 4096, d.hexdigest()))
    os.rename(path + ".tmp", path)
signal.signal(signal.SIGUSR1, lambda *a: report("/tmp/pages.now"))
with open("/tmp/pid", "w") as f:
    f.write(str(os.getpid()))
report("/tmp/pages.before")
while True:
    time.sleep(3600)
`

// pagesNow has the memory holder checksum its pages again and returns the
// result.
const pagesNow = `rm -f /tmp/pages.now; kill -USR1 "$(cat /tmp/pid)"; for i in $(seq 1200); do [ -s /tmp/pages.now ] && break; sleep 0.1; done; cat /tmp/pages.now`

// holdPages starts the page holder in c's sandbox with mib MiB and returns
// its first report.
func holdPages(t *testing.T, c *client, mib int) string {
	t.Helper()
	c.writeFile("/tmp/hold.py", []byte(pageHoldScript))
	c.sh(fmt.Sprintf("python3 /tmp/hold.py %d >/dev/null 2>&1 &", mib))
	before := c.sh("for i in $(seq 1200); do [ -s /tmp/pages.before ] && break; sleep 0.1; done; cat /tmp/pages.before")
	if want := fmt.Sprintf("%d ", mib<<8); !strings.HasPrefix(before, want) || len(before) != len(want)+64 {
		t.Fatalf("the memory holder did not report: %q", before)
	}
	return before
}

// pauseToDisk pauses sandbox id and waits until it is on disk only.
func pauseToDisk(t *testing.T, srv *testenv.Server, id string) {
	t.Helper()
	if err := srv.Do("POST", "/sandboxes/"+id+"/pause", nil, nil); err != nil {
		t.Fatal(err)
	}
	waitPauseState(t, srv, id, true, false)
}

// execStatus runs command on c's sandbox without failing the test from a
// goroutine: it returns the HTTP status, the exit code and stdout.
func execStatus(c *client, command string) (int, int, string, error) {
	b, _ := json.Marshal(map[string]any{"command": command})
	req, err := http.NewRequest("POST", c.srv.URL+"/exec", bytes.NewReader(b))
	if err != nil {
		return 0, 0, "", err
	}
	req.Header.Set("X-Superserve-Sandbox-Id", c.id)
	req.Header.Set("X-Access-Token", c.token)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return 0, 0, "", err
	}
	defer resp.Body.Close()
	var r execResult
	data, _ := io.ReadAll(resp.Body)
	if resp.StatusCode == http.StatusOK {
		if err := json.Unmarshal(data, &r); err != nil {
			return resp.StatusCode, 0, "", fmt.Errorf("bad JSON %s", data)
		}
		return resp.StatusCode, r.ExitCode, strings.TrimSpace(r.Stdout), nil
	}
	return resp.StatusCode, 0, string(data), nil
}

// lazyChecks is how many lazily loaded snapshots stasisd has checked (its
// metrics): each one is a resume that let the sandbox run before its
// memory was in.
func lazyChecks(t *testing.T, srv *testenv.Server) int {
	t.Helper()
	resp, err := http.Get(srv.URL + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	const key = `stasis_operation_duration_seconds_count{operation="resume_lazy_check"} `
	for _, l := range strings.Split(string(body), "\n") {
		if v, ok := strings.CutPrefix(l, key); ok {
			n, _ := strconv.Atoi(v)
			return n
		}
	}
	return 0
}

// TestLazyResumeKeepsEveryPage: a large sandbox whose snapshot has left the
// page cache is resumed lazily (it runs while its memory loads): several
// commands sent at once to the paused sandbox resume it and all run (one
// reading every page of the process's memory while it loads), a second
// pause right away (while the memory still loads) and a second cold
// resume work, and every page of the process's memory is then exactly as
// it was before the first pause.
func TestLazyResumeKeepsEveryPage(t *testing.T) {
	const mib = 384
	srv := testenv.StartServer(t)
	c, _ := create(t, srv, map[string]any{"name": "lazy", "from_template": "stasis/base", "memory_mib": 1024})
	before := holdPages(t, c, mib)
	coldPause := func() {
		t.Helper()
		pauseToDisk(t, srv, c.id)
		dropSnapshotCache(t, srv, c.id)
	}
	coldPause()

	// Commands sent at once to the paused sandbox: one resumes it, the
	// others wait for it and run while the memory loads. The first reads
	// every page of the holder's memory while the rest of it loads in the
	// background (page faults ahead of the bulk load).
	var wg sync.WaitGroup
	errs := make(chan error, 5)
	wg.Add(1)
	go func() {
		defer wg.Done()
		status, code, out, err := execStatus(c, pagesNow)
		if err == nil && (status != http.StatusOK || code != 0 || out != before) {
			err = fmt.Errorf("memory read while it loads after the cold resume: HTTP %d, exit %d, %q, before the pause %q", status, code, out, before)
		}
		errs <- err
	}()
	for i := range 4 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			status, code, out, err := execStatus(c, fmt.Sprintf("echo ran-%d", i))
			if err == nil && (status != http.StatusOK || code != 0 || out != fmt.Sprintf("ran-%d", i)) {
				err = fmt.Errorf("exec %d after the cold resume: HTTP %d, exit %d, %q", i, status, code, out)
			}
			errs <- err
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		if err != nil {
			t.Error(err)
		}
	}
	if t.Failed() {
		t.FailNow()
	}
	// Paused again at once: the memory is still loading (or just in).
	coldPause()
	if after := c.sh(pagesNow); after != before {
		t.Fatalf("memory after two lazy resumes: %q, before the first pause %q", after, before)
	}
	// Both resumes were lazy: each loaded memory was checked afterwards.
	deadline := time.Now().Add(2 * time.Minute)
	for lazyChecks(t, srv) < 2 {
		if time.Now().After(deadline) {
			t.Fatalf("%d lazy resumes checked, want 2: the cold resumes did not restore lazily", lazyChecks(t, srv))
		}
		time.Sleep(100 * time.Millisecond)
	}
	if info := getInfo(t, srv, c.id); info.Status != "active" {
		t.Fatalf("after the lazy resumes: status %q (%s)", info.Status, info.Error)
	}
}

// TestLazyResumeFailsCorruptMemory: when the memory that a lazy resume
// loads after the sandbox runs does not match the snapshot's checksums, the
// sandbox is stopped and failed with the reason.
func TestLazyResumeFailsCorruptMemory(t *testing.T) {
	srv := testenv.StartServer(t)
	c, _ := create(t, srv, map[string]any{"name": "lazy-corrupt", "from_template": "stasis/base", "memory_mib": 1024})
	holdPages(t, c, 96)
	pauseAndFlipPagesByte(t, srv, c.id, 3, 4)
	dropSnapshotCache(t, srv, c.id)

	// The files read before the sandbox runs are intact: the resume goes
	// through, and the check of the memory then fails the sandbox.
	if err := srv.Do("POST", "/sandboxes/"+c.id+"/resume", nil, nil); err != nil {
		t.Fatalf("lazy resume: %v", err)
	}
	deadline := time.Now().Add(2 * time.Minute)
	for {
		info := getInfo(t, srv, c.id)
		if info.Status == "failed" {
			if !strings.Contains(info.Error, "pages.img: checksum mismatch") {
				t.Fatalf("failed with %q, want the pages file's checksum mismatch", info.Error)
			}
			break
		}
		if info.Status != "active" || time.Now().After(deadline) {
			t.Fatalf("after a lazy resume of corrupt memory: status %q (%s), want failed", info.Status, info.Error)
		}
		time.Sleep(50 * time.Millisecond)
	}
	if lazyChecks(t, srv) != 1 {
		t.Fatalf("the resume was not lazy (%d lazy checks)", lazyChecks(t, srv))
	}
	if pids := hostProcessesMentioning(c.id); len(pids) != 0 {
		t.Fatalf("processes of the failed sandbox still run: %v", pids)
	}
}

// pauseAndFlipPagesByte pauses sandbox id to disk and flips one byte of its
// snapshot's pages file, num/den of the way in.
func pauseAndFlipPagesByte(t *testing.T, srv *testenv.Server, id string, num, den int64) {
	t.Helper()
	pauseToDisk(t, srv, id)
	pages, err := filepath.Glob(filepath.Join(srv.DataDir(), "snapshots", id, "*", "pages.img"))
	if err != nil || len(pages) != 1 {
		t.Fatalf("pages file: %v %v", pages, err)
	}
	f, err := os.OpenFile(pages[0], os.O_RDWR, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	fi, err := f.Stat()
	if err != nil {
		t.Fatal(err)
	}
	b := make([]byte, 1)
	off := fi.Size() * num / den
	if _, err := f.ReadAt(b, off); err != nil {
		t.Fatal(err)
	}
	b[0] ^= 0xff
	if _, err := f.WriteAt(b, off); err != nil {
		t.Fatal(err)
	}
}

// TestSmallColdResumeIsLazy: a small sandbox's snapshot that has left the
// page cache is resumed lazily too (the sandbox runs while its memory
// loads, which is checked after), a pause right after it waits for that
// check, and every page of the process's memory is as it was. A resume
// from a snapshot still in the page cache checks it before the sandbox
// runs: no check is left for after.
func TestSmallColdResumeIsLazy(t *testing.T) {
	srv := testenv.StartServer(t)
	c, _ := create(t, srv, map[string]any{"name": "small-lazy", "from_template": "stasis/base"})
	before := holdPages(t, c, 4)
	pauseToDisk(t, srv, c.id)
	// The data plane resumes a paused sandbox transparently.
	if after := c.sh(pagesNow); after != before {
		t.Fatalf("memory after a resume from the page cache: %q, before the pause %q", after, before)
	}
	if n := lazyChecks(t, srv); n != 0 {
		t.Fatalf("%d lazy checks after a resume from the page cache, want 0", n)
	}
	pauseToDisk(t, srv, c.id)
	dropSnapshotCache(t, srv, c.id)
	if after := c.sh(pagesNow); after != before {
		t.Fatalf("memory after a cold resume: %q, before the first pause %q", after, before)
	}
	pauseToDisk(t, srv, c.id) // waits for the check of the memory loaded after the resume
	deadline := time.Now().Add(2 * time.Minute)
	for lazyChecks(t, srv) < 1 {
		if time.Now().After(deadline) {
			t.Fatal("no lazy check: the cold resume did not restore lazily")
		}
		time.Sleep(100 * time.Millisecond)
	}
	if after := c.sh(pagesNow); after != before {
		t.Fatalf("memory after a lazy resume and a pause: %q, before the first pause %q", after, before)
	}
	if info := getInfo(t, srv, c.id); info.Status != "active" {
		t.Fatalf("after the lazy resume: status %q (%s)", info.Status, info.Error)
	}
}
