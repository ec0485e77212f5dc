package images

import (
	"bufio"
	"bytes"
	"context"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"syscall"
	"time"
)

const (
	debianSuite    = "bookworm"
	fallbackMirror = "http://deb.debian.org/debian"
	basePackages   = "bash,coreutils,python3,curl,ca-certificates,procps"
)

// buildBase builds stasis/base: a minimal Debian bookworm made by debootstrap,
// with a "user" account (uid 1000) that commands run as by default.
func buildBase(ctx context.Context, rootfs string, _ inputs, progress io.Writer) (config, error) {
	return buildDebian(ctx, rootfs, "stasis-base", basePackages, progress)
}

// buildDebian builds a Debian bookworm image with debootstrap (minbase and
// packages, a comma-separated list, with their dependencies) and a "user"
// account (uid 1000) that commands run as by default. The debootstrap log
// is DIR/LOGNAME-debootstrap.log.
func buildDebian(ctx context.Context, rootfs, logName, packages string, progress io.Writer) (config, error) {
	debootstrap, err := lookPath("debootstrap")
	if err != nil {
		return config{}, fmt.Errorf("debootstrap not found (install it with `apt-get install debootstrap`, or run `make setup`): %w", err)
	}
	mirror := debianMirror()
	// debootstrap prints ~600 lines, one per package and step: they go to a
	// log file next to the image (it outlives a failed build), and progress
	// gets one line per stage. rootfs is DIR/.tmp-SLUG-*/rootfs.
	logPath := filepath.Join(filepath.Dir(filepath.Dir(rootfs)), logName+"-debootstrap.log")
	logFile, err := os.Create(logPath)
	if err != nil {
		return config{}, fmt.Errorf("debootstrap log: %w", err)
	}
	defer logFile.Close()
	fmt.Fprintf(progress, "debootstrap %s from %s (takes a minute or more; full log: %s)\n", debianSuite, mirror, logPath)

	cmd := exec.CommandContext(ctx, debootstrap,
		"--variant=minbase", "--include="+packages, debianSuite, rootfs, mirror)
	cmd.Env = buildEnv()
	stages := &stageWriter{w: progress, start: time.Now()}
	tail := &tailWriter{w: stages, max: 30}
	out := io.MultiWriter(logFile, tail)
	cmd.Stdout, cmd.Stderr = out, out // the same writer: one copying goroutine
	cmd.SysProcAttr = &syscall.SysProcAttr{
		// A private mount namespace: the /proc and /sys that debootstrap
		// mounts inside the target vanish with it, even if it is killed.
		Unshareflags: syscall.CLONE_NEWNS,
		Setpgid:      true,
		Pdeathsig:    syscall.SIGKILL,
	}
	cmd.Cancel = func() error { return syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL) }
	cmd.WaitDelay = 10 * time.Second
	err = cmd.Run()
	tail.flush()
	if err != nil {
		if ctx.Err() != nil {
			return config{}, ctx.Err()
		}
		msg := tail.tail()
		if log, rerr := os.ReadFile(filepath.Join(rootfs, "debootstrap/debootstrap.log")); rerr == nil {
			msg = lastLines(string(log), 15)
		}
		return config{}, fmt.Errorf("debootstrap failed: %w (full log: %s); its last lines:\n%s", err, logPath, msg)
	}
	stages.done()

	fmt.Fprintf(progress, "adding user account \"user\" (uid 1000)\n")
	if err := chrootRun(ctx, rootfs, "/usr/sbin/useradd",
		"--create-home", "--uid", "1000", "--user-group", "--shell", "/bin/bash", "user"); err != nil {
		return config{}, err
	}
	home := filepath.Join(rootfs, "home/user")
	if err := os.Chown(home, 1000, 1000); err != nil {
		return config{}, err
	}
	if err := os.Chmod(home, 0o755); err != nil {
		return config{}, err
	}

	// Host-specific files that debootstrap copied from the host.
	for _, f := range []struct{ path, content string }{
		{"etc/hostname", "stasis\n"},
		{"etc/hosts", hostsFile},
		{"etc/resolv.conf", ""},
	} {
		p := filepath.Join(rootfs, f.path)
		os.Remove(p) // may be a symlink
		if err := writeFile(p, f.content, 0o644); err != nil {
			return config{}, err
		}
	}

	fmt.Fprintf(progress, "cleaning apt caches\n")
	if err := cleanApt(rootfs); err != nil {
		return config{}, err
	}
	return config{
		User:    "user",
		Workdir: "/home/user",
		Env:     []string{defaultPath, "LANG=C.UTF-8"},
	}, nil
}

// cleanApt removes downloaded packages and package lists from an image, as
// Debian's own container images do; `apt-get update` brings the lists back.
func cleanApt(rootfs string) error {
	for _, pattern := range []string{
		"var/cache/apt/archives/*.deb",
		"var/cache/apt/archives/partial/*",
		"var/cache/apt/*.bin",
		"var/lib/apt/lists/*_*",
		"var/lib/apt/lists/partial/*",
		"var/log/apt/*",
	} {
		matches, err := filepath.Glob(filepath.Join(rootfs, pattern))
		if err != nil {
			return err
		}
		for _, m := range matches {
			if err := os.RemoveAll(m); err != nil {
				return err
			}
		}
	}
	return nil
}

// chrootRun runs an image's own program chrooted into the image.
func chrootRun(ctx context.Context, rootfs, prog string, args ...string) error {
	cmd := exec.CommandContext(ctx, prog, args...)
	cmd.Env = []string{defaultPath, "LC_ALL=C", "HOME=/root"}
	cmd.Dir = "/"
	cmd.SysProcAttr = &syscall.SysProcAttr{Chroot: rootfs}
	if out, err := cmd.CombinedOutput(); err != nil {
		return fmt.Errorf("chroot %s %s %s: %w: %s", rootfs, prog, strings.Join(args, " "), err, bytes.TrimSpace(out))
	}
	return nil
}

// buildEnv is the environment for debootstrap: the caller's (keeping proxy
// settings) with a PATH that has the sbin directories and a plain locale.
func buildEnv() []string {
	var env []string
	for _, kv := range os.Environ() {
		k, _, _ := strings.Cut(kv, "=")
		if k == "PATH" || k == "LANG" || k == "LANGUAGE" || strings.HasPrefix(k, "LC_") {
			continue
		}
		env = append(env, kv)
	}
	return append(env, defaultPath, "LC_ALL=C", "DEBIAN_FRONTEND=noninteractive")
}

// lookPath finds a program in PATH or in the sbin directories, which a
// non-login root shell may lack.
func lookPath(prog string) (string, error) {
	if p, err := exec.LookPath(prog); err == nil {
		return p, nil
	}
	for _, dir := range []string{"/usr/sbin", "/sbin", "/usr/local/sbin"} {
		p := filepath.Join(dir, prog)
		if fi, err := os.Stat(p); err == nil && fi.Mode().IsRegular() && fi.Mode()&0o111 != 0 {
			return p, nil
		}
	}
	return "", exec.ErrNotFound
}

// debianMirror returns the Debian mirror the host's apt uses for bookworm,
// or deb.debian.org. STASIS_DEBIAN_MIRROR overrides it.
func debianMirror() string {
	if m := os.Getenv("STASIS_DEBIAN_MIRROR"); m != "" {
		return m
	}
	if m := mirrorFromSources("/etc/apt/sources.list", "/etc/apt/sources.list.d"); m != "" {
		return m
	}
	return fallbackMirror
}

// mirrorFromSources reads apt sources in both formats (one-line .list files
// and deb822 .sources files) and returns the first http(s) URI of a "deb"
// source for the bookworm suite itself (not -updates or -security).
func mirrorFromSources(listFile, dir string) string {
	files := []string{listFile}
	if matches, err := filepath.Glob(filepath.Join(dir, "*")); err == nil {
		slices.Sort(matches)
		files = append(files, matches...)
	}
	// deb822 files first: Debian 12 ships debian.sources.
	for _, f := range files {
		if strings.HasSuffix(f, ".sources") {
			if b, err := os.ReadFile(f); err == nil {
				if m := parseDeb822Sources(string(b)); m != "" {
					return m
				}
			}
		}
	}
	for _, f := range files {
		if f == listFile || strings.HasSuffix(f, ".list") {
			if b, err := os.ReadFile(f); err == nil {
				if m := parseSourcesList(string(b)); m != "" {
					return m
				}
			}
		}
	}
	return ""
}

func parseDeb822Sources(text string) string {
	for _, stanza := range strings.Split(strings.ReplaceAll(text, "\r\n", "\n"), "\n\n") {
		fields := map[string]string{}
		var last string
		for _, line := range strings.Split(stanza, "\n") {
			if strings.HasPrefix(line, "#") || strings.TrimSpace(line) == "" {
				continue
			}
			if (line[0] == ' ' || line[0] == '\t') && last != "" { // continuation
				fields[last] += " " + strings.TrimSpace(line)
				continue
			}
			k, v, ok := strings.Cut(line, ":")
			if !ok {
				continue
			}
			last = strings.ToLower(strings.TrimSpace(k))
			fields[last] = strings.TrimSpace(v)
		}
		if strings.EqualFold(fields["enabled"], "no") ||
			!slices.Contains(strings.Fields(fields["types"]), "deb") ||
			!slices.Contains(strings.Fields(fields["suites"]), debianSuite) {
			continue
		}
		for _, uri := range strings.Fields(fields["uris"]) {
			if isHTTP(uri) {
				return strings.TrimRight(uri, "/")
			}
		}
	}
	return ""
}

func parseSourcesList(text string) string {
	sc := bufio.NewScanner(strings.NewReader(text))
	for sc.Scan() {
		line, _, _ := strings.Cut(sc.Text(), "#")
		f := strings.Fields(line)
		if len(f) < 3 || f[0] != "deb" {
			continue
		}
		f = f[1:]
		if strings.HasPrefix(f[0], "[") { // options: [arch=amd64 signed-by=...]
			for len(f) > 0 && !strings.HasSuffix(f[0], "]") {
				f = f[1:]
			}
			if len(f) == 0 {
				continue
			}
			f = f[1:]
		}
		if len(f) >= 2 && isHTTP(f[0]) && f[1] == debianSuite {
			return strings.TrimRight(f[0], "/")
		}
	}
	return ""
}

func isHTTP(uri string) bool {
	return strings.HasPrefix(uri, "http://") || strings.HasPrefix(uri, "https://")
}

// debootstrapStages folds the verbs of debootstrap's "I: " lines into the
// stages a user cares about. Verbs not listed count toward the current
// stage.
var debootstrapStages = map[string]string{
	"Retrieving": "downloading packages", "Validating": "downloading packages",
	"Checking": "downloading packages", "Resolving": "downloading packages", "Found": "downloading packages",
	"Chosen": "extracting packages", "Extracting": "extracting packages",
	"Installing": "installing packages", "Unpacking": "installing packages", "Configuring": "installing packages",
}

// stageWriter turns debootstrap's output, given a line per Write, into a
// line per stage, a heartbeat while a stage lasts, and warnings and errors
// as they are.
type stageWriter struct {
	w         io.Writer
	start     time.Time
	stage     string
	n         int // lines in this stage
	lastShown time.Time
}

// stageHeartbeat is how often a long stage says it is still going.
const stageHeartbeat = 30 * time.Second

func (s *stageWriter) Write(b []byte) (int, error) {
	line := strings.TrimSpace(string(b))
	msg, ok := strings.CutPrefix(line, "I: ")
	if !ok { // W:, E: and anything unexpected
		fmt.Fprintln(s.w, line)
		return len(b), nil
	}
	verb, _, _ := strings.Cut(msg, " ")
	stage := debootstrapStages[verb]
	now := time.Now()
	switch {
	case stage != "" && stage != s.stage:
		s.stage, s.n, s.lastShown = stage, 0, now
		fmt.Fprintf(s.w, "debootstrap: %s\n", stage)
	case s.stage != "" && now.Sub(s.lastShown) >= stageHeartbeat:
		s.lastShown = now
		fmt.Fprintf(s.w, "debootstrap: %s (%d steps so far, %s elapsed)\n", s.stage, s.n, now.Sub(s.start).Round(time.Second))
	}
	s.n++
	return len(b), nil
}

func (s *stageWriter) done() {
	fmt.Fprintf(s.w, "debootstrap: done in %s\n", time.Since(s.start).Round(time.Second))
}

// tailWriter is a prefixWriter's sibling for command output: it passes
// everything on to w and remembers the last max lines for error messages.
type tailWriter struct {
	w     io.Writer
	max   int
	lines []string
	part  []byte
}

func (t *tailWriter) Write(b []byte) (int, error) {
	t.part = append(t.part, b...)
	for {
		i := bytes.IndexAny(t.part, "\r\n")
		if i < 0 {
			break
		}
		line := string(t.part[:i])
		t.part = t.part[i+1:]
		if strings.TrimSpace(line) == "" {
			continue
		}
		t.lines = append(t.lines, line)
		if len(t.lines) > t.max {
			t.lines = t.lines[1:]
		}
		if _, err := io.WriteString(t.w, line+"\n"); err != nil {
			// Keep the command running even if nobody reads progress.
			t.w = io.Discard
		}
	}
	return len(b), nil
}

// flush passes on a last, unterminated line.
func (t *tailWriter) flush() {
	if len(bytes.TrimSpace(t.part)) > 0 {
		t.Write([]byte("\n"))
	}
	t.part = nil
}

func (t *tailWriter) tail() string {
	lines := t.lines
	if len(t.part) > 0 {
		lines = append(lines, string(t.part))
	}
	return strings.Join(lines, "\n")
}

func lastLines(s string, n int) string {
	lines := strings.Split(strings.TrimRight(s, "\n"), "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.Join(lines, "\n")
}
