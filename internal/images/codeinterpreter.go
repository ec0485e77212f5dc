package images

import (
	"context"
	"embed"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"time"
)

// codeInterpreterPackages are stasis/code-interpreter's Debian packages
// beyond stasis/base's: a Jupyter kernel and the usual data libraries. apt
// installs them, not debootstrap, whose resolver skips virtual packages
// (python3-zmq's python3-cffi-backend-api-min and others).
var codeInterpreterPackages = []string{
	"python3-ipykernel", "python3-jupyter-client", "python3-matplotlib-inline",
	"python3-numpy", "python3-pandas", "python3-matplotlib",
}

// CodeInterpreterPort is the port of the code interpreter's server in a
// stasis/code-interpreter sandbox, the one E2B's @e2b/code-interpreter calls.
const CodeInterpreterPort = 49999

// codeInterpreterDir is where the server lives inside the image.
const codeInterpreterDir = "/opt/stasis/code-interpreter"

// codeInterpreterFiles are the server and the kernels' IPython startup file.
//
//go:embed codeinterpreter/server.py codeinterpreter/startup.py
var codeInterpreterFiles embed.FS

// buildCodeInterpreter builds stasis/code-interpreter: stasis/base's Debian
// with ipykernel, numpy, pandas and matplotlib, and the code interpreter's
// server, which every sandbox starts (see config.StartCmd).
func buildCodeInterpreter(ctx context.Context, rootfs string, _ inputs, progress io.Writer) (config, error) {
	cfg, err := buildDebian(ctx, rootfs, "stasis-code-interpreter", basePackages, progress)
	if err != nil {
		return config{}, err
	}
	if err := aptInstall(ctx, rootfs, "stasis-code-interpreter", codeInterpreterPackages, progress); err != nil {
		return config{}, err
	}
	fmt.Fprintf(progress, "installing the code interpreter server in %s\n", codeInterpreterDir)
	for _, f := range []string{"server.py", "startup.py"} {
		b, err := codeInterpreterFiles.ReadFile("codeinterpreter/" + f)
		if err != nil {
			return config{}, err
		}
		if err := writeFile(filepath.Join(rootfs, codeInterpreterDir, f), string(b), 0o644); err != nil {
			return config{}, err
		}
	}
	// matplotlib's font list, built now rather than at every sandbox's
	// first plot (it takes seconds).
	fmt.Fprintf(progress, "building matplotlib's font cache\n")
	if err := chrootRun(ctx, rootfs, "/bin/sh", "-c",
		"HOME=/home/user python3 -c 'import matplotlib.pyplot' && chown -R user:user /home/user/.cache"); err != nil {
		return config{}, err
	}
	cfg.StartCmd = fmt.Sprintf("exec python3 %s/server.py --port %d", codeInterpreterDir, CodeInterpreterPort)
	// The server accepts connections once its default context's kernel is
	// up. bash's /dev/tcp probes that without starting a python.
	cfg.ReadyCmd = fmt.Sprintf("bash -c 'exec 3<>/dev/tcp/127.0.0.1/%d'", CodeInterpreterPort)
	return cfg, nil
}

// aptInstall installs packages (with their dependencies, without
// recommends) into a debootstrapped rootfs with the image's own apt, using
// the host's DNS servers for the download. Its output is appended to
// DIR/LOGNAME-debootstrap.log. The image is left without package lists, and
// with the empty resolv.conf that stasis fills in at sandbox start.
func aptInstall(ctx context.Context, rootfs, logName string, packages []string, progress io.Writer) error {
	unshare, err := lookPath("unshare")
	if err != nil {
		return fmt.Errorf("unshare (util-linux) not found: %w", err)
	}
	logPath := filepath.Join(filepath.Dir(filepath.Dir(rootfs)), logName+"-debootstrap.log")
	logFile, err := os.OpenFile(logPath, os.O_WRONLY|os.O_APPEND|os.O_CREATE, 0o644)
	if err != nil {
		return fmt.Errorf("apt log: %w", err)
	}
	defer logFile.Close()
	resolv := filepath.Join(rootfs, "etc/resolv.conf")
	hostResolv, err := os.ReadFile("/etc/resolv.conf")
	if err != nil {
		return fmt.Errorf("apt needs the host's DNS servers: %w", err)
	}
	if err := writeFile(resolv, string(hostResolv), 0o644); err != nil {
		return err
	}
	defer writeFile(resolv, "", 0o644)

	fmt.Fprintf(progress, "apt-get install %s (takes minutes; full log: %s)\n", strings.Join(packages, " "), logPath)
	start := time.Now()
	// A private mount namespace: the /proc that maintainer scripts need
	// vanishes with it, even if apt is killed.
	script := "mount -t proc proc /proc && apt-get update -q && apt-get install -y -q --no-install-recommends " + strings.Join(packages, " ")
	cmd := exec.CommandContext(ctx, unshare, "--mount", "--propagation", "private", "chroot", rootfs, "/bin/sh", "-c", script)
	cmd.Env = []string{defaultPath, "LC_ALL=C", "HOME=/root", "DEBIAN_FRONTEND=noninteractive"}
	tail := &tailWriter{w: io.Discard, max: 30}
	out := io.MultiWriter(logFile, tail)
	cmd.Stdout, cmd.Stderr = out, out
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGKILL}
	cmd.Cancel = func() error { return syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL) }
	cmd.WaitDelay = 10 * time.Second
	err = cmd.Run()
	tail.flush()
	if err != nil {
		if ctx.Err() != nil {
			return ctx.Err()
		}
		return fmt.Errorf("apt-get install failed: %w (full log: %s); its last lines:\n%s", err, logPath, tail.tail())
	}
	fmt.Fprintf(progress, "apt-get: done in %s\n", time.Since(start).Round(time.Second))
	return cleanApt(rootfs)
}
