// Package failpoint lets tests crash stasisd at named steps of its
// lifecycle operations, to prove that a SIGKILL at any instant loses nothing.
// Failpoints are armed only through the STASIS_FAILPOINTS environment
// variable ("name[,name...]"); unarmed, Hit is a map lookup.
package failpoint

import (
	"os"
	"strings"
	"syscall"
)

// Env is the environment variable that arms failpoints.
const Env = "STASIS_FAILPOINTS"

var armed = parse(os.Getenv(Env))

func parse(v string) map[string]bool {
	m := map[string]bool{}
	for _, name := range strings.Split(v, ",") {
		if name = strings.TrimSpace(name); name != "" {
			m[name] = true
		}
	}
	return m
}

// Hit kills the process with SIGKILL, as a crash would, if name is armed.
func Hit(name string) {
	if armed[name] {
		os.Stderr.WriteString("failpoint " + name + ": SIGKILL\n")
		syscall.Kill(os.Getpid(), syscall.SIGKILL)
		select {} // never returns
	}
}
