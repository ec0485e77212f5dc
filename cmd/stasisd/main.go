// Command stasisd is the stasis server: by default one process holds the
// control plane, the data plane and the node runtime (gVisor), with SQLite
// and a local data dir.
package main

import (
	"errors"
	"flag"
	"fmt"
	"os"
)

const usage = `stasisd - self-hosted sandboxes that pause and resume

usage:
  stasisd serve [--listen ADDR] [--data-dir DIR] [flags]   run the server
  stasisd images build|ls [flags]                         build or list built-in images
  stasisd version

Run "stasisd serve -h" for the server's flags.
`

// version is set at build time with -ldflags "-X main.version=...".
var version = "dev"

func main() {
	if len(os.Args) < 2 {
		fmt.Fprint(os.Stderr, usage)
		os.Exit(2)
	}
	var err error
	switch os.Args[1] {
	case "serve":
		err = runServe(os.Args[2:])
	case "images":
		err = runImages(os.Args[2:])
	case "version", "--version":
		fmt.Println("stasisd", version)
	case "help", "-h", "--help":
		fmt.Print(usage)
	default:
		fmt.Fprintf(os.Stderr, "stasisd: unknown command %q\n\n%s", os.Args[1], usage)
		os.Exit(2)
	}
	switch {
	case errors.Is(err, flag.ErrHelp):
		// -h/--help: the flag set has printed the help; asking is no error.
	case err != nil:
		fmt.Fprintln(os.Stderr, "stasisd:", err)
		os.Exit(1)
	}
}
