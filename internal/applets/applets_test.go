package applets

import (
	"bytes"
	"os"
	"os/exec"
	"testing"
)

// The test binary doubles as stasis-applets: run with this variable set, it
// runs the command named by its argv[0], as the image's links do.
const runAsApplets = "STASIS_APPLETS_TEST_MAIN"

func TestMain(m *testing.M) {
	if os.Getenv(runAsApplets) == "1" {
		os.Exit(Main(os.Args))
	}
	os.Exit(m.Run())
}

// appletCmd returns a command running the applet called name, as if through
// its link in the image.
func appletCmd(t *testing.T, name string, args ...string) *exec.Cmd {
	t.Helper()
	exe, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(exe)
	cmd.Args = append([]string{name}, args...)
	cmd.Env = append(os.Environ(), runAsApplets+"=1")
	return cmd
}

// run runs cmd and returns its stdout, stderr and exit status.
func run(t *testing.T, cmd *exec.Cmd) (string, string, int) {
	t.Helper()
	var out, errb bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &errb
	err := cmd.Run()
	if _, ok := err.(*exec.ExitError); err != nil && !ok {
		t.Fatalf("run %v: %v", cmd.Args, err)
	}
	return out.String(), errb.String(), cmd.ProcessState.ExitCode()
}

func TestMainDispatch(t *testing.T) {
	// By its own name, the first argument names the command.
	cmd := appletCmd(t, "stasis-applets", "nohup", "sh", "-c", "echo via-name")
	if out, errs, code := run(t, cmd); code != 0 || out != "via-name\n" {
		t.Fatalf("stasis-applets nohup: exit %d, stdout %q, stderr %q", code, out, errs)
	}
	_, errs, code := run(t, appletCmd(t, "stasis-applets", "frobnicate"))
	if code != 127 || !bytes.Contains([]byte(errs), []byte("nohup, wget")) {
		t.Fatalf("unknown command: exit %d, stderr %q; want 127 and the list of commands", code, errs)
	}
}
