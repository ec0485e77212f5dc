package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"os/signal"
	"strings"
	"syscall"
	"time"

	stasis "github.com/stasis-sandbox/stasis"
	"golang.org/x/term"
)

// commandLine turns exec's arguments into a shell command: a single
// argument is a shell command line as is (like ssh); several are an argv,
// quoted word by word.
func commandLine(args []string) string {
	if len(args) == 1 {
		return args[0]
	}
	q := make([]string, len(args))
	for i, s := range args {
		q[i] = shellQuote(s)
	}
	return strings.Join(q, " ")
}

// exitStatus maps a remote exit code onto a process exit status.
func exitStatus(code int) int {
	if code < 0 || code > 255 {
		return 255
	}
	return code
}

func (a *app) execCmd() *command {
	return &command{
		name:  "exec",
		usage: "ID [--cwd DIR] [--env k=v]... [--timeout D] [--json] -- COMMAND [ARG...]",
		summary: "run a command in a sandbox, streaming its output; exits with its exit code.\n" +
			"One COMMAND argument is a shell command line ('ls | wc -l'); several are quoted as words.\n" +
			"When stdin is not a terminal it is piped to the command.",
		minArgs: 2, maxArgs: -1, ownSignals: true,
		flags: func(fs *flag.FlagSet) func(context.Context, []string) int {
			cwd := fs.String("cwd", "", "working `DIR` in the sandbox")
			env := kvFlag{}
			fs.Var(env, "env", "environment variable key=value (repeatable)")
			var timeout durationFlag
			fs.Var(&timeout, "timeout", "kill the command after this long (e.g. 30s, 5m)")
			jsonOut := fs.Bool("json", false, "buffer the output and print {stdout, stderr, exit_code} as JSON")
			return func(ctx context.Context, args []string) int {
				cmdline := commandLine(args[1:])
				c, id, status := a.resolveOne(ctx, args[0])
				if status != 0 {
					return status
				}
				sigs := make(chan os.Signal, 4)
				signal.Notify(sigs, os.Interrupt, syscall.SIGTERM, syscall.SIGHUP)
				defer signal.Stop(sigs)
				ctx, cancel := context.WithCancel(ctx)
				defer cancel()

				sb, err := c.Connect(ctx, id)
				if err != nil {
					return a.fail(err, id)
				}
				var envMap map[string]string
				if len(env) > 0 {
					envMap = env
				}
				out, errOut := a.stdout, a.stderr
				if *jsonOut {
					out, errOut = nil, nil
				}
				var res *stasis.Result
				if a.isTerminal(a.stdin) {
					res, err = a.execStream(ctx, cancel, sigs, sb, cmdline, *cwd, envMap, timeout.d, out, errOut)
				} else {
					res, err = a.execPiped(ctx, sigs, sb, cmdline, *cwd, envMap, timeout.d, out, errOut)
				}
				if err != nil {
					if errors.Is(err, context.Canceled) {
						fmt.Fprintln(a.stderr, "stasis: interrupted")
						return 130
					}
					return a.fail(err, "")
				}
				if *jsonOut {
					v := map[string]any{"stdout": res.Stdout, "stderr": res.Stderr, "exit_code": res.ExitCode}
					if res.Error != "" {
						v["error"] = res.Error
					}
					if a.printJSON(v) != 0 {
						return 1
					}
				} else if res.Error != "" {
					fmt.Fprintf(a.stderr, "stasis: %s\n", res.Error)
				}
				return exitStatus(res.ExitCode)
			}
		},
	}
}

// writerFunc returns a callback writing to w, or nil (collect only).
func writerFunc(w io.Writer) func([]byte) {
	if w == nil {
		return func([]byte) {}
	}
	return func(p []byte) { w.Write(p) }
}

// execStream runs the command over /exec/stream (stdin is a terminal, so
// there is nothing to pipe). A signal abandons the command.
func (a *app) execStream(ctx context.Context, cancel context.CancelFunc, sigs <-chan os.Signal, sb *stasis.Sandbox,
	cmdline, cwd string, env map[string]string, timeout time.Duration, out, errOut io.Writer) (*stasis.Result, error) {
	go func() {
		select {
		case <-sigs:
			cancel()
		case <-ctx.Done():
		}
	}()
	return sb.Commands.Run(ctx, cmdline, &stasis.RunOptions{
		Dir: cwd, Env: env, Timeout: timeout,
		OnStdout: writerFunc(out), OnStderr: writerFunc(errOut),
	})
}

// execPiped runs the command as a session, piping our stdin to it and
// forwarding signals: the first interrupt is passed on to the command, a
// second one kills it.
func (a *app) execPiped(ctx context.Context, sigs <-chan os.Signal, sb *stasis.Sandbox,
	cmdline, cwd string, env map[string]string, timeout time.Duration, out, errOut io.Writer) (*stasis.Result, error) {
	sess, err := sb.Commands.Spawn(ctx, cmdline, &stasis.SpawnOptions{
		Dir: cwd, Env: env, Timeout: timeout,
		OnStdout: writerFunc(out), OnStderr: writerFunc(errOut),
	})
	if err != nil {
		return nil, err
	}
	defer sess.Close()
	go func() {
		_, err := io.Copy(sess.Stdin, a.stdin)
		if err == nil {
			sess.Stdin.Close()
		}
	}()
	go func() {
		n := 0
		for {
			select {
			case sig := <-sigs:
				n++
				name := "SIGTERM"
				switch {
				case n > 1:
					name = "SIGKILL"
				case sig == os.Interrupt:
					name = "SIGINT"
				case sig == syscall.SIGHUP:
					name = "SIGHUP"
				}
				sess.Signal(ctx, name)
			case <-sess.Done():
				return
			}
		}
	}()
	return sess.Wait(ctx)
}

// defaultShell runs the user's login shell: bash if the sandbox has it,
// else /bin/sh.
const defaultShell = `if command -v bash >/dev/null 2>&1; then exec bash -l; else exec /bin/sh -l; fi`

func (a *app) shellCmd() *command {
	return &command{
		name:  "shell",
		usage: "ID [--cwd DIR] [--env k=v]... [-- COMMAND [ARG...]]",
		summary: "open an interactive terminal in a sandbox (Ctrl-D or 'exit' to leave)\n\n" +
			"With a COMMAND, runs it in the terminal instead of the login shell (like\n" +
			"'docker exec -it'): 'stasis shell ID -- top', 'stasis shell ID -- python3'.\n" +
			"One COMMAND argument is a shell command line; several are quoted as words.",
		minArgs: 1, maxArgs: -1, ownSignals: true,
		flags: func(fs *flag.FlagSet) func(context.Context, []string) int {
			shell := fs.String("shell", "", "`COMMAND` line to run instead of the login shell (default: bash -l, else /bin/sh -l)")
			cwd := fs.String("cwd", "", "working `DIR` in the sandbox")
			env := kvFlag{}
			fs.Var(env, "env", "environment variable key=value (repeatable)")
			return func(ctx context.Context, args []string) int {
				cmdline := *shell
				if len(args) > 1 {
					if cmdline != "" {
						fmt.Fprintln(a.stderr, "stasis: shell: give either --shell or a COMMAND after --, not both")
						return 2
					}
					cmdline = commandLine(args[1:])
				}
				return a.shell(ctx, args[0], cmdline, *cwd, env)
			}
		},
	}
}

func (a *app) shell(ctx context.Context, id, shell, cwd string, env kvFlag) int {
	inFd := int(a.stdin.Fd())
	if !term.IsTerminal(inFd) {
		fmt.Fprintln(a.stderr, "stasis: shell needs a terminal on stdin; use 'stasis exec ID -- COMMAND' for scripts")
		return 2
	}
	c, id, status := a.resolveOne(ctx, id)
	if status != 0 {
		return status
	}
	if shell == "" {
		shell = defaultShell
	}
	if env["TERM"] == "" {
		t := os.Getenv("TERM")
		if t == "" || t == "dumb" {
			t = "xterm-256color"
		}
		env["TERM"] = t
	}
	size := &stasis.PTYSize{Cols: 80, Rows: 24}
	if w, h, err := term.GetSize(inFd); err == nil && w > 0 && h > 0 {
		size = &stasis.PTYSize{Cols: w, Rows: h}
	}
	winch := make(chan os.Signal, 1)
	signal.Notify(winch, syscall.SIGWINCH)
	defer signal.Stop(winch)
	// Interrupts are keystrokes for the remote shell in raw mode; a SIGTERM
	// or SIGHUP to us ends the session.
	stopSigs := make(chan os.Signal, 1)
	signal.Notify(stopSigs, syscall.SIGTERM, syscall.SIGHUP)
	defer signal.Stop(stopSigs)

	sb, err := c.Connect(ctx, id)
	if err != nil {
		return a.fail(err, id)
	}
	sess, err := sb.Commands.Spawn(ctx, shell, &stasis.SpawnOptions{
		Dir: cwd, Env: env, PTY: size,
		OnStdout: writerFunc(a.stdout), OnStderr: writerFunc(a.stderr),
	})
	if err != nil {
		return a.fail(err, id)
	}
	defer sess.Close()

	old, err := term.MakeRaw(inFd)
	if err != nil {
		return a.fail(fmt.Errorf("setting terminal to raw mode: %w", err), "")
	}
	restore := func() { term.Restore(inFd, old) }
	defer restore()

	go func() {
		_, err := io.Copy(sess.Stdin, a.stdin)
		if err == nil {
			sess.Stdin.Close()
		}
	}()
	go func() {
		for {
			select {
			case <-winch:
				if w, h, err := term.GetSize(inFd); err == nil && w > 0 && h > 0 {
					sess.Resize(ctx, w, h)
				}
			case <-stopSigs:
				sess.Close()
				return
			case <-sess.Done():
				return
			}
		}
	}()
	res, err := sess.Wait(ctx)
	restore()
	if err != nil {
		return a.fail(err, "")
	}
	if res.Error != "" {
		fmt.Fprintf(a.stderr, "stasis: %s\n", res.Error)
	}
	return exitStatus(res.ExitCode)
}
