package images

import (
	"context"
	"fmt"
	"io"
	"os"
	"path/filepath"
)

// defaultPath is the PATH of every built-in image.
const defaultPath = "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"

// config is what a recipe tells about the image it built.
type config struct {
	User    string
	Workdir string
	Env     []string
	// StartCmd, if set, is a shell command every sandbox of the image starts
	// in the background, as User in Workdir; sandboxes are ready once
	// ReadyCmd succeeds.
	StartCmd string
	ReadyCmd string
}

// recipe builds one built-in image.
type recipe struct {
	name string
	// version must be bumped whenever build changes what it produces: images
	// built by another version are not used and get rebuilt.
	version int
	// build fills the empty directory rootfs, taking host files it installs
	// from in. Lines written to progress are shown to the user. The agent
	// mount point is added afterwards.
	build func(ctx context.Context, rootfs string, in inputs, progress io.Writer) (config, error)
}

// recipes lists the built-in images, cheapest first.
var recipes = []*recipe{
	// r2: stasis-applets' nohup and wget, static bash as /bin/sh, the host's
	// CA certificates.
	{name: "stasis/minimal", version: 2, build: buildMinimal},
	{name: "stasis/base", version: 1, build: buildBase},
	{name: "stasis/code-interpreter", version: 1, build: buildCodeInterpreter},
}

// inputs are the host files that recipes install besides the host's own
// packages.
type inputs struct {
	applets string // stasis-applets binary; "" = look it up
}

// appletsBinary returns the stasis-applets binary to install: the one given,
// else $STASIS_APPLETS, else the one next to the running executable.
func (in inputs) appletsBinary() (string, error) {
	p := in.applets
	if p == "" {
		p = os.Getenv("STASIS_APPLETS")
	}
	if p == "" {
		exe, err := os.Executable()
		if err != nil {
			return "", fmt.Errorf("find stasis-applets: %w", err)
		}
		p = filepath.Join(filepath.Dir(exe), "stasis-applets")
	}
	if _, err := os.Stat(p); err != nil {
		return "", fmt.Errorf("stasis-applets binary: %w (run `make build`, or set STASIS_APPLETS)", err)
	}
	return p, nil
}
