// Package applets implements the commands that stasis/minimal adds to
// Debian's static busybox, which has no nohup applet and whose wget
// segfaults when given -T: a nohup and a busybox-compatible wget.
//
// The image copies the stasis-applets binary in when it is built, so a
// change to what these commands do must bump stasis/minimal's recipe version
// (internal/images/recipe.go) for existing machines to pick it up.
package applets

import (
	"fmt"
	"os"
	"path/filepath"
	"sort"
	"strings"
)

// Names lists the commands, as the image links them.
func Names() []string {
	names := make([]string, 0, len(commands))
	for n := range commands {
		names = append(names, n)
	}
	sort.Strings(names)
	return names
}

var commands = map[string]func(args []string) int{
	"nohup": func(args []string) int { return Nohup(args, os.Stderr) },
	"wget":  func(args []string) int { return Wget(args, os.Stdout, os.Stderr) },
}

// Main runs the command named by args[0] (the link it was run through) or,
// when run under its own name, by args[1]. It returns the exit status.
func Main(args []string) int {
	if len(args) == 0 {
		args = []string{"stasis-applets"}
	}
	name := filepath.Base(args[0])
	if _, ok := commands[name]; !ok && len(args) > 1 {
		name, args = args[1], args[1:]
	}
	cmd, ok := commands[name]
	if !ok {
		fmt.Fprintf(os.Stderr, "usage: stasis-applets COMMAND [ARG]...\ncommands: %s\n", strings.Join(Names(), ", "))
		return 127
	}
	return cmd(args[1:])
}
