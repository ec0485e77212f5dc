package images

import (
	"bufio"
	"bytes"
	"context"
	"debug/elf"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strings"

	"github.com/stasis-sandbox/stasis/internal/applets"
)

// hostBusybox is the static busybox of Debian's busybox-static package.
const hostBusybox = "/bin/busybox"

const busyboxHint = "install the busybox-static package: apt-get install busybox-static"

// hostBash is the static bash of Debian's bash-static package, the image's
// /bin/sh. busybox-static's own sh runs busybox's applets ahead of $PATH
// (it is built with FEATURE_SH_STANDALONE), so under it `wget` would still
// be busybox's broken one and not stasis-applets'.
const hostBash = "/bin/bash-static"

const bashHint = "install the bash-static package: apt-get install bash-static"

// hostCACerts is the host's CA bundle (Debian's ca-certificates), which
// stasis/minimal carries so that its wget can check HTTPS servers.
const hostCACerts = "/etc/ssl/certs/ca-certificates.crt"

// buildMinimal builds stasis/minimal: the host's static busybox with a link
// for every applet, stasis-applets for the commands that busybox lacks or
// breaks (nohup, wget), a static bash as /bin/sh, and just enough of /etc
// for a root and a "user" account.
func buildMinimal(ctx context.Context, rootfs string, in inputs, progress io.Writer) (config, error) {
	if err := checkStatic(hostBusybox, busyboxHint); err != nil {
		return config{}, err
	}
	if err := checkStatic(hostBash, bashHint); err != nil {
		return config{}, err
	}
	appletsBin, err := in.appletsBinary()
	if err != nil {
		return config{}, err
	}
	if err := checkStatic(appletsBin, "build it with CGO_ENABLED=0, as `make build` does"); err != nil {
		return config{}, err
	}
	links, err := busyboxApplets(ctx, hostBusybox)
	if err != nil {
		return config{}, err
	}
	fmt.Fprintf(progress, "copying %s with %d applets\n", hostBusybox, len(links))

	for _, d := range []struct {
		path string
		mode os.FileMode
	}{
		{"bin", 0o755}, {"sbin", 0o755}, {"usr/bin", 0o755}, {"usr/sbin", 0o755},
		{"usr/local/bin", 0o755}, {"usr/local/sbin", 0o755},
		{"etc", 0o755}, {"root", 0o700}, {"home/user", 0o755},
		{"tmp", os.ModeSticky | 0o777}, {"var/tmp", os.ModeSticky | 0o777}, {"run", 0o755},
		{"proc", 0o555}, {"sys", 0o555}, {"dev", 0o755},
	} {
		p := filepath.Join(rootfs, d.path)
		if err := os.MkdirAll(p, 0o755); err != nil {
			return config{}, err
		}
		if err := os.Chmod(p, d.mode); err != nil { // MkdirAll is subject to umask and ignores sticky bits
			return config{}, err
		}
	}
	if err := os.Chown(filepath.Join(rootfs, "home/user"), 1000, 1000); err != nil {
		return config{}, err
	}
	if err := copyFile(hostBusybox, filepath.Join(rootfs, "bin/busybox"), 0o755); err != nil {
		return config{}, err
	}
	for _, a := range links {
		p := filepath.Join(rootfs, a)
		if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
			return config{}, err
		}
		if err := os.Symlink("/bin/busybox", p); err != nil && !os.IsExist(err) {
			return config{}, err
		}
	}
	if _, err := os.Lstat(filepath.Join(rootfs, "bin/sh")); err != nil {
		return config{}, fmt.Errorf("%s has no sh applet", hostBusybox)
	}
	fmt.Fprintf(progress, "adding %s as /bin/bash and /bin/sh\n", hostBash)
	if err := copyFile(hostBash, filepath.Join(rootfs, "bin/bash"), 0o755); err != nil {
		return config{}, err
	}
	if err := os.Remove(filepath.Join(rootfs, "bin/sh")); err != nil {
		return config{}, err
	}
	if err := os.Symlink("bash", filepath.Join(rootfs, "bin/sh")); err != nil {
		return config{}, err
	}
	fmt.Fprintf(progress, "adding %s for %s\n", appletsBin, strings.Join(applets.Names(), ", "))
	if err := installApplets(appletsBin, rootfs); err != nil {
		return config{}, err
	}
	if _, err := os.Stat(hostCACerts); err == nil {
		if err := os.MkdirAll(filepath.Join(rootfs, filepath.Dir(hostCACerts)), 0o755); err != nil {
			return config{}, err
		}
		if err := copyFile(hostCACerts, filepath.Join(rootfs, hostCACerts), 0o644); err != nil {
			return config{}, fmt.Errorf("copy CA certificates: %w", err)
		}
	} else {
		fmt.Fprintf(progress, "no %s on this host (package ca-certificates): wget in the image cannot check HTTPS servers\n", hostCACerts)
	}

	for _, f := range []struct {
		path, content string
		mode          os.FileMode
	}{
		{"etc/passwd", "root:x:0:0:root:/root:/bin/sh\n" +
			"user:x:1000:1000:user:/home/user:/bin/sh\n" +
			"nobody:x:65534:65534:nobody:/nonexistent:/bin/false\n", 0o644},
		{"etc/group", "root:x:0:\nuser:x:1000:\nnogroup:x:65534:\n", 0o644},
		{"etc/shadow", "root:*:19000:0:99999:7:::\nuser:*:19000:0:99999:7:::\nnobody:*:19000:0:99999:7:::\n", 0o640},
		{"etc/hostname", "stasis\n", 0o644},
		{"etc/hosts", hostsFile, 0o644},
		{"etc/resolv.conf", "", 0o644},
	} {
		if err := writeFile(filepath.Join(rootfs, f.path), f.content, f.mode); err != nil {
			return config{}, err
		}
	}
	return config{
		User:    "",
		Workdir: "/",
		Env:     []string{defaultPath},
	}, nil
}

const hostsFile = "127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost ip6-loopback\n"

// installApplets copies the stasis-applets binary to /bin and links each of
// its commands from /usr/bin, in place of busybox's link of that name.
func installApplets(bin, rootfs string) error {
	if err := copyFile(bin, filepath.Join(rootfs, "bin/stasis-applets"), 0o755); err != nil {
		return fmt.Errorf("copy stasis-applets: %w", err)
	}
	for _, name := range applets.Names() {
		for _, dir := range []string{"bin", "sbin", "usr/bin", "usr/sbin"} {
			if err := os.Remove(filepath.Join(rootfs, dir, name)); err != nil && !os.IsNotExist(err) {
				return err
			}
		}
		if err := os.Symlink("/bin/stasis-applets", filepath.Join(rootfs, "usr/bin", name)); err != nil {
			return err
		}
	}
	return nil
}

// checkStatic fails unless path is a statically linked ELF executable, the
// only kind that works alone in an image; hint tells how to get one.
func checkStatic(path, hint string) error {
	f, err := elf.Open(path)
	if err != nil {
		return fmt.Errorf("%s: %w (%s)", path, err, hint)
	}
	defer f.Close()
	for _, p := range f.Progs {
		if p.Type == elf.PT_INTERP {
			return fmt.Errorf("%s is dynamically linked (%s)", path, hint)
		}
	}
	return nil
}

// busyboxApplets returns the install paths of busybox's applets, relative to
// the root ("bin/sh", "usr/bin/env", ...), without busybox itself.
func busyboxApplets(ctx context.Context, busybox string) ([]string, error) {
	out, err := exec.CommandContext(ctx, busybox, "--list-full").Output()
	if err != nil {
		return nil, fmt.Errorf("%s --list-full: %w", busybox, err)
	}
	var applets []string
	sc := bufio.NewScanner(bytes.NewReader(out))
	for sc.Scan() {
		a := strings.Trim(strings.TrimSpace(sc.Text()), "/")
		if a == "" || a == "bin/busybox" || strings.Contains(a, "..") {
			continue
		}
		applets = append(applets, a)
	}
	if len(applets) == 0 {
		return nil, fmt.Errorf("%s --list-full listed no applets", busybox)
	}
	return applets, nil
}

func writeFile(path, content string, mode os.FileMode) error {
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		return err
	}
	if err := os.WriteFile(path, []byte(content), mode); err != nil {
		return err
	}
	return os.Chmod(path, mode)
}

func copyFile(src, dst string, mode os.FileMode) error {
	in, err := os.Open(src)
	if err != nil {
		return err
	}
	defer in.Close()
	out, err := os.OpenFile(dst, os.O_WRONLY|os.O_CREATE|os.O_TRUNC, mode)
	if err != nil {
		return err
	}
	if _, err := io.Copy(out, in); err != nil {
		out.Close()
		return err
	}
	if err := out.Close(); err != nil {
		return err
	}
	return os.Chmod(dst, mode)
}
