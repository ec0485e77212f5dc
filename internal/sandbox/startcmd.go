package sandbox

import (
	"context"
	"io"
	"strings"
	"time"

	"github.com/stasis-sandbox/stasis/internal/agentclient"
	"github.com/stasis-sandbox/stasis/internal/store"
)

// startLog is where a start command's output goes inside the sandbox.
const startLog = "/tmp/.stasis-start.log"

// launchStartCmd starts cmd in the background in a sandbox, as the agent's
// child (so that it survives pause and resume), and returns its pid. Its
// output goes to startLog. stderr gets the launching shell's errors.
func launchStartCmd(ctx context.Context, agent *agentclient.Client, cmd string, d store.ExecDefaults, stderr io.Writer) (string, error) {
	sh := "sh -c '" + strings.ReplaceAll(cmd, "'", `'\''`) + "' >" + startLog + " 2>&1 </dev/null & echo $!"
	var out strings.Builder
	res, err := agent.Run(ctx, agentclient.ExecRequest{Command: sh, WorkingDir: d.Workdir, Env: d.Env, User: d.User}, &out, stderr)
	if err != nil || res.ExitCode != 0 {
		return "", failBuild("start_cmd_failed", "could not launch start_cmd: %v %s", err, res.Error)
	}
	return strings.TrimSpace(out.String()), nil
}

// awaitStartCmd polls readyCmd until it succeeds, failing early when the
// start command (pid; "" for none) has died; its output then goes to
// stderr. Errors are *buildError, coded start_cmd_failed or ready_cmd_failed.
func awaitStartCmd(ctx context.Context, agent *agentclient.Client, readyCmd, pid string, d store.ExecDefaults, stderr io.Writer) error {
	if readyCmd == "" {
		readyCmd = "kill -0 " + pid
	}
	deadline := time.Now().Add(ReadyTimeout)
	var last strings.Builder
	for {
		last.Reset()
		res, err := agent.Run(ctx, agentclient.ExecRequest{Command: readyCmd, WorkingDir: d.Workdir, Env: d.Env, User: d.User, TimeoutS: 30}, &last, &last)
		if err != nil {
			return err
		}
		if res.ExitCode == 0 {
			return nil
		}
		if pid != "" {
			if r, err := agent.Run(ctx, agentclient.ExecRequest{Command: "kill -0 " + pid}, io.Discard, io.Discard); err == nil && r.ExitCode != 0 {
				var out strings.Builder
				agent.Run(ctx, agentclient.ExecRequest{Command: "tail -c 2000 " + startLog}, &out, &out)
				io.WriteString(stderr, out.String())
				return failBuild("start_cmd_failed", "start_cmd exited before ready_cmd succeeded: %s", strings.TrimSpace(out.String()))
			}
		}
		if time.Now().After(deadline) {
			return failBuild("ready_cmd_failed", "ready_cmd did not succeed within %s; last output: %s", ReadyTimeout, strings.TrimSpace(last.String()))
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(250 * time.Millisecond):
		}
	}
}

// startImageCmd starts a built-in image's start command in a new sandbox and
// waits until it is ready (see images.Image.StartCmd).
func startImageCmd(ctx context.Context, agent *agentclient.Client, startCmd, readyCmd string) error {
	var stderr strings.Builder
	pid, err := launchStartCmd(ctx, agent, startCmd, store.ExecDefaults{}, &stderr)
	if err == nil {
		err = awaitStartCmd(ctx, agent, readyCmd, pid, store.ExecDefaults{}, &stderr)
	}
	return err
}
