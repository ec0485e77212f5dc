package main

import (
	"bufio"
	"bytes"
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"net"
	"net/http"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/stasis-sandbox/stasis/internal/runtime/gvisor"
)

// server is a stasisd the harness started for itself: free loopback port,
// temporary data dir, its own link-local range and netns prefix.
type server struct {
	URL     string
	E2BURL  string // its E2B listener ("" if this stasisd has none)
	apiKey  string
	dataDir string
	runsc   string
	cmd     *exec.Cmd
	logPath string
	exited  chan struct{}
	http    *http.Client
}

// startServer starts stasisd and waits until /health answers.
func startServer(ctx context.Context, cfg *Config, subnet, netnsPrefix string, extra ...string) (*server, error) {
	return startServerEnv(ctx, cfg, nil, subnet, netnsPrefix, extra...)
}

// startServerEnv is startServer with env added to stasisd's environment.
func startServerEnv(ctx context.Context, cfg *Config, env []string, subnet, netnsPrefix string, extra ...string) (*server, error) {
	dataDir, err := os.MkdirTemp(cfg.TempDir, "stasis-bench-data-")
	if err != nil {
		return nil, err
	}
	addr, err := freeAddr()
	if err != nil {
		return nil, err
	}
	s := &server{
		URL:     "http://" + addr,
		apiKey:  "ss_bench_" + randomHex(16),
		dataDir: dataDir,
		runsc:   cfg.Runsc,
		logPath: filepath.Join(dataDir, "stasisd.log"),
		exited:  make(chan struct{}),
		http: &http.Client{Transport: &http.Transport{
			Proxy:               nil,
			MaxIdleConns:        64,
			MaxIdleConnsPerHost: 64,
			IdleConnTimeout:     time.Minute,
			DisableCompression:  true,
		}},
	}
	logf, err := os.Create(s.logPath)
	if err != nil {
		return nil, err
	}
	args := []string{"serve", "--listen", addr, "--data-dir", dataDir,
		"--images-dir", cfg.ImagesDir, "--agent", cfg.Agent, "--runsc", cfg.Runsc,
		"--subnet", subnet, "--netns-prefix", netnsPrefix, "--log-level", "info"}
	if serverHasFlag(cfg.Stasisd, "e2b-listen") {
		// The bench runs several servers at once: none takes E2B's default
		// port; each gets a free one (the e2b phase speaks to it).
		e2bAddr, err := freeAddr()
		if err != nil {
			return nil, err
		}
		args = append(args, "--e2b-listen", e2bAddr)
		s.E2BURL = "http://" + e2bAddr
	}
	args = append(args, extra...)
	s.cmd = exec.Command(cfg.Stasisd, args...)
	s.cmd.Env = append(append(os.Environ(), "STASIS_API_KEY="+s.apiKey), env...)
	s.cmd.Stdout, s.cmd.Stderr = logf, logf
	// Its own process group: a ^C to the harness must not kill stasisd
	// before the harness has deleted the sandboxes.
	s.cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	if err := s.cmd.Start(); err != nil {
		logf.Close()
		return nil, fmt.Errorf("start stasisd: %w", err)
	}
	go func() { s.cmd.Wait(); logf.Close(); close(s.exited) }()
	deadline := time.Now().Add(60 * time.Second)
	for {
		select {
		case <-s.exited:
			return nil, fmt.Errorf("stasisd exited during start:\n%s", s.logTail(30))
		default:
		}
		req, _ := http.NewRequestWithContext(ctx, "GET", s.URL+"/health", nil)
		if resp, err := s.http.Do(req); err == nil {
			resp.Body.Close()
			if resp.StatusCode == http.StatusOK {
				return s, nil
			}
		}
		if time.Now().After(deadline) || ctx.Err() != nil {
			s.stop()
			return nil, fmt.Errorf("stasisd did not become healthy:\n%s", s.logTail(30))
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// serverHasFlag reports whether stasisd serve knows flag (its usage names it).
func serverHasFlag(stasisd, flag string) bool {
	out, _ := exec.Command(stasisd, "serve", "--help").CombinedOutput()
	return strings.Contains(string(out), "-"+flag+" ")
}

// logTail returns the last n lines stasisd printed.
func (s *server) logTail(n int) string {
	b, _ := os.ReadFile(s.logPath)
	lines := strings.Split(strings.TrimRight(string(b), "\n"), "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.Join(lines, "\n")
}

// logLines returns stasisd's log lines containing substr.
func (s *server) logLines(substr string) []string {
	f, err := os.Open(s.logPath)
	if err != nil {
		return nil
	}
	defer f.Close()
	var out []string
	sc := bufio.NewScanner(f)
	sc.Buffer(make([]byte, 1<<20), 1<<20)
	for sc.Scan() {
		if strings.Contains(sc.Text(), substr) {
			out = append(out, sc.Text())
		}
	}
	return out
}

// stop deletes every sandbox, stops stasisd and removes its data dir.
func (s *server) stop() {
	select {
	case <-s.exited:
	default:
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
		var list []sandboxJSON
		if err := s.do(ctx, "GET", "/sandboxes", nil, &list); err == nil {
			var wg sync.WaitGroup
			sem := make(chan struct{}, 4)
			for _, sb := range list {
				wg.Add(1)
				sem <- struct{}{}
				go func() {
					defer wg.Done()
					defer func() { <-sem }()
					s.do(ctx, "DELETE", "/sandboxes/"+sb.ID, nil, nil)
				}()
			}
			wg.Wait()
		}
		cancel()
		s.cmd.Process.Signal(syscall.SIGTERM)
		select {
		case <-s.exited:
		case <-time.After(30 * time.Second):
			s.cmd.Process.Signal(syscall.SIGKILL)
			<-s.exited
		}
	}
	// Anything the API could not delete: kill it with runsc directly.
	root := filepath.Join(s.dataDir, "runsc")
	forceDeleteAll(s.runsc, root)
	unmountUnder(s.dataDir)
	os.RemoveAll(s.dataDir)
}

// sandboxJSON is the part of the API's sandbox object the harness reads.
type sandboxJSON struct {
	ID          string `json:"id"`
	Status      string `json:"status"`
	AccessToken string `json:"access_token"`
	Error       string `json:"error"`
	Node        string `json:"node"` // the owner node, in a cluster
	Usage       struct {
		SnapshotBytes int64 `json:"snapshot_bytes"`
	} `json:"usage"`
	Pause *pauseJSON `json:"pause"`
}

// pauseJSON is a paused sandbox's pause state.
type pauseJSON struct {
	Durable  bool `json:"durable"`
	InMemory bool `json:"in_memory"`
	Portable bool `json:"portable"` // in the object store (a cluster)
}

// apiError is a non-2xx answer.
type apiError struct {
	Status int
	Body   string
}

func (e *apiError) Error() string {
	return fmt.Sprintf("HTTP %d: %s", e.Status, strings.TrimSpace(e.Body))
}

// do sends a control-plane request and decodes the JSON answer into out.
func (s *server) do(ctx context.Context, method, path string, body, out any) error {
	var rd io.Reader
	if body != nil {
		b, err := json.Marshal(body)
		if err != nil {
			return err
		}
		rd = bytes.NewReader(b)
	}
	req, err := http.NewRequestWithContext(ctx, method, s.URL+path, rd)
	if err != nil {
		return err
	}
	req.Header.Set("X-API-Key", s.apiKey)
	req.Header.Set("Content-Type", "application/json")
	return s.send(req, out)
}

func (s *server) send(req *http.Request, out any) error {
	resp, err := s.http.Do(req)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	data, err := io.ReadAll(resp.Body)
	if err != nil {
		return err
	}
	if resp.StatusCode >= 300 {
		return &apiError{Status: resp.StatusCode, Body: string(data)}
	}
	if out != nil && len(data) > 0 {
		return json.Unmarshal(data, out)
	}
	return nil
}

// box is a sandbox the harness created, with its current access token.
type box struct {
	s     *server
	ID    string
	Token string
}

type createReq struct {
	Name         string `json:"name"`
	FromTemplate string `json:"from_template"`
	MemoryMiB    int    `json:"memory_mib,omitempty"`
}

// create makes a sandbox and returns once the API answers (the agent is
// ready by then).
func (s *server) create(ctx context.Context, name, template string, memMiB int) (*box, error) {
	var sb sandboxJSON
	if err := s.do(ctx, "POST", "/sandboxes", createReq{Name: name, FromTemplate: template, MemoryMiB: memMiB}, &sb); err != nil {
		return nil, fmt.Errorf("create %s from %s: %w", name, template, err)
	}
	if sb.Status != "active" || sb.AccessToken == "" {
		return nil, fmt.Errorf("create %s: got status %q (error %q)", name, sb.Status, sb.Error)
	}
	return &box{s: s, ID: sb.ID, Token: sb.AccessToken}, nil
}

func (b *box) delete(ctx context.Context) error {
	return b.s.do(ctx, "DELETE", "/sandboxes/"+b.ID, nil, nil)
}

func (b *box) get(ctx context.Context) (*sandboxJSON, error) {
	var sb sandboxJSON
	err := b.s.do(ctx, "GET", "/sandboxes/"+b.ID, nil, &sb)
	return &sb, err
}

func (b *box) pause(ctx context.Context) error {
	var sb sandboxJSON
	if err := b.s.do(ctx, "POST", "/sandboxes/"+b.ID+"/pause", nil, &sb); err != nil {
		return fmt.Errorf("pause %s: %w", b.ID, err)
	}
	if sb.Status != "paused" {
		return fmt.Errorf("pause %s: status %q after pause (error %q)", b.ID, sb.Status, sb.Error)
	}
	return nil
}

// waitPaused polls the paused sandbox until cond holds of its pause state.
func (b *box) waitPaused(ctx context.Context, what string, cond func(pauseJSON) bool) error {
	deadline := time.Now().Add(2 * time.Minute)
	for {
		sb, err := b.get(ctx)
		if err != nil {
			return err
		}
		if sb.Status != "paused" || sb.Pause == nil {
			return fmt.Errorf("%s: waiting until %s: status %q", b.ID, what, sb.Status)
		}
		if cond(*sb.Pause) {
			return nil
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("%s: not %s after 2 minutes", b.ID, what)
		}
		time.Sleep(2 * time.Millisecond)
	}
}

// waitDurable waits until the paused sandbox's snapshot is sealed on disk.
func (b *box) waitDurable(ctx context.Context) error {
	return b.waitPaused(ctx, "durable", func(p pauseJSON) bool { return p.Durable })
}

// waitDiskOnly waits until the paused sandbox is on disk only (no longer
// frozen in RAM), so that the next resume restores from disk.
func (b *box) waitDiskOnly(ctx context.Context) error {
	return b.waitPaused(ctx, "on disk only", func(p pauseJSON) bool { return p.Durable && !p.InMemory })
}

// waitPortable waits until the paused sandbox is on disk only and its
// snapshot is in the object store.
func (b *box) waitPortable(ctx context.Context) error {
	return b.waitPaused(ctx, "portable", func(p pauseJSON) bool { return p.Durable && !p.InMemory && p.Portable })
}

// snapshotGone fails while the snapshot the sandbox was last resumed from
// is still on disk: stasisd removes it once the resume no longer reads it,
// after a lazy restore once the memory is loaded and checked.
func (b *box) snapshotGone() error {
	ents, err := os.ReadDir(filepath.Join(b.s.dataDir, "snapshots", b.ID))
	if err != nil && !errors.Is(err, fs.ErrNotExist) {
		return err
	}
	if len(ents) > 0 {
		return fmt.Errorf("sandbox %s: snapshot %s still on disk", b.ID, ents[0].Name())
	}
	return nil
}

func (b *box) resume(ctx context.Context) error {
	var sb sandboxJSON
	if err := b.s.do(ctx, "POST", "/sandboxes/"+b.ID+"/resume", nil, &sb); err != nil {
		return fmt.Errorf("resume %s: %w", b.ID, err)
	}
	if sb.Status != "active" || sb.AccessToken == "" {
		return fmt.Errorf("resume %s: status %q after resume (error %q)", b.ID, sb.Status, sb.Error)
	}
	b.Token = sb.AccessToken
	return nil
}

func (b *box) dataReq(ctx context.Context, method, path string, body io.Reader) (*http.Request, error) {
	req, err := http.NewRequestWithContext(ctx, method, b.s.URL+path, body)
	if err != nil {
		return nil, err
	}
	req.Header.Set("X-Superserve-Sandbox-Id", b.ID)
	req.Header.Set("X-Access-Token", b.Token)
	return req, nil
}

type execResult struct {
	Stdout   string `json:"stdout"`
	Stderr   string `json:"stderr"`
	ExitCode int    `json:"exit_code"`
}

// exec runs command with POST /exec and fails unless it exits 0.
func (b *box) exec(ctx context.Context, command string) (*execResult, error) {
	body, _ := json.Marshal(map[string]string{"command": command})
	req, err := b.dataReq(ctx, "POST", "/exec", bytes.NewReader(body))
	if err != nil {
		return nil, err
	}
	req.Header.Set("Content-Type", "application/json")
	var res execResult
	if err := b.s.send(req, &res); err != nil {
		return nil, fmt.Errorf("exec %q in %s: %w", command, b.ID, err)
	}
	if res.ExitCode != 0 {
		return &res, fmt.Errorf("exec %q in %s: exit %d: %s", command, b.ID, res.ExitCode, strings.TrimSpace(res.Stderr))
	}
	return &res, nil
}

func (b *box) writeFile(ctx context.Context, path string, data []byte) error {
	req, err := b.dataReq(ctx, "POST", "/files?path="+url.QueryEscape(path), bytes.NewReader(data))
	if err != nil {
		return err
	}
	req.Header.Set("Content-Type", "application/octet-stream")
	if err := b.s.send(req, nil); err != nil {
		return fmt.Errorf("write %s in %s: %w", path, b.ID, err)
	}
	return nil
}

// readFile downloads path and returns how many bytes came. It reads as the
// raw side's pipe is read (os/exec's copy into a countWriter: 32 KiB at a
// time), not with io.Discard's 8 KiB reads, four times the system calls.
func (b *box) readFile(ctx context.Context, path string) (int64, error) {
	req, err := b.dataReq(ctx, "GET", "/files?path="+url.QueryEscape(path), nil)
	if err != nil {
		return 0, err
	}
	resp, err := b.s.http.Do(req)
	if err != nil {
		return 0, err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		data, _ := io.ReadAll(resp.Body)
		return 0, &apiError{Status: resp.StatusCode, Body: string(data)}
	}
	var cw countWriter
	return io.Copy(&cw, resp.Body)
}

// sandboxPid returns the host PID of the runsc-sandbox process of id.
func (s *server) sandboxPid(id string) (int, error) {
	pids := gvisor.RunscProcesses(filepath.Join(s.dataDir, "runsc"), id)
	for _, p := range pids {
		if strings.HasPrefix(procCmdline(p), "runsc-sandbox") {
			return p, nil
		}
	}
	return 0, fmt.Errorf("no runsc-sandbox process for %s (runsc processes: %v)", id, pids)
}

func freeAddr() (string, error) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return "", err
	}
	defer ln.Close()
	return ln.Addr().String(), nil
}

func randomHex(n int) string {
	b := make([]byte, n)
	rand.Read(b)
	return hex.EncodeToString(b)
}

// errorsAs is errors.As for *apiError.
func isAPIStatus(err error, status int) bool {
	var ae *apiError
	return errors.As(err, &ae) && ae.Status == status
}
