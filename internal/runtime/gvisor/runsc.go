package gvisor

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"regexp"
	"strings"
	"syscall"
	"time"

	"github.com/stasis-sandbox/stasis/internal/runtime"
)

// errNoContainer is returned by state when runsc knows no such container.
var errNoContainer = errors.New("no such container")

// tailLines is how much of runsc's stderr goes into a returned error.
const tailLines = 15

// runscError is a failed runsc invocation with the end of its stderr.
type runscError struct {
	args   []string
	err    error
	stderr string
}

func (e *runscError) Error() string {
	msg := fmt.Sprintf("runsc %s: %v", strings.Join(e.args, " "), e.err)
	if e.stderr != "" {
		msg += ": " + e.stderr
	}
	return msg
}

func (e *runscError) Unwrap() error { return e.err }

// runscVersionMismatch is how runsc restore says a checkpoint was taken by
// another runsc version: "runsc version does not match across checkpoint
// restore, checkpoint: X current: Y".
var runscVersionMismatch = regexp.MustCompile(`runsc version does not match across checkpoint restore, checkpoint: (\S*) current: (\S*)`)

// versionMismatch turns a failed runsc restore that refused the checkpoint's
// version into a *runtime.VersionMismatchError (wrapping err), and returns
// any other error as it is.
func versionMismatch(err error) error {
	var re *runscError
	if !errors.As(err, &re) {
		return err
	}
	m := runscVersionMismatch.FindStringSubmatch(re.stderr)
	if m == nil {
		return err
	}
	return fmt.Errorf("%w: %w", &runtime.VersionMismatchError{Snapshot: m[1], Current: m[2]}, err)
}

// tail returns the last n non-empty lines of b, joined by " | ".
func tail(b []byte, n int) string {
	lines := strings.Split(strings.TrimSpace(string(b)), "\n")
	var out []string
	for _, l := range lines {
		if l = strings.TrimSpace(l); l != "" {
			out = append(out, l)
		}
	}
	if len(out) > n {
		out = out[len(out)-n:]
	}
	s := strings.Join(out, " | ")
	if len(s) > maxTail {
		s = "..." + s[len(s)-maxTail:]
	}
	return s
}

// maxTail bounds the runsc output quoted in an error (restore's spec
// mismatch messages run to kilobytes).
const maxTail = 4096

// globalFlags come before the subcommand on every invocation.
func (d *Driver) globalFlags(id string) []string {
	f := []string{"--root=" + d.cfg.RootDir, "--platform=" + d.cfg.Platform}
	if d.cfg.DebugLogDir != "" && id != "" {
		f = append(f, "--debug", "--debug-log="+d.debugDir(id)+"/")
	}
	return f
}

// run runs runsc with the global flags and args and returns its stdout.
// runsc's stderr ends up in the returned error.
func (d *Driver) run(ctx context.Context, id string, args ...string) ([]byte, error) {
	full := append(d.globalFlags(id), args...)
	cmd := exec.CommandContext(ctx, d.cfg.Runsc, full...)
	var stdout, stderr bytes.Buffer
	cmd.Stdout = &stdout
	cmd.Stderr = &stderr
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	// None of these commands leaves children behind, but never hang on a
	// pipe some child might still hold.
	cmd.WaitDelay = 5 * time.Second
	if err := cmd.Run(); err != nil {
		return stdout.Bytes(), &runscError{args: args, err: err, stderr: tail(stderr.Bytes(), tailLines)}
	}
	return stdout.Bytes(), nil
}

// runWithConsole runs a runsc command that starts sandbox processes (run,
// create, restore). Those processes inherit runsc's stdio as the
// container's, so stdout and stderr go to the sandbox's console log (a file:
// a pipe would be held open by the sandbox for its whole life). runsc's own
// error message lands there too; the returned error quotes what the command
// appended.
func (d *Driver) runWithConsole(ctx context.Context, id string, extra []string, args ...string) error {
	console, err := os.OpenFile(d.consolePath(id), os.O_WRONLY|os.O_CREATE|os.O_APPEND, 0o600)
	if err != nil {
		return fmt.Errorf("opening console log: %w", err)
	}
	defer console.Close()
	var start int64
	if fi, err := console.Stat(); err == nil {
		start = fi.Size()
	}
	full := append(append(d.globalFlags(id), extra...), args...)
	cmd := exec.CommandContext(ctx, d.cfg.Runsc, full...)
	cmd.Stdout = console
	cmd.Stderr = console
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	if err := cmd.Run(); err != nil {
		return &runscError{args: args, err: err, stderr: tail(readFrom(d.consolePath(id), start), tailLines)}
	}
	return nil
}

// readFrom returns the content of path from offset on (at most 64 KiB of its end).
func readFrom(path string, offset int64) []byte {
	f, err := os.Open(path)
	if err != nil {
		return nil
	}
	defer f.Close()
	if fi, err := f.Stat(); err == nil && fi.Size()-offset > 64<<10 {
		offset = fi.Size() - 64<<10
	}
	if _, err := f.Seek(offset, io.SeekStart); err != nil {
		return nil
	}
	b, _ := io.ReadAll(f)
	return b
}

// containerState is the subset of `runsc state` / `runsc list --format=json`
// output the driver uses.
type containerState struct {
	ID     string `json:"id"`
	Status string `json:"status"` // created, running, paused, stopped
	Pid    int    `json:"pid"`
	Bundle string `json:"bundle"`
}

// state returns runsc's view of container id, or errNoContainer.
func (d *Driver) state(ctx context.Context, id string) (*containerState, error) {
	out, err := d.run(ctx, "", "state", id)
	if err != nil {
		var re *runscError
		if errors.As(err, &re) && strings.Contains(re.stderr, "does not exist") {
			return nil, errNoContainer
		}
		return nil, err
	}
	var st containerState
	if err := json.Unmarshal(out, &st); err != nil {
		return nil, fmt.Errorf("parsing runsc state: %w", err)
	}
	return &st, nil
}

// list returns every container runsc knows under the root dir.
func (d *Driver) list(ctx context.Context) ([]containerState, error) {
	out, err := d.run(ctx, "", "list", "--format=json")
	if err != nil {
		return nil, err
	}
	var l []containerState
	if err := json.Unmarshal(bytes.TrimSpace(out), &l); err != nil {
		return nil, fmt.Errorf("parsing runsc list: %w", err)
	}
	return l, nil
}

// runscVersion runs `runsc --version` and returns its first line.
func runscVersion(ctx context.Context, bin string) (string, error) {
	ctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	cmd := exec.CommandContext(ctx, bin, "--version")
	var out bytes.Buffer
	cmd.Stdout = &out
	cmd.Stderr = &out
	cmd.WaitDelay = time.Second
	if err := cmd.Run(); err != nil {
		return "", fmt.Errorf("%s --version: %w: %s", bin, err, tail(out.Bytes(), tailLines))
	}
	first, _, _ := strings.Cut(strings.TrimSpace(out.String()), "\n")
	v, ok := strings.CutPrefix(first, "runsc version ")
	if !ok {
		return "", fmt.Errorf("%s --version: unexpected output %q", bin, first)
	}
	return v, nil
}
