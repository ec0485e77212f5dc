// Package testenv starts a real stasisd for end-to-end tests: real binaries,
// real HTTP on loopback, a real SQLite file and real gVisor sandboxes.
package testenv

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/stasis-sandbox/stasis/internal/firewall"
	"github.com/stasis-sandbox/stasis/internal/runtime/faultinject"
)

// Server is a running stasisd.
type Server struct {
	URL    string
	APIKey string
	// Env and Args are added to stasisd's environment and serve flags at
	// every (re)start; change them before Restart to restart differently.
	Env  []string
	Args []string

	t       testing.TB
	dataDir string
	listen  string
	e2b     string // --e2b-listen
	subnet  string
	prefix  string
	cmd     *exec.Cmd
	slot    *os.File // flock held on this server's network slot
	logs    *lockedBuffer
	exited  chan struct{}
	// unhealthyOK: the server counts as started once /health answers at
	// all, even 503 (a test of an unhealthy server).
	unhealthyOK bool
	faults      string // fault file (package faultinject); "" unless WithFaults
}

var (
	buildOnce sync.Once
	binDir    string
	buildErr  error
	serverSeq atomic.Int32
)

// RepoRoot is the module's root directory.
func RepoRoot() string {
	dir, _ := os.Getwd()
	for {
		if _, err := os.Stat(filepath.Join(dir, "go.mod")); err == nil {
			return dir
		}
		parent := filepath.Dir(dir)
		if parent == dir {
			panic("testenv: go.mod not found above the working directory")
		}
		dir = parent
	}
}

// Binaries returns a directory holding stasisd, stasis, stasis-agent and
// stasis-applets (which stasisd installs when it builds stasis/minimal):
// $STASIS_BIN_DIR when set (make test builds them first), else a fresh
// static build of the current tree.
func Binaries(t testing.TB) string {
	t.Helper()
	buildOnce.Do(func() {
		if d := os.Getenv("STASIS_BIN_DIR"); d != "" {
			binDir = d
			return
		}
		binDir, buildErr = os.MkdirTemp("", "stasis-testbin-")
		if buildErr != nil {
			return
		}
		for _, name := range []string{"stasisd", "stasis", "stasis-agent", "stasis-applets"} {
			cmd := exec.Command("go", "build", "-o", filepath.Join(binDir, name), "./cmd/"+name)
			if name == "stasis-agent" { // its runtime patched, as make build does
				cmd = exec.Command("scripts/build-agent.sh", filepath.Join(binDir, name))
			}
			cmd.Dir = RepoRoot()
			cmd.Env = append(os.Environ(), "CGO_ENABLED=0")
			if out, err := cmd.CombinedOutput(); err != nil {
				buildErr = fmt.Errorf("build %s: %v\n%s", name, err, out)
				return
			}
		}
	})
	if buildErr != nil {
		t.Fatal(buildErr)
	}
	return binDir
}

// RequireRoot fails the test unless it runs as root: sandboxes need it.
func RequireRoot(t testing.TB) {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Fatal("this test drives real gVisor sandboxes and must run as root (make test does)")
	}
}

// NetnsMounted reports whether path has a network namespace bound to it:
// a netns file exists (empty) a moment before its namespace is mounted on
// it, and NetnsIno of it until then is the file's own inode.
func NetnsMounted(path string) bool {
	var fs unix.Statfs_t
	return unix.Statfs(path, &fs) == nil && fs.Type == unix.NSFS_MAGIC
}

// NetnsIno is the inode of the network namespace bind-mounted at path: the
// same namespace under any name.
func NetnsIno(t testing.TB, path string) uint64 {
	t.Helper()
	var st syscall.Stat_t
	if err := syscall.Stat(path, &st); err != nil {
		t.Fatal(err)
	}
	return st.Ino
}

// StartServer starts stasisd on a free loopback port with a fresh data dir,
// and stops it (deleting every sandbox it holds) when the test ends.
func StartServer(t testing.TB, opts ...Option) *Server {
	t.Helper()
	RequireRoot(t)
	Binaries(t) // build (or find) them before taking a slot
	dataDir, err := os.MkdirTemp("", "stasis-test-data-")
	if err != nil {
		t.Fatal(err)
	}
	// Each server gets its own /22 of link-local space and its own netns
	// name prefix, so servers in parallel test binaries never collide: a
	// slot is held by an flock for the server's lifetime.
	n, slot := lockSlot(t)
	s := &Server{
		slot:    slot,
		t:       t,
		dataDir: dataDir,
		listen:  freeAddr(t),
		e2b:     freeAddr(t),
		APIKey:  "ss_test_" + randomHex(16),
		subnet:  fmt.Sprintf("169.254.%d.0/22", 4+n*4),
		prefix:  fmt.Sprintf("stt%d", n),
	}
	s.URL = "http://" + s.listen
	for _, o := range opts {
		o(s)
	}
	s.start()
	t.Cleanup(s.Close)
	return s
}

func (s *Server) start() {
	s.t.Helper()
	s.cmd = s.Command(s.listen, s.dataDir, s.prefix, s.subnet)
	if s.faults != "" {
		s.cmd.Env = append(s.cmd.Env, faultinject.Env+"="+s.faults)
	}
	s.logs = &lockedBuffer{}
	s.cmd.Stdout, s.cmd.Stderr = s.logs, s.logs
	s.cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	if err := s.cmd.Start(); err != nil {
		s.t.Fatalf("start stasisd: %v", err)
	}
	s.exited = make(chan struct{})
	go func() { s.cmd.Wait(); close(s.exited) }()
	deadline := time.Now().Add(60 * time.Second)
	for time.Now().Before(deadline) {
		select {
		case <-s.exited:
			s.t.Fatalf("stasisd exited during start:\n%s", s.logs.String())
		default:
		}
		if resp, err := http.Get(s.URL + "/health"); err == nil {
			resp.Body.Close()
			if resp.StatusCode == http.StatusOK || s.unhealthyOK && resp.StatusCode == http.StatusServiceUnavailable {
				return
			}
		}
		time.Sleep(50 * time.Millisecond)
	}
	s.t.Fatalf("stasisd did not become healthy:\n%s", s.logs.String())
}

// Command returns an unstarted `stasisd serve` with this server's
// configuration (flags, environment, binaries) but the given listen
// address, data dir, netns prefix and subnet: a second server on the same
// host, e.g. to see it refused what the first one holds.
func (s *Server) Command(listen, dataDir, prefix, subnet string) *exec.Cmd {
	bins := Binaries(s.t)
	images := os.Getenv("STASIS_IMAGES_DIR")
	if images == "" {
		images = filepath.Join(RepoRoot(), ".cache", "images")
	}
	args := []string{"serve", "--listen", listen, "--data-dir", dataDir, "--images-dir", images,
		"--agent", filepath.Join(bins, "stasis-agent"), "--subnet", subnet, "--netns-prefix", prefix,
		"--log-level", "debug"}
	if r := os.Getenv("STASIS_RUNSC"); r != "" {
		args = append(args, "--runsc", r)
	} else {
		args = append(args, "--runsc", filepath.Join(RepoRoot(), ".cache", "runsc", "bin", "runsc"))
	}
	// Sandboxes of a test reach only what the test allows, and stasisd's
	// resolver never asks the host's name servers: a test that wants
	// egress passes --egress and --dns-upstream (see StartInternet).
	if !hasFlag(s.Args, "--egress") {
		args = append(args, "--egress", "deny")
	}
	if !hasFlag(s.Args, "--dns-upstream") {
		args = append(args, "--dns-upstream", "127.0.0.1:1")
	}
	// Only this server serves E2B's protocol, on its own port: a second
	// server from Command must not compete for it.
	e2b := ""
	if listen == s.listen {
		e2b = s.e2b
	}
	args = append(args, "--e2b-listen", e2b)
	args = append(args, s.Args...)
	cmd := exec.Command(filepath.Join(bins, "stasisd"), args...)
	cmd.Env = append(append(os.Environ(), "STASIS_API_KEY="+s.APIKey), s.Env...)
	return cmd
}

// Listen, Prefix and Subnet are the server's --listen, --netns-prefix and --subnet.
func (s *Server) Listen() string { return s.listen }

// E2BURL is the base URL of the server's E2B listener (--e2b-listen).
func (s *Server) E2BURL() string { return "http://" + s.e2b }
func (s *Server) Prefix() string { return s.prefix }
func (s *Server) Subnet() string { return s.subnet }

// Pid is the running stasisd's process ID.
func (s *Server) Pid() int { return s.cmd.Process.Pid }

func hasFlag(args []string, name string) bool {
	for _, a := range args {
		if a == name || strings.HasPrefix(a, name+"=") {
			return true
		}
	}
	return false
}

// Option configures a server before its first start.
type Option func(*Server)

// WithEnv adds KEY=VALUE pairs to stasisd's environment.
func WithEnv(kv ...string) Option { return func(s *Server) { s.Env = append(s.Env, kv...) } }

// AllowUnhealthy lets the server count as started while /health answers
// 503 (its checks fail), for tests of an unhealthy server.
func AllowUnhealthy() Option { return func(s *Server) { s.unhealthyOK = true } }

// WithArgs adds flags to `stasisd serve`.
func WithArgs(args ...string) Option { return func(s *Server) { s.Args = append(s.Args, args...) } }

// WithFaults lets the test inject runtime faults into the server (see
// ArmFaults); it keeps them across restarts.
func WithFaults() Option {
	return func(s *Server) { s.faults = filepath.Join(s.t.TempDir(), "faults.json") }
}

// ArmFaults makes the server's runtime calls fail as rules say, from now
// on (replacing the rules armed before; none disarms). The server must have
// been started WithFaults.
func (s *Server) ArmFaults(rules ...faultinject.Rule) {
	s.t.Helper()
	if s.faults == "" {
		s.t.Fatal("testenv: ArmFaults on a server started without WithFaults")
	}
	if err := faultinject.Arm(s.faults, rules...); err != nil {
		s.t.Fatal(err)
	}
}

// PendingFaults returns the armed rules that have not fired as often as
// their Times says.
func (s *Server) PendingFaults() []faultinject.Rule {
	s.t.Helper()
	rules, err := faultinject.Pending(s.faults)
	if err != nil {
		s.t.Fatal(err)
	}
	return rules
}

// Exited reports whether stasisd has exited (e.g. at a failpoint).
func (s *Server) Exited() bool {
	select {
	case <-s.exited:
		return true
	default:
		return false
	}
}

// WaitExit waits until stasisd exits.
func (s *Server) WaitExit(d time.Duration) bool {
	select {
	case <-s.exited:
		return true
	case <-time.After(d):
		return false
	}
}

// Logs returns everything stasisd printed so far.
func (s *Server) Logs() string { return s.logs.String() }

// DataDir is the server's data directory.
func (s *Server) DataDir() string { return s.dataDir }

// Kill stops stasisd with SIGKILL, as a crash would; sandboxes keep running.
func (s *Server) Kill() {
	s.cmd.Process.Signal(syscall.SIGKILL)
	<-s.exited
}

// Stop asks stasisd to shut down (SIGTERM) and waits for it to exit.
func (s *Server) Stop() {
	s.cmd.Process.Signal(syscall.SIGTERM)
	<-s.exited
}

// Restart starts stasisd again on the same address and data dir, stopping
// it first (SIGTERM) if it still runs: a second process would find the data
// dir locked, and the health check would be answered by the old one.
func (s *Server) Restart() {
	s.t.Helper()
	if !s.Exited() {
		s.Stop()
	}
	s.start()
}

// Close deletes every sandbox the server holds and stops it.
func (s *Server) Close() {
	if s.faults != "" {
		faultinject.Arm(s.faults) // the cleanup must not fail
	}
	if s.Exited() {
		// Crashed (or killed by the test): start it once more, without
		// failpoints, so it can delete the sandboxes it left running.
		s.Env = nil
		s.start()
	}
	select {
	case <-s.exited:
	default:
		var list []struct{ ID string }
		if err := s.Do("GET", "/sandboxes", nil, &list); err == nil {
			for _, sb := range list {
				s.Do("DELETE", "/sandboxes/"+sb.ID, nil, nil)
			}
		}
		s.cmd.Process.Signal(syscall.SIGTERM)
		select {
		case <-s.exited:
		case <-time.After(30 * time.Second):
			s.cmd.Process.Signal(syscall.SIGKILL)
			<-s.exited
		}
	}
	if s.t.Failed() {
		s.t.Logf("stasisd logs:\n%s", s.logs.String())
	}
	// runsc leaves an nsfs mount (null-netns) in its root dir; unmount it
	// before removing the data dir.
	for range 8 { // runsc may have stacked several mounts there
		if exec.Command("umount", "-l", filepath.Join(s.dataDir, "runsc", "null-netns")).Run() != nil {
			break
		}
	}
	os.RemoveAll(s.dataDir)
	// A clean stop removes the firewall chain itself; one that had to be
	// killed leaves it. (Test prefixes are short enough to be the
	// interface prefix the chain is named after.)
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	firewall.New(s.prefix).Remove(ctx)
	cancel()
	s.slot.Close() // releases the flock
}

// slots is how many servers may run at once on one host (one /22 each,
// 169.254.4.0-169.254.195.255). Ranges above belong to other test users:
// compat 196/22, netpool tests 200/22, gvisor tests 208/22, stasis-bench
// 244-254.
const slots = 48

// lockSlot takes a free network slot, trying them from a random start.
func lockSlot(t testing.TB) (int, *os.File) {
	t.Helper()
	dir := filepath.Join(os.TempDir(), "stasis-testenv-slots")
	os.MkdirAll(dir, 0o755)
	start := int(serverSeq.Add(1)) + os.Getpid()
	for i := range slots {
		n := (start + i) % slots
		f, err := os.OpenFile(filepath.Join(dir, fmt.Sprintf("%d.lock", n)), os.O_CREATE|os.O_RDWR, 0o644)
		if err != nil {
			t.Fatal(err)
		}
		if syscall.Flock(int(f.Fd()), syscall.LOCK_EX|syscall.LOCK_NB) == nil {
			return n, f
		}
		f.Close()
	}
	t.Fatal("testenv: no free network slot (too many stasisd test servers at once)")
	return 0, nil
}

// Do sends a control-plane request with the server's API key and decodes a
// JSON answer into out (if non-nil). Non-2xx answers are returned as *HTTPError.
func (s *Server) Do(method, path string, body, out any) error {
	var rd io.Reader
	if body != nil {
		b, err := json.Marshal(body)
		if err != nil {
			return err
		}
		rd = bytes.NewReader(b)
	}
	req, err := http.NewRequest(method, s.URL+path, rd)
	if err != nil {
		return err
	}
	req.Header.Set("X-API-Key", s.APIKey)
	req.Header.Set("Content-Type", "application/json")
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	data, _ := io.ReadAll(resp.Body)
	if resp.StatusCode >= 300 {
		return &HTTPError{Status: resp.StatusCode, Body: string(data)}
	}
	if out != nil && len(data) > 0 {
		return json.Unmarshal(data, out)
	}
	return nil
}

// HTTPError is a non-2xx answer.
type HTTPError struct {
	Status int
	Body   string
}

func (e *HTTPError) Error() string {
	return fmt.Sprintf("HTTP %d: %s", e.Status, strings.TrimSpace(e.Body))
}

func freeAddr(t testing.TB) string {
	addr, err := freeLoopbackAddr()
	if err != nil {
		t.Fatal(err)
	}
	return addr
}

func randomHex(n int) string {
	b := make([]byte, n)
	rand.Read(b)
	return hex.EncodeToString(b)
}

type lockedBuffer struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (b *lockedBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.Write(p)
}

func (b *lockedBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.String()
}
