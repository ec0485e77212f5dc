package agent_test

import (
	"archive/zip"
	"bytes"
	"crypto/sha256"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"os"
	"os/user"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"testing"

	"github.com/stasis-sandbox/stasis/internal/agent"
	"github.com/stasis-sandbox/stasis/internal/agentclient"
	"github.com/stasis-sandbox/stasis/internal/agentproto"
	"github.com/stasis-sandbox/stasis/internal/testenv"
)

func readAll(t *testing.T, c *agentclient.Client, path string) ([]byte, int64) {
	t.Helper()
	rc, size, err := c.ReadFile(testCtx(t), path)
	if err != nil {
		t.Fatalf("ReadFile(%s): %v", path, err)
	}
	defer rc.Close()
	b, err := io.ReadAll(rc)
	if err != nil {
		t.Fatalf("ReadFile(%s): read: %v", path, err)
	}
	return b, size
}

func TestFilesWriteRead(t *testing.T) {
	c, _ := startAgent(t, agent.Config{})
	ctx := testCtx(t)
	dir := t.TempDir()
	p := filepath.Join(dir, "new/deeper/file.txt")
	if err := c.WriteFile(ctx, p, strings.NewReader("hello"), 5); err != nil {
		t.Fatal(err)
	}
	got, size := readAll(t, c, p)
	if string(got) != "hello" || size != 5 {
		t.Fatalf("read %q size %d", got, size)
	}
	for _, d := range []string{filepath.Join(dir, "new"), filepath.Join(dir, "new/deeper")} {
		fi, err := os.Stat(d)
		if err != nil || fi.Mode().Perm() != 0o755 {
			t.Errorf("created dir %s: %v %v", d, fi.Mode(), err)
		}
	}
	fi, _ := os.Stat(p)
	if fi.Mode().Perm() != 0o644 {
		t.Errorf("file mode %v, want 0644", fi.Mode())
	}

	// Replacing keeps the mode, leaves no temp files behind.
	os.Chmod(p, 0o755)
	if err := c.WriteFile(ctx, p, strings.NewReader("second version"), -1); err != nil {
		t.Fatal(err)
	}
	if got, _ := readAll(t, c, p); string(got) != "second version" {
		t.Fatalf("after overwrite: %q", got)
	}
	if fi, _ := os.Stat(p); fi.Mode().Perm() != 0o755 {
		t.Errorf("overwrite changed mode to %v", fi.Mode())
	}
	ents, _ := os.ReadDir(filepath.Dir(p))
	if len(ents) != 1 {
		t.Errorf("directory holds %d entries, want 1", len(ents))
	}

	// Empty file.
	if err := c.WriteFile(ctx, filepath.Join(dir, "empty"), nil, 0); err != nil {
		t.Fatal(err)
	}
	if got, size := readAll(t, c, filepath.Join(dir, "empty")); len(got) != 0 || size != 0 {
		t.Fatalf("empty file: %q size %d", got, size)
	}

	// A file that claims size 0 but has content (procfs) is read fully.
	got, size = readAll(t, c, "/proc/self/status")
	if !bytes.Contains(got, []byte("Pid:")) || size != int64(len(got)) {
		t.Fatalf("/proc/self/status: %d bytes, size %d", len(got), size)
	}
}

func TestFilesLargeStream(t *testing.T) {
	c, _ := startAgent(t, agent.Config{})
	ctx := testCtx(t)
	p := filepath.Join(t.TempDir(), "big.bin")
	const n = 20 << 20
	src := io.LimitReader(&pattern{}, n)
	h := sha256.New()
	// Unknown size: sent chunked, streamed through.
	if err := c.WriteFile(ctx, p, io.TeeReader(src, h), -1); err != nil {
		t.Fatal(err)
	}
	want := h.Sum(nil)
	rc, size, err := c.ReadFile(ctx, p)
	if err != nil {
		t.Fatal(err)
	}
	defer rc.Close()
	h.Reset()
	m, err := io.Copy(h, rc)
	if err != nil || m != n || size != n || !bytes.Equal(h.Sum(nil), want) {
		t.Fatalf("read back %d bytes (size %d), err %v, hash match %v", m, size, err, bytes.Equal(h.Sum(nil), want))
	}
}

// The agent sizes its copy buffer from the declared length: files around
// the buffer's bounds come back whole.
func TestFilesWriteDeclaredSizes(t *testing.T) {
	c, _ := startAgent(t, agent.Config{})
	ctx := testCtx(t)
	dir := t.TempDir()
	for _, n := range []int64{0, 1, 4<<10 - 1, 4 << 10, 4<<10 + 1, 300 << 10, 1 << 20, 1<<20 + 1, 3<<20 + 7} {
		p := filepath.Join(dir, fmt.Sprintf("f%d", n))
		want, err := io.ReadAll(io.LimitReader(&pattern{i: byte(n)}, n))
		if err != nil {
			t.Fatal(err)
		}
		if err := c.WriteFile(ctx, p, bytes.NewReader(want), n); err != nil {
			t.Fatalf("%d bytes: %v", n, err)
		}
		got, err := os.ReadFile(p)
		if err != nil || !bytes.Equal(got, want) {
			t.Fatalf("%d bytes: read back %d bytes, err %v, equal %v", n, len(got), err, bytes.Equal(got, want))
		}
	}
}

type pattern struct{ i byte }

func (p *pattern) Read(b []byte) (int, error) {
	for i := range b {
		b[i] = p.i
		p.i = p.i*31 + 7
	}
	return len(b), nil
}

func TestFilesOwnedByDefaultUser(t *testing.T) {
	testenv.RequireRoot(t) // to chown
	u, err := user.Lookup("nobody")
	if err != nil {
		t.Fatalf("user nobody: %v", err)
	}
	c, _ := startAgent(t, agent.Config{DefaultUser: "nobody"})
	dir := t.TempDir()
	p := filepath.Join(dir, "sub/f.txt")
	if err := c.WriteFile(testCtx(t), p, strings.NewReader("x"), 1); err != nil {
		t.Fatal(err)
	}
	uid, _ := strconv.Atoi(u.Uid)
	for _, q := range []string{p, filepath.Dir(p)} {
		fi, err := os.Stat(q)
		if err != nil {
			t.Fatal(err)
		}
		if st := fi.Sys().(*syscall.Stat_t); int(st.Uid) != uid {
			t.Errorf("%s owned by %d, want %d", q, st.Uid, uid)
		}
	}
	if fi, _ := os.Stat(dir); fi.Sys().(*syscall.Stat_t).Uid != 0 {
		t.Errorf("existing parent dir was chowned")
	}
}

func TestFilesErrors(t *testing.T) {
	c, addr := startAgent(t, agent.Config{})
	ctx := testCtx(t)
	dir := t.TempDir()
	file := filepath.Join(dir, "f")
	os.WriteFile(file, []byte("x"), 0o644)

	check := func(what string, err, want error) {
		t.Helper()
		if !errors.Is(err, want) {
			t.Errorf("%s: got %v, want %v", what, err, want)
		}
	}
	_, _, err := c.ReadFile(ctx, filepath.Join(dir, "missing"))
	check("read missing", err, agentclient.ErrNotFound)
	var ae *agentclient.Error
	if !errors.As(err, &ae) || ae.Status != 404 || !strings.Contains(ae.Message, "missing") {
		t.Errorf("read missing: %#v", err)
	}
	_, _, err = c.ReadFile(ctx, dir)
	check("read dir", err, agentclient.ErrIsDir)
	_, _, err = c.ReadFile(ctx, "relative/path")
	check("relative", err, agentclient.ErrInvalidPath)
	_, _, err = c.ReadFile(ctx, dir+"/../etc/passwd")
	check("dotdot", err, agentclient.ErrInvalidPath)
	_, _, err = c.ReadFile(ctx, "")
	check("empty", err, agentclient.ErrInvalidPath)
	_, err = c.Stat(ctx, file+"/below-a-file")
	check("stat below file", err, agentclient.ErrNotFound)
	err = c.WriteFile(ctx, dir, strings.NewReader("x"), 1)
	check("write over dir", err, agentclient.ErrIsDir)
	err = c.WriteFile(ctx, file+"/x/y", strings.NewReader("x"), 1)
	check("write below file", err, agentclient.ErrInvalidPath)
	err = c.WriteFile(ctx, "rel", strings.NewReader("x"), 1)
	check("write relative", err, agentclient.ErrInvalidPath)
	_, err = c.ZipDir(ctx, filepath.Join(dir, "missing"))
	check("zip missing", err, agentclient.ErrNotFound)

	// The error body is the documented JSON.
	resp, err := http.Get("http://" + addr + agentproto.PathFiles + "?path=" + url.QueryEscape(dir))
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != 401 {
		t.Errorf("no token: %d", resp.StatusCode)
	}
	req, _ := http.NewRequestWithContext(ctx, http.MethodGet, "http://"+addr+agentproto.PathFiles+"?path=/nonexistent-xyz", nil)
	req.Header.Set("Authorization", "Bearer "+testToken)
	resp, err = http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	var body agentproto.ErrorBody
	json.NewDecoder(resp.Body).Decode(&body)
	if resp.StatusCode != 404 || body.Error.Code != "not_found" || body.Error.Message == "" ||
		resp.Header.Get("Content-Type") != "application/json" {
		t.Errorf("404 body: %d %+v", resp.StatusCode, body)
	}
}

func TestStat(t *testing.T) {
	c, _ := startAgent(t, agent.Config{})
	dir := t.TempDir()
	p := filepath.Join(dir, "f.txt")
	os.WriteFile(p, []byte("12345"), 0o640)
	os.Chmod(p, 0o640)
	fi, err := c.Stat(testCtx(t), p)
	if err != nil {
		t.Fatal(err)
	}
	if fi.Name != "f.txt" || fi.Size != 5 || fi.IsDir || fi.Mode != 0o640 || fi.Mtime.IsZero() {
		t.Fatalf("stat file: %+v", fi)
	}
	fi, err = c.Stat(testCtx(t), dir)
	if err != nil || !fi.IsDir || fi.Name != filepath.Base(dir) {
		t.Fatalf("stat dir: %+v %v", fi, err)
	}
}

func TestZipDir(t *testing.T) {
	c, _ := startAgent(t, agent.Config{})
	root := filepath.Join(t.TempDir(), "proj")
	os.MkdirAll(filepath.Join(root, "sub/empty"), 0o755)
	os.WriteFile(filepath.Join(root, "a.txt"), []byte("A"), 0o644)
	os.WriteFile(filepath.Join(root, "sub/b.txt"), bytes.Repeat([]byte("B"), 100000), 0o600)
	os.Symlink("/etc/passwd", filepath.Join(root, "link"))
	os.Symlink("/etc", filepath.Join(root, "sub/dirlink"))
	syscall.Mkfifo(filepath.Join(root, "fifo"), 0o644)

	rc, err := c.ZipDir(testCtx(t), root)
	if err != nil {
		t.Fatal(err)
	}
	data, err := io.ReadAll(rc)
	rc.Close()
	if err != nil {
		t.Fatal(err)
	}
	zr, err := zip.NewReader(bytes.NewReader(data), int64(len(data)))
	if err != nil {
		t.Fatal(err)
	}
	var names []string
	contents := map[string]string{}
	for _, f := range zr.File {
		names = append(names, f.Name)
		if !strings.HasSuffix(f.Name, "/") {
			r, err := f.Open()
			if err != nil {
				t.Fatal(err)
			}
			b, _ := io.ReadAll(r)
			r.Close()
			contents[f.Name] = string(b)
		}
	}
	slices.Sort(names)
	want := []string{"proj/", "proj/a.txt", "proj/sub/", "proj/sub/b.txt", "proj/sub/empty/"}
	if !slices.Equal(names, want) {
		t.Fatalf("entries %q, want %q", names, want)
	}
	if contents["proj/a.txt"] != "A" || len(contents["proj/sub/b.txt"]) != 100000 {
		t.Fatalf("contents wrong")
	}
	for _, f := range zr.File {
		if f.Name == "proj/sub/b.txt" && f.Mode().Perm() != 0o600 {
			t.Errorf("b.txt mode %v", f.Mode())
		}
	}
}

func TestHealthAndAuth(t *testing.T) {
	c, addr := startAgent(t, agent.Config{})
	ctx := testCtx(t)
	h, err := c.HealthInfo(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if h.Pid != os.Getpid() || h.UptimeMs < 0 || h.Version != agentproto.Version {
		t.Fatalf("health %+v", h)
	}

	bad := agentclient.New(addr, "wrong-token")
	defer bad.CloseIdleConnections()
	if err := bad.Health(ctx); !errors.Is(err, agentclient.ErrUnauthorized) {
		t.Errorf("Health with bad token: %v", err)
	}
	if _, err := bad.Start(ctx, agentclient.ExecRequest{Command: "true"}); !errors.Is(err, agentclient.ErrUnauthorized) {
		t.Errorf("Start with bad token: %v", err)
	}
	if _, _, err := bad.ReadFile(ctx, "/etc/hostname"); !errors.Is(err, agentclient.ErrUnauthorized) {
		t.Errorf("ReadFile with bad token: %v", err)
	}
	prefix := agentclient.New(addr, testToken[:len(testToken)-1])
	defer prefix.CloseIdleConnections()
	if err := prefix.Health(ctx); !errors.Is(err, agentclient.ErrUnauthorized) {
		t.Errorf("Health with token prefix: %v", err)
	}
}

func TestRotateToken(t *testing.T) {
	c, addr := startAgent(t, agent.Config{})
	ctx := testCtx(t)
	if err := c.RotateToken(ctx, "second-token"); err != nil {
		t.Fatal(err)
	}
	if err := c.Health(ctx); err != nil {
		t.Fatalf("after rotate: %v", err)
	}
	old := agentclient.New(addr, testToken)
	defer old.CloseIdleConnections()
	if err := old.Health(ctx); !errors.Is(err, agentclient.ErrUnauthorized) {
		t.Fatalf("old token still accepted: %v", err)
	}
	if err := old.RotateToken(ctx, "hijack"); !errors.Is(err, agentclient.ErrUnauthorized) {
		t.Fatalf("rotate with old token: %v", err)
	}
	if err := c.RotateToken(ctx, ""); err == nil {
		t.Fatal("empty token accepted")
	}
}

func TestConfigFromEnv(t *testing.T) {
	t.Setenv(agent.EnvTokenSHA256, agentproto.TokenHashHex("tok"))
	t.Setenv(agent.EnvDefaultUser, "nobody")
	t.Setenv(agent.EnvDefaultWorkdir, "/work")
	t.Setenv("STASIS_SOMETHING_ELSE", "x")
	t.Setenv(agent.EnvListen, "")
	t.Setenv("KEEP_ME", "yes")
	cfg, err := agent.ConfigFromEnv()
	if err != nil {
		t.Fatal(err)
	}
	if cfg.TokenHash != agentproto.TokenHash("tok") || cfg.DefaultUser != "nobody" || cfg.DefaultWorkdir != "/work" || cfg.Listen != agent.DefaultListen {
		t.Fatalf("config %+v", cfg)
	}
	for _, kv := range append(os.Environ(), cfg.Env...) {
		if strings.HasPrefix(kv, "STASIS_") {
			t.Errorf("%s still in the environment", kv)
		}
	}
	if !slices.Contains(cfg.Env, "KEEP_ME=yes") {
		t.Error("KEEP_ME lost")
	}
	if _, err := agent.ConfigFromEnv(); err == nil {
		t.Error("no error without a token")
	}
	// The token in clear is refused: code in the sandbox could read it in
	// /proc/1/environ. So is a hash that is not one.
	t.Setenv(agent.EnvPlainToken, "tok")
	t.Setenv(agent.EnvTokenSHA256, agentproto.TokenHashHex("tok"))
	if _, err := agent.ConfigFromEnv(); err == nil || !strings.Contains(err.Error(), agent.EnvPlainToken) {
		t.Errorf("%s accepted: %v", agent.EnvPlainToken, err)
	}
	for _, bad := range []string{"tok", strings.Repeat("ab", 31), strings.Repeat("zz", 32)} {
		t.Setenv(agent.EnvTokenSHA256, bad)
		if _, err := agent.ConfigFromEnv(); err == nil {
			t.Errorf("%s=%s accepted", agent.EnvTokenSHA256, bad)
		}
	}
}

// GOMAXPROCS that stasis set for the agent alone does not reach commands;
// one the sandbox's own environment set does.
func TestConfigFromEnvAgentProcs(t *testing.T) {
	for _, own := range []bool{true, false} {
		t.Setenv(agent.EnvTokenSHA256, agentproto.TokenHashHex("tok"))
		t.Setenv("GOMAXPROCS", "1")
		if own {
			t.Setenv(agent.EnvOwnProcs, "1")
		}
		cfg, err := agent.ConfigFromEnv()
		if err != nil {
			t.Fatal(err)
		}
		if got := slices.Contains(cfg.Env, "GOMAXPROCS=1"); got == own {
			t.Errorf("marked as the agent's: %v; GOMAXPROCS in the commands' environment: %v", own, got)
		}
	}
}
