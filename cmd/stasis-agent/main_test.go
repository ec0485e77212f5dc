package main

import (
	"runtime/debug"
	"strings"
	"testing"
)

// TestNoMappingNames checks that the agent is built not to name its memory
// mappings: each name is a system call, a trap into gVisor, while every
// cold create waits for the agent to start.
func TestNoMappingNames(t *testing.T) {
	bi, ok := debug.ReadBuildInfo()
	if !ok {
		t.Fatal("no build info")
	}
	for _, s := range bi.Settings {
		if s.Key == "DefaultGODEBUG" {
			for _, kv := range strings.Split(s.Value, ",") {
				if kv == "decoratemappings=0" {
					return
				}
			}
			t.Fatalf("DefaultGODEBUG %q lacks decoratemappings=0", s.Value)
		}
	}
	t.Fatal("no DefaultGODEBUG in the build info: decoratemappings=0 is not set")
}
