package applets

import (
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"syscall"

	"golang.org/x/sys/unix"
	"golang.org/x/term"
)

// Exit statuses of nohup's own failures, as POSIX and GNU nohup.
const (
	nohupFailed     = 125 // nohup itself failed
	nohupCannotRun  = 126 // the command was found but could not be run
	nohupNotFound   = 127 // the command was not found
	nohupOutputName = "nohup.out"
)

// Nohup runs args in place of this process with SIGHUP ignored, so the
// command outlives the terminal or session that started it. As POSIX and GNU
// nohup: input from a terminal is replaced by /dev/null, output to a terminal
// is appended to nohup.out (in the working directory, else in $HOME), and
// errors to a terminal follow the output. It returns only on failure.
func Nohup(args []string, stderr io.Writer) int {
	if len(args) > 0 && args[0] == "--" {
		args = args[1:]
	}
	if len(args) == 0 || args[0] == "--help" {
		fmt.Fprintf(stderr, "usage: nohup COMMAND [ARG]...\n\nRun COMMAND immune to hangups. Output to a terminal goes to %s.\n", nohupOutputName)
		return nohupFailed
	}
	path, err := exec.LookPath(args[0])
	if err != nil {
		fmt.Fprintf(stderr, "nohup: %s: %v\n", args[0], unwrapExecErr(err))
		if errors.Is(err, exec.ErrNotFound) || errors.Is(err, fs.ErrNotExist) {
			return nohupNotFound
		}
		return nohupCannotRun
	}

	inTTY := term.IsTerminal(0)
	if inTTY {
		if err := redirect(0, "/dev/null", os.O_RDONLY); err != nil {
			fmt.Fprintf(stderr, "nohup: %v\n", err)
			return nohupFailed
		}
	}
	if term.IsTerminal(1) {
		name, err := redirectToNohupOut()
		if err != nil {
			fmt.Fprintf(stderr, "nohup: %v\n", err)
			return nohupFailed
		}
		if inTTY {
			fmt.Fprintf(stderr, "nohup: ignoring input and appending output to '%s'\n", name)
		} else {
			fmt.Fprintf(stderr, "nohup: appending output to '%s'\n", name)
		}
	} else if inTTY {
		fmt.Fprintln(stderr, "nohup: ignoring input")
	}
	if term.IsTerminal(2) {
		if err := unix.Dup3(1, 2, 0); err != nil {
			fmt.Fprintf(stderr, "nohup: redirect errors to output: %v\n", err)
			return nohupFailed
		}
	}

	// An ignored signal stays ignored across exec.
	signal.Ignore(syscall.SIGHUP)
	err = syscall.Exec(path, args, os.Environ())
	fmt.Fprintf(os.Stderr, "nohup: %s: %v\n", args[0], err) // stderr may have moved
	if errors.Is(err, syscall.ENOENT) {
		return nohupNotFound
	}
	return nohupCannotRun
}

// redirectToNohupOut points stdout at nohup.out in the working directory, or
// in $HOME when that one cannot be opened, and returns the name it used.
func redirectToNohupOut() (string, error) {
	err := redirect(1, nohupOutputName, os.O_WRONLY|os.O_CREATE|os.O_APPEND)
	if err == nil {
		return nohupOutputName, nil
	}
	home := os.Getenv("HOME")
	if home == "" {
		return "", fmt.Errorf("can't open %s: %w", nohupOutputName, err)
	}
	name := filepath.Join(home, nohupOutputName)
	if err := redirect(1, name, os.O_WRONLY|os.O_CREATE|os.O_APPEND); err != nil {
		return "", fmt.Errorf("can't open %s or %s: %w", nohupOutputName, name, err)
	}
	return name, nil
}

// redirect opens name and moves it onto file descriptor fd.
func redirect(fd int, name string, flag int) error {
	f, err := os.OpenFile(name, flag, 0o600)
	if err != nil {
		return err
	}
	defer f.Close()
	if err := unix.Dup3(int(f.Fd()), fd, 0); err != nil {
		return fmt.Errorf("redirect to %s: %w", name, err)
	}
	return nil
}

// unwrapExecErr drops exec.Error's repetition of the command name.
func unwrapExecErr(err error) error {
	var ee *exec.Error
	if errors.As(err, &ee) {
		return ee.Err
	}
	return err
}
