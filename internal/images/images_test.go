package images

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/stasis-sandbox/stasis/internal/fsutil"
	"github.com/stasis-sandbox/stasis/internal/testenv"
)

// TestMain builds stasis-applets, which builds of stasis/minimal install,
// unless $STASIS_APPLETS names one; child processes inherit the variable.
func TestMain(m *testing.M) {
	if os.Getenv("STASIS_APPLETS") == "" {
		dir, err := os.MkdirTemp("", "stasis-images-test-")
		if err != nil {
			fmt.Fprintln(os.Stderr, err)
			os.Exit(1)
		}
		bin := filepath.Join(dir, "stasis-applets")
		cmd := exec.Command("go", "build", "-o", bin, "github.com/stasis-sandbox/stasis/cmd/stasis-applets")
		cmd.Env = append(os.Environ(), "CGO_ENABLED=0")
		if out, err := cmd.CombinedOutput(); err != nil {
			fmt.Fprintf(os.Stderr, "build stasis-applets: %v\n%s", err, out)
			os.Exit(1)
		}
		os.Setenv("STASIS_APPLETS", bin)
		code := m.Run()
		os.RemoveAll(dir)
		os.Exit(code)
	}
	os.Exit(m.Run())
}

// syncBuffer is a bytes.Buffer safe for concurrent writers.
type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

// inImage runs a shell command chrooted into rootfs and returns its output.
func inImage(t *testing.T, rootfs, shell, script string) string {
	t.Helper()
	cmd := exec.Command(shell, "-c", script)
	cmd.Env = []string{defaultPath, "LC_ALL=C", "HOME=/root"}
	cmd.Dir = "/"
	cmd.SysProcAttr = &syscall.SysProcAttr{Chroot: rootfs}
	out, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("chroot %s %s -c %q: %v\n%s", rootfs, shell, script, err, out)
	}
	return strings.TrimSpace(string(out))
}

func checkAgentMountPoint(t *testing.T, rootfs string) {
	t.Helper()
	fi, err := os.Lstat(filepath.Join(rootfs, AgentMountPoint))
	if err != nil {
		t.Fatalf("agent mount point: %v", err)
	}
	if !fi.Mode().IsRegular() || fi.Size() != 0 || fi.Mode().Perm() != 0o755 {
		t.Errorf("agent mount point is %v, %d bytes; want an empty regular file 0755", fi.Mode(), fi.Size())
	}
}

func TestBuiltins(t *testing.T) {
	got := strings.Join(Builtins(), ",")
	if got != "stasis/minimal,stasis/base,stasis/code-interpreter" {
		t.Errorf("Builtins() = %s", got)
	}
}

func TestUnknownImage(t *testing.T) {
	m := NewManager(t.TempDir())
	if _, err := m.Get("stasis/nope"); !errors.Is(err, ErrUnknown) {
		t.Errorf("Get: err = %v, want ErrUnknown", err)
	} else if !strings.Contains(err.Error(), "stasis/minimal") {
		t.Errorf("error does not list the built-in images: %v", err)
	}
	if _, err := m.Ensure(context.Background(), "ubuntu", nil); !errors.Is(err, ErrUnknown) {
		t.Errorf("Ensure: err = %v, want ErrUnknown", err)
	}
}

func TestNotBuilt(t *testing.T) {
	dir := t.TempDir()
	_, err := NewManager(dir).Get("stasis/minimal")
	if !errors.Is(err, ErrNotBuilt) {
		t.Fatalf("err = %v, want ErrNotBuilt", err)
	}
	if !strings.Contains(err.Error(), "stasisd images build") {
		t.Errorf("error does not say how to build: %v", err)
	}
}

func TestMinimal(t *testing.T) {
	testenv.RequireRoot(t)
	m := NewManager(t.TempDir())
	var progress syncBuffer
	start := time.Now()
	img, err := m.Ensure(context.Background(), "stasis/minimal", &progress)
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("built in %v:\n%s", time.Since(start), progress.String())
	if img.Name != "stasis/minimal" || img.User != "" || img.Workdir != "/" || !filepath.IsAbs(img.RootFS) {
		t.Errorf("image = %+v", img)
	}
	if len(img.Env) == 0 || img.Env[0] != defaultPath {
		t.Errorf("env = %q", img.Env)
	}
	if got := inImage(t, img.RootFS, "/bin/sh", "echo ok"); got != "ok" {
		t.Errorf("sh said %q", got)
	}
	if got := inImage(t, img.RootFS, "/bin/sh", "id -u user; cd ~user && pwd; ls /usr/bin/env"); got != "1000\n/home/user\n/usr/bin/env" {
		t.Errorf("user check said %q", got)
	}
	// busybox 1.35 has no nohup and its wget segfaults on -T: stasis-applets
	// provides both, and sh (bash) finds them on $PATH, where busybox's sh
	// would run its own applets. (Real sandboxes run them in test/e2e.)
	if got := inImage(t, img.RootFS, "/bin/sh", "readlink /bin/sh; for c in nohup wget; do command -v $c; readlink /usr/bin/$c; done; nohup echo via-nohup; wget --help | head -1"); got != "bash\n/usr/bin/nohup\n/bin/stasis-applets\n/usr/bin/wget\n/bin/stasis-applets\nvia-nohup\nusage: wget [-cqS] [--spider] [-O FILE] [-o LOGFILE] [--header STR]" {
		t.Errorf("applets check said %q", got)
	}
	if _, err := os.Stat(filepath.Join(img.RootFS, hostCACerts)); err != nil {
		t.Errorf("CA certificates for wget: %v", err)
	}
	passwd, err := os.ReadFile(filepath.Join(img.RootFS, "etc/passwd"))
	if err != nil || !strings.Contains(string(passwd), "user:x:1000:1000:") {
		t.Errorf("passwd = %q, %v", passwd, err)
	}
	checkAgentMountPoint(t, img.RootFS)
	for path, want := range map[string]os.FileMode{
		"tmp":       os.ModeDir | os.ModeSticky | 0o777,
		"home/user": os.ModeDir | 0o755,
		"proc":      os.ModeDir | 0o555,
		"sys":       os.ModeDir | 0o555,
		"dev":       os.ModeDir | 0o755,
		".stasis":   os.ModeDir | 0o755,
	} {
		fi, err := os.Lstat(filepath.Join(img.RootFS, path))
		if err != nil {
			t.Errorf("%s: %v", path, err)
		} else if fi.Mode() != want {
			t.Errorf("%s: mode %v, want %v", path, fi.Mode(), want)
		}
	}
	if fi, err := os.Stat(filepath.Join(img.RootFS, "home/user")); err == nil {
		if st := fi.Sys().(*syscall.Stat_t); st.Uid != 1000 || st.Gid != 1000 {
			t.Errorf("/home/user owned by %d:%d", st.Uid, st.Gid)
		}
	}
	for _, f := range []string{"etc/group", "etc/hostname", "etc/hosts", "etc/resolv.conf"} {
		if _, err := os.Stat(filepath.Join(img.RootFS, f)); err != nil {
			t.Error(err)
		}
	}

	// A second Ensure and a Get use the built image.
	img2, err := m.Ensure(context.Background(), "stasis/minimal", &progress)
	if err != nil || img2.RootFS != img.RootFS || !img2.BuiltAt.Equal(img.BuiltAt) {
		t.Errorf("second Ensure = %+v, %v", img2, err)
	}
	if _, err := m.Get("stasis/minimal"); err != nil {
		t.Errorf("Get: %v", err)
	}
	if n := strings.Count(progress.String(), "building into"); n != 1 {
		t.Errorf("built %d times", n)
	}
}

func TestConcurrentEnsureBuildsOnce(t *testing.T) {
	testenv.RequireRoot(t)
	m := NewManager(t.TempDir())
	var progress syncBuffer
	var wg sync.WaitGroup
	imgs := make([]*Image, 4)
	errs := make([]error, len(imgs))
	for i := range imgs {
		wg.Go(func() {
			// Separate Managers, as separate processes would have.
			imgs[i], errs[i] = NewManager(m.Dir()).Ensure(context.Background(), "stasis/minimal", &progress)
		})
	}
	wg.Wait()
	for i := range imgs {
		if errs[i] != nil {
			t.Fatal(errs[i])
		}
		if imgs[i].RootFS != imgs[0].RootFS {
			t.Errorf("different roots: %s, %s", imgs[i].RootFS, imgs[0].RootFS)
		}
	}
	if n := strings.Count(progress.String(), "building into"); n != 1 {
		t.Errorf("built %d times:\n%s", n, progress.String())
	}
}

// TestConcurrentProcesses builds from two processes (this test binary,
// re-executed) sharing one images directory.
func TestConcurrentProcesses(t *testing.T) {
	testenv.RequireRoot(t)
	if dir := os.Getenv("STASIS_IMAGES_TEST_HELPER_DIR"); dir != "" {
		img, err := NewManager(dir).Ensure(context.Background(), "stasis/minimal", os.Stdout)
		if err != nil {
			fmt.Println("helper error:", err)
			os.Exit(1)
		}
		fmt.Println("helper rootfs:", img.RootFS)
		return
	}
	dir := t.TempDir()
	var outs [2]bytes.Buffer
	var cmds [2]*exec.Cmd
	for i := range cmds {
		cmds[i] = exec.Command(os.Args[0], "-test.run=^TestConcurrentProcesses$", "-test.count=1")
		cmds[i].Env = append(os.Environ(), "STASIS_IMAGES_TEST_HELPER_DIR="+dir)
		cmds[i].Stdout, cmds[i].Stderr = &outs[i], &outs[i]
		if err := cmds[i].Start(); err != nil {
			t.Fatal(err)
		}
	}
	for i := range cmds {
		if err := cmds[i].Wait(); err != nil {
			t.Fatalf("helper %d: %v\n%s", i, err, outs[i].String())
		}
	}
	all := outs[0].String() + outs[1].String()
	if n := strings.Count(all, "building into"); n != 1 {
		t.Errorf("built %d times:\n%s", n, all)
	}
	final := NewManager(dir).finalDir(recipes[0])
	if n := strings.Count(all, "helper rootfs: "+filepath.Join(final, "rootfs")); n != 2 {
		t.Errorf("helpers did not both get the image:\n%s", all)
	}
}

func TestCrashedBuildIgnoredAndCleaned(t *testing.T) {
	testenv.RequireRoot(t)
	dir := t.TempDir()
	m := NewManager(dir)
	r, _ := lookup("stasis/minimal")

	// A complete-looking build that never got renamed into place, with a
	// filesystem still mounted inside it, as a killed debootstrap leaves.
	crashed := filepath.Join(dir, m.tmpPrefix(r)+"crash1")
	rootfs := filepath.Join(crashed, "rootfs")
	if err := os.MkdirAll(filepath.Join(rootfs, "proc"), 0o755); err != nil {
		t.Fatal(err)
	}
	md, _ := json.Marshal(metadata{Format: formatVersion, Name: r.name, Recipe: r.version, Workdir: "/"})
	os.WriteFile(filepath.Join(crashed, "image.json"), md, 0o644)
	os.MkdirAll(filepath.Join(rootfs, ".stasis"), 0o755)
	os.WriteFile(filepath.Join(rootfs, AgentMountPoint), nil, 0o755)
	keep := t.TempDir() // outside the images dir: must survive the cleanup
	os.WriteFile(filepath.Join(keep, "precious"), []byte("x"), 0o644)
	if err := syscall.Mount(keep, filepath.Join(rootfs, "proc"), "", syscall.MS_BIND, ""); err != nil {
		t.Fatalf("bind mount: %v", err)
	}
	t.Cleanup(func() { syscall.Unmount(filepath.Join(rootfs, "proc"), syscall.MNT_DETACH) })

	if _, err := m.Get("stasis/minimal"); !errors.Is(err, ErrNotBuilt) {
		t.Fatalf("Get with only a crashed build: err = %v, want ErrNotBuilt", err)
	}
	var progress syncBuffer
	img, err := m.Ensure(context.Background(), "stasis/minimal", &progress)
	if err != nil {
		t.Fatal(err)
	}
	if strings.HasPrefix(img.RootFS, crashed) {
		t.Errorf("used the crashed build: %s", img.RootFS)
	}
	if _, err := os.Lstat(crashed); !os.IsNotExist(err) {
		t.Errorf("crashed build dir still there: %v", err)
	}
	if _, err := os.Stat(filepath.Join(keep, "precious")); err != nil {
		t.Errorf("cleanup reached through a mount: %v", err)
	}
	if len(mountsUnder(dir)) != 0 {
		t.Errorf("mounts left under %s: %v", dir, mountsUnder(dir))
	}
	if !strings.Contains(progress.String(), "removing leftover") {
		t.Errorf("progress does not mention the cleanup:\n%s", progress.String())
	}
	left, _ := filepath.Glob(filepath.Join(dir, ".tmp-*"))
	if len(left) != 0 {
		t.Errorf("temp dirs left: %v", left)
	}
}

func TestStaleRecipeRebuilds(t *testing.T) {
	testenv.RequireRoot(t)
	dir := t.TempDir()
	m := NewManager(dir)
	img, err := m.Ensure(context.Background(), "stasis/minimal", nil)
	if err != nil {
		t.Fatal(err)
	}
	// Pretend the image was built by an older recipe of the same version dir.
	r, _ := lookup("stasis/minimal")
	mdPath := filepath.Join(m.finalDir(r), "image.json")
	b, _ := os.ReadFile(mdPath)
	var md metadata
	json.Unmarshal(b, &md)
	md.Recipe = r.version - 1
	b, _ = json.Marshal(md)
	os.WriteFile(mdPath, b, 0o644)
	if _, err := m.Get("stasis/minimal"); !errors.Is(err, ErrNotBuilt) {
		t.Fatalf("Get of a stale image: err = %v, want ErrNotBuilt", err)
	}
	img2, err := m.Ensure(context.Background(), "stasis/minimal", nil)
	if err != nil {
		t.Fatal(err)
	}
	if img2.RootFS != img.RootFS {
		t.Errorf("rootfs moved: %s -> %s", img.RootFS, img2.RootFS)
	}
	if got := inImage(t, img2.RootFS, "/bin/sh", "echo ok"); got != "ok" {
		t.Errorf("sh said %q", got)
	}
	left, _ := filepath.Glob(filepath.Join(dir, ".tmp-*"))
	if len(left) != 0 {
		t.Errorf("temp dirs left: %v", left)
	}
}

func TestEnsureWaitHonoursContext(t *testing.T) {
	dir := t.TempDir()
	unlock, err := fsutil.LockFile(context.Background(), filepath.Join(dir, ".stasis-minimal.lock"), func() {})
	if err != nil {
		t.Fatal(err)
	}
	defer unlock()
	ctx, cancel := context.WithTimeout(context.Background(), 300*time.Millisecond)
	defer cancel()
	var progress syncBuffer
	_, err = NewManager(dir).Ensure(ctx, "stasis/minimal", &progress)
	if !errors.Is(err, context.DeadlineExceeded) {
		t.Errorf("err = %v, want DeadlineExceeded", err)
	}
	if !strings.Contains(progress.String(), "waiting for another build") {
		t.Errorf("progress = %q", progress.String())
	}
}

func TestMirrorParsing(t *testing.T) {
	deb822 := `Types: deb
# http://snapshot.debian.org/archive/debian/20250520T000000Z
URIs: http://deb.debian.org/debian
Suites: bookworm bookworm-updates
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg

Types: deb
URIs: http://deb.debian.org/debian-security
Suites: bookworm-security
Components: main
`
	if got := parseDeb822Sources(deb822); got != "http://deb.debian.org/debian" {
		t.Errorf("deb822: %q", got)
	}
	security := "Types: deb\nURIs: http://security.debian.org/debian-security/\nSuites: bookworm-security\n"
	if got := parseDeb822Sources(security); got != "" {
		t.Errorf("deb822 security only: %q", got)
	}
	disabled := "Enabled: no\nTypes: deb\nURIs: http://a.example/debian\nSuites: bookworm\n\n" +
		"Types: deb-src deb\nURIs: file:/x https://b.example/debian/\nSuites: bookworm\n"
	if got := parseDeb822Sources(disabled); got != "https://b.example/debian" {
		t.Errorf("deb822 disabled: %q", got)
	}
	list := "# comment\ndeb-src http://src.example/debian bookworm main\n" +
		"deb [arch=amd64 signed-by=/k.gpg] http://mirror.example/debian/ bookworm main contrib\n"
	if got := parseSourcesList(list); got != "http://mirror.example/debian" {
		t.Errorf("sources.list: %q", got)
	}
	if got := parseSourcesList("deb http://deb.debian.org/debian bullseye main\n"); got != "" {
		t.Errorf("sources.list bullseye: %q", got)
	}
	if m := debianMirror(); !strings.HasPrefix(m, "http") {
		t.Errorf("debianMirror() = %q", m)
	}
}

func TestPrefixWriter(t *testing.T) {
	var b bytes.Buffer
	w := &prefixWriter{w: &b, prefix: "[x] "}
	w.Write([]byte("one\ntw"))
	w.Write([]byte("o\r\n\nthree"))
	w.Flush()
	if got := b.String(); got != "[x] one\n[x] two\n[x] three\n" {
		t.Errorf("got %q", got)
	}
}

// TestBase checks stasis/base. Building it takes minutes, so it runs against
// the shared cache in $STASIS_IMAGES_DIR when the image is there, builds it
// only when STASIS_TEST_BASE=1, and fails otherwise.
func TestBase(t *testing.T) {
	testenv.RequireRoot(t)
	dir := os.Getenv("STASIS_IMAGES_DIR")
	var img *Image
	var err error
	if dir != "" {
		img, err = NewManager(dir).Get("stasis/base")
		if err != nil && !errors.Is(err, ErrNotBuilt) {
			t.Fatal(err)
		}
	}
	if img == nil {
		if os.Getenv("STASIS_TEST_BASE") != "1" {
			t.Fatal("stasis/base is not built in $STASIS_IMAGES_DIR (" + dir + "); " +
				"run `make setup` or set STASIS_TEST_BASE=1 to build it here (takes minutes)")
		}
		if dir == "" {
			dir = t.TempDir()
		}
		var progress syncBuffer
		start := time.Now()
		img, err = NewManager(dir).Ensure(context.Background(), "stasis/base", &progress)
		if err != nil {
			t.Fatalf("%v\n%s", err, progress.String())
		}
		t.Logf("built stasis/base in %v", time.Since(start))
	}
	if img.User != "user" || img.Workdir != "/home/user" {
		t.Errorf("image = %+v", img)
	}
	if !strings.Contains(strings.Join(img.Env, " "), "LANG=C.UTF-8") {
		t.Errorf("env = %q", img.Env)
	}
	checkAgentMountPoint(t, img.RootFS)
	if got := inImage(t, img.RootFS, "/bin/bash", "echo $((6*7)) $BASH_VERSION"); !strings.HasPrefix(got, "42 5.") {
		t.Errorf("bash said %q", got)
	}
	if got := inImage(t, img.RootFS, "/bin/sh", "python3 -c 'import ssl, json; print(sum(range(10)))'"); got != "45" {
		t.Errorf("python3 said %q", got)
	}
	if got := inImage(t, img.RootFS, "/bin/sh", "curl --version | head -1"); !strings.HasPrefix(got, "curl ") {
		t.Errorf("curl said %q", got)
	}
	if got := inImage(t, img.RootFS, "/bin/sh", "id user; getent passwd user | cut -d: -f6,7; stat -c %u:%g /home/user"); got != "uid=1000(user) gid=1000(user) groups=1000(user)\n/home/user:/bin/bash\n1000:1000" {
		t.Errorf("user account: %q", got)
	}
	if got := inImage(t, img.RootFS, "/bin/sh", "command -v ps; ls /etc/ssl/certs/ca-certificates.crt"); got != "/usr/bin/ps\n/etc/ssl/certs/ca-certificates.crt" {
		t.Errorf("procps/ca-certificates: %q", got)
	}
	debs, _ := filepath.Glob(filepath.Join(img.RootFS, "var/cache/apt/archives/*.deb"))
	if len(debs) != 0 {
		t.Errorf("%d .deb files left in the apt cache", len(debs))
	}
}

// TestBaseFoldsDebootstrapOutput runs the stasis/base recipe with a stand-in
// debootstrap (the real one needs a Debian mirror) that prints what the real
// one prints, ~600 lines, and fails: progress shows a few stage lines, the
// whole output is in the log file, and the error names the file and shows
// the tail.
func TestBaseFoldsDebootstrapOutput(t *testing.T) {
	bin := t.TempDir()
	script := `#!/bin/sh
echo "I: Retrieving InRelease"
echo "I: Checking Release signature"
echo "I: Retrieving Packages"
echo "I: Resolving dependencies of required packages..."
i=0; while [ $i -lt 150 ]; do echo "I: Retrieving pkg$i 1.0"; echo "I: Validating pkg$i 1.0"; i=$((i+1)); done
echo "W: a warning the user should see"
i=0; while [ $i -lt 100 ]; do echo "I: Extracting pkg$i..."; i=$((i+1)); done
echo "I: Installing core packages..."
i=0; while [ $i -lt 100 ]; do echo "I: Unpacking pkg$i..."; echo "I: Configuring pkg$i..."; i=$((i+1)); done
echo "E: last-line-of-the-failure" >&2
exit 1
`
	if err := os.WriteFile(filepath.Join(bin, "debootstrap"), []byte(script), 0o755); err != nil {
		t.Fatal(err)
	}
	t.Setenv("PATH", bin+":"+os.Getenv("PATH"))
	dir := t.TempDir()
	var progress syncBuffer
	_, err := NewManager(dir).Ensure(context.Background(), "stasis/base", &progress)
	logPath := filepath.Join(dir, "stasis-base-debootstrap.log")
	if err == nil || !strings.Contains(err.Error(), "full log: "+logPath) || !strings.Contains(err.Error(), "E: last-line-of-the-failure") {
		t.Fatalf("error %v", err)
	}
	out := progress.String()
	for _, want := range []string{"full log: " + logPath, "debootstrap: downloading packages\n", "W: a warning the user should see\n",
		"debootstrap: extracting packages\n", "debootstrap: installing packages\n", "E: last-line-of-the-failure\n"} {
		if !strings.Contains(out, want) {
			t.Errorf("progress lacks %q:\n%s", want, out)
		}
	}
	if n := strings.Count(out, "\n"); n > 12 {
		t.Errorf("progress has %d lines, want a few:\n%s", n, out)
	}
	log, rerr := os.ReadFile(logPath)
	if rerr != nil {
		t.Fatal(rerr)
	}
	if n := strings.Count(string(log), "\n"); n != 4+300+1+100+1+200+1 || !strings.Contains(string(log), "I: Validating pkg149 1.0\n") {
		t.Errorf("log has %d lines:\n%.300s", n, log)
	}
}

// Without stasis-applets, stasis/minimal is not built half-way: the build
// fails and says how to get the binary.
func TestMinimalNeedsApplets(t *testing.T) {
	testenv.RequireRoot(t)
	dir := t.TempDir()
	_, err := NewManager(dir, WithApplets(filepath.Join(dir, "missing"))).Ensure(context.Background(), "stasis/minimal", nil)
	if err == nil || !strings.Contains(err.Error(), "stasis-applets") || !strings.Contains(err.Error(), "make build") {
		t.Fatalf("Ensure without stasis-applets: %v", err)
	}
	if _, err := NewManager(dir).Get("stasis/minimal"); !errors.Is(err, ErrNotBuilt) {
		t.Fatalf("after the failed build Get = %v, want ErrNotBuilt", err)
	}
	dynamic := filepath.Join(dir, "dynamic")
	if err := copyFile("/bin/ls", dynamic, 0o755); err != nil { // coreutils: dynamically linked
		t.Fatal(err)
	}
	_, err = NewManager(dir, WithApplets(dynamic)).Ensure(context.Background(), "stasis/minimal", nil)
	if err == nil || !strings.Contains(err.Error(), "dynamically linked") {
		t.Fatalf("Ensure with a dynamic stasis-applets: %v", err)
	}
}
