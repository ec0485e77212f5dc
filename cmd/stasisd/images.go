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
	"text/tabwriter"
	"time"

	"github.com/stasis-sandbox/stasis/internal/images"
)

// imagesDefaultDir is where images live unless --images-dir or
// STASIS_IMAGES_DIR says otherwise.
const imagesDefaultDir = "/var/lib/stasis/images"

const imagesUsage = `usage:
  stasisd images build [--images-dir DIR] [NAME...]   build images (default: all built-in)
  stasisd images ls [--images-dir DIR]                list built-in images and their state

Built-in images: %s
The images directory defaults to $STASIS_IMAGES_DIR, else %s.
`

// runImages implements `stasisd images ...`; args are the arguments after
// "images".
func runImages(args []string) error {
	if len(args) == 0 {
		fmt.Fprintf(os.Stderr, imagesUsage, strings.Join(images.Builtins(), ", "), imagesDefaultDir)
		return errors.New("images: missing subcommand (build or ls)")
	}
	sub, args := args[0], args[1:]
	fs := flag.NewFlagSet("stasisd images "+sub, flag.ContinueOnError)
	dir := fs.String("images-dir", imagesEnvOr("STASIS_IMAGES_DIR", imagesDefaultDir), "directory holding built images")
	fs.Usage = func() {
		fmt.Fprintf(fs.Output(), imagesUsage, strings.Join(images.Builtins(), ", "), imagesDefaultDir)
	}
	names, err := imagesParseArgs(fs, args)
	if err != nil {
		return err
	}
	m := images.NewManager(*dir)
	switch sub {
	case "build":
		return imagesBuild(m, names, os.Stdout)
	case "ls", "list":
		if len(names) > 0 {
			return fmt.Errorf("images ls: unexpected arguments %q", names)
		}
		return imagesList(m, os.Stdout)
	case "help", "-h", "--help":
		fs.Usage()
		return nil
	default:
		fs.Usage()
		return fmt.Errorf("images: unknown subcommand %q (want build or ls)", sub)
	}
}

func imagesBuild(m *images.Manager, names []string, out io.Writer) error {
	if len(names) == 0 {
		names = images.Builtins()
	}
	for _, name := range names { // fail on a typo before a long build starts
		if _, err := m.Get(name); errors.Is(err, images.ErrUnknown) {
			return err
		}
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	for _, name := range names {
		start := time.Now()
		img, err := m.Ensure(ctx, name, out)
		if err != nil {
			return err
		}
		verb := "already built"
		if img.BuiltAt.After(start.Add(-time.Second)) {
			verb = "built in " + time.Since(start).Round(time.Millisecond).String()
		}
		fmt.Fprintf(out, "%s: %s (%s)\n", name, verb, img.RootFS)
	}
	return nil
}

func imagesList(m *images.Manager, out io.Writer) error {
	tw := tabwriter.NewWriter(out, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "NAME\tSTATUS\tBUILT\tUSER\tROOTFS")
	for _, name := range images.Builtins() {
		img, err := m.Get(name)
		switch {
		case errors.Is(err, images.ErrNotBuilt):
			fmt.Fprintf(tw, "%s\tnot built\t-\t-\t-\n", name)
		case err != nil:
			return err
		default:
			user := img.User
			if user == "" {
				user = "root"
			}
			fmt.Fprintf(tw, "%s\tready\t%s\t%s\t%s\n", name, img.BuiltAt.Local().Format(time.DateTime), user, img.RootFS)
		}
	}
	return tw.Flush()
}

// imagesParseArgs parses flags that may come before or after positional
// arguments, and returns the positional ones.
func imagesParseArgs(fs *flag.FlagSet, args []string) ([]string, error) {
	var rest []string
	for {
		if err := fs.Parse(args); err != nil {
			return nil, err
		}
		if fs.NArg() == 0 {
			return rest, nil
		}
		rest = append(rest, fs.Arg(0))
		args = fs.Args()[1:]
	}
}

func imagesEnvOr(key, def string) string {
	if v := os.Getenv(key); v != "" {
		return v
	}
	return def
}
