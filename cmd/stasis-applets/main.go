// Command stasis-applets provides the everyday commands that Debian's static
// busybox in stasis/minimal lacks or breaks: nohup (no applet) and wget (its
// -T segfaults). The image links /usr/bin/nohup and /usr/bin/wget to it; it
// picks the command from the name it was run as, or from its first argument
// (stasis-applets wget URL).
//
// Build it static: CGO_ENABLED=0 go build ./cmd/stasis-applets
package main

import (
	"os"

	"github.com/stasis-sandbox/stasis/internal/applets"
)

func main() {
	os.Exit(applets.Main(os.Args))
}
