package main

import (
	"context"
	"flag"
	"fmt"
	"time"

	stasis "github.com/stasis-sandbox/stasis"
)

func (a *app) nodeCmd() *command {
	return &command{
		name:    "node",
		summary: "the cluster's nodes: list them, drain one before maintenance",
		subs:    []*command{a.nodeLsCmd(), a.nodeDrainCmd(), a.nodeActivateCmd()},
	}
}

func (a *app) nodeLsCmd() *command {
	return jsonListCmd(a, "list nodes with their state and load", (*stasis.Client).Nodes, a.fail,
		"", "NAME\tSTATE\tURL\tRUNNING\tMEM FREE\tLAST HEARTBEAT\tVERSION", func(n stasis.NodeInfo) string {
			return fmt.Sprintf("%s\t%s\t%s\t%d\t%d MiB\t%s ago\t%s", n.Name, n.State, n.URL, n.Running,
				n.MemFreeMiB, time.Since(n.HeartbeatAt).Round(time.Second), dash(n.Version))
		})
}

func (a *app) nodeDrainCmd() *command {
	return a.nodeStateCmd("drain", "take no new sandboxes on NAME and pause its active ones, to resume elsewhere",
		func(c *stasis.Client, ctx context.Context, name string) (*stasis.NodeInfo, error) {
			return c.DrainNode(ctx, name)
		})
}

func (a *app) nodeActivateCmd() *command {
	return a.nodeStateCmd("activate", "let a drained node NAME take sandboxes again",
		func(c *stasis.Client, ctx context.Context, name string) (*stasis.NodeInfo, error) {
			return c.ActivateNode(ctx, name)
		})
}

func (a *app) nodeStateCmd(name, summary string, do func(*stasis.Client, context.Context, string) (*stasis.NodeInfo, error)) *command {
	return &command{
		name:    name,
		usage:   "NAME",
		summary: summary,
		minArgs: 1, maxArgs: 1,
		flags: func(fs *flag.FlagSet) func(context.Context, []string) int {
			return func(ctx context.Context, args []string) int {
				c, err := a.client()
				if err != nil {
					return a.fail(err, "")
				}
				n, err := do(c, ctx, args[0])
				if err != nil {
					return a.fail(err, "")
				}
				fmt.Fprintf(a.stdout, "%s: %s\n", n.Name, n.State)
				return 0
			}
		},
	}
}
