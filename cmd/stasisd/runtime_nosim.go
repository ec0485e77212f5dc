//go:build !stasis_sim

package main

import (
	"context"
	"flag"
	"log/slog"
)

// A production build has no --runtime flag: the simulated runtime
// (runtime_sim.go) is compiled only with -tags stasis_sim.
func registerSimFlags(*flag.FlagSet, *serveFlags) {}

func setupSim(context.Context, serveFlags, *slog.Logger) (*node, error) { return nil, nil }
