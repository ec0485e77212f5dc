package applets

import (
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/creack/pty"
)

// A shell that sends itself SIGHUP survives under nohup, and dies without it.
func TestNohupIgnoresHangup(t *testing.T) {
	script := `kill -HUP $$; echo survived`
	out, errs, code := run(t, appletCmd(t, "nohup", "sh", "-c", script))
	if code != 0 || out != "survived\n" {
		t.Fatalf("nohup sh: exit %d, stdout %q, stderr %q; want it to survive SIGHUP", code, out, errs)
	}
	// The control: the same script without nohup is killed by its SIGHUP.
	plain := appletCmd(t, "nohup")
	plain.Path, plain.Args = "/bin/sh", []string{"sh", "-c", script}
	if out, _, _ := run(t, plain); out != "" {
		t.Fatalf("without nohup the shell printed %q; the test proves nothing", out)
	}
}

// Output to a pipe stays there: nohup only redirects terminals.
func TestNohupKeepsPipes(t *testing.T) {
	dir := t.TempDir()
	cmd := appletCmd(t, "nohup", "sh", "-c", "echo out; echo err >&2")
	cmd.Dir = dir
	out, errs, code := run(t, cmd)
	if code != 0 || out != "out\n" || errs != "err\n" {
		t.Fatalf("exit %d, stdout %q, stderr %q", code, out, errs)
	}
	if _, err := os.Stat(filepath.Join(dir, "nohup.out")); !os.IsNotExist(err) {
		t.Fatalf("nohup.out created although output was a pipe (%v)", err)
	}
}

// Output to a terminal is appended to nohup.out, and stderr follows it.
func TestNohupTerminalToNohupOut(t *testing.T) {
	dir := t.TempDir()
	if err := os.WriteFile(filepath.Join(dir, "nohup.out"), []byte("before\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	ptmx, tty, err := pty.Open()
	if err != nil {
		t.Fatal(err)
	}
	defer ptmx.Close()
	cmd := appletCmd(t, "nohup", "sh", "-c", "echo out; echo err >&2; test -t 0 && echo stdin-is-tty; true")
	cmd.Dir = dir
	cmd.Stdin, cmd.Stdout, cmd.Stderr = tty, tty, tty
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	tty.Close()
	var screen strings.Builder
	buf := make([]byte, 4096)
	for {
		n, err := ptmx.Read(buf)
		screen.Write(buf[:n])
		if err != nil {
			break
		}
	}
	if err := cmd.Wait(); err != nil {
		t.Fatalf("nohup: %v; terminal showed %q", err, screen.String())
	}
	if !strings.Contains(screen.String(), "nohup: ignoring input and appending output to 'nohup.out'") {
		t.Errorf("terminal showed %q, want nohup's notice", screen.String())
	}
	if strings.Contains(screen.String(), "out\r\n") || strings.Contains(screen.String(), "err") {
		t.Errorf("the command wrote to the terminal: %q", screen.String())
	}
	got, err := os.ReadFile(filepath.Join(dir, "nohup.out"))
	if err != nil {
		t.Fatal(err)
	}
	if string(got) != "before\nout\nerr\n" {
		t.Fatalf("nohup.out = %q, want the old content, then stdout and stderr", got)
	}
}

func TestNohupErrors(t *testing.T) {
	_, errs, code := run(t, appletCmd(t, "nohup", "no-such-command-here"))
	if code != 127 || !strings.Contains(errs, "no-such-command-here") {
		t.Errorf("missing command: exit %d, stderr %q; want 127", code, errs)
	}
	dir := t.TempDir()
	notExec := filepath.Join(dir, "script")
	if err := os.WriteFile(notExec, []byte("echo hi\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	if _, _, code := run(t, appletCmd(t, "nohup", notExec)); code != 126 {
		t.Errorf("non-executable file: exit %d, want 126", code)
	}
	if _, errs, code := run(t, appletCmd(t, "nohup")); code != 125 || !strings.Contains(errs, "usage: nohup") {
		t.Errorf("no command: exit %d, stderr %q; want 125 and usage", code, errs)
	}
}
