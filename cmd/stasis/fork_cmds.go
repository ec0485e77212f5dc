package main

import (
	"context"
	"errors"
	"flag"
	"fmt"

	stasis "github.com/stasis-sandbox/stasis"
)

func (a *app) forkCmd() *command {
	return &command{
		name:  "fork",
		usage: "ID [-n N] [--pause] [--json]",
		summary: "make new sandboxes that continue from a paused sandbox, print their ids\n\n" +
			"Each fork has the paused sandbox's memory, processes and files, with its own\n" +
			"identity and network address, and diverges from then on. The original stays\n" +
			"paused. --pause pauses an active sandbox first.",
		minArgs: 1, maxArgs: 1,
		flags: func(fs *flag.FlagSet) func(context.Context, []string) int {
			n := fs.Int("n", 1, fmt.Sprintf("how many forks (1..%d)", stasis.MaxForks))
			pause := fs.Bool("pause", false, "pause the sandbox first if it is active")
			jsonOut := fs.Bool("json", false, "print the new sandboxes as JSON")
			return func(ctx context.Context, args []string) int {
				if *n < 1 || *n > stasis.MaxForks {
					fmt.Fprintf(a.stderr, "stasis: -n must be between 1 and %d\n", stasis.MaxForks)
					return 2
				}
				c, id, status := a.resolveOne(ctx, args[0])
				if status != 0 {
					return status
				}
				if *pause {
					in, err := c.Get(ctx, id)
					if err != nil {
						return a.fail(err, id)
					}
					if in.Status != stasis.StatusPaused {
						if _, err := c.PauseByID(ctx, id); err != nil {
							return a.fail(err, id)
						}
					}
				}
				forks, err := c.ForkByID(ctx, id, *n)
				var fe *stasis.ForkError
				switch {
				case errors.As(err, &fe):
					status = 1 // print the forks that were made, then the error
				case errors.Is(err, stasis.ErrConflict):
					var apiErr *stasis.APIError
					errors.As(err, &apiErr)
					fmt.Fprintf(a.stderr, "stasis: %s (pause it with 'stasis pause %s', or pass --pause)\n", apiErr.Message, id)
					return 1
				case err != nil:
					return a.fail(err, id)
				}
				if *jsonOut {
					infos := make([]stasis.SandboxInfo, 0, len(forks))
					for _, f := range forks {
						infos = append(infos, f.Snapshot())
					}
					if a.printJSON(infos) != 0 {
						return 1
					}
				} else {
					for _, f := range forks {
						fmt.Fprintln(a.stdout, f.ID)
					}
				}
				if fe != nil {
					fmt.Fprintf(a.stderr, "stasis: only %d of %d forks were made: %s\n", fe.Created, fe.Requested, fe.Message)
				}
				return status
			}
		},
	}
}

func (a *app) snapshotCmd() *command {
	return &command{
		name:    "snapshot",
		summary: "save sandboxes' state as snapshots to create new sandboxes from",
		subs:    []*command{a.snapshotSaveCmd(), a.snapshotLsCmd(), a.snapshotRmCmd()},
	}
}

// failSnapshots explains a 404 from a server without saved snapshots.
func (a *app) failSnapshots(err error, id string) int {
	var apiErr *stasis.APIError
	if errors.As(err, &apiErr) && apiErr.StatusCode == 404 && id == "" {
		fmt.Fprintf(a.stderr, "stasis: %s (does this stasisd support saved snapshots?)\n", apiErr.Message)
		return 1
	}
	return a.fail(err, id)
}

func (a *app) snapshotSaveCmd() *command {
	return &command{
		name:  "save",
		usage: "ID [--name NAME] [--json]",
		summary: "save a sandbox's state (memory, processes, files) and print the snapshot id\n\n" +
			"Create sandboxes from it with 'stasis create --snapshot SNAPSHOT_ID'.",
		minArgs: 1, maxArgs: 1,
		flags: func(fs *flag.FlagSet) func(context.Context, []string) int {
			name := fs.String("name", "", "snapshot name")
			jsonOut := fs.Bool("json", false, "print JSON")
			return func(ctx context.Context, args []string) int {
				c, id, status := a.resolveOne(ctx, args[0])
				if status != 0 {
					return status
				}
				snap, err := c.SaveSnapshotByID(ctx, id, *name)
				if err != nil {
					return a.fail(err, id)
				}
				if *jsonOut {
					return a.printJSON(snap)
				}
				fmt.Fprintln(a.stdout, snap.ID)
				return 0
			}
		},
	}
}

func (a *app) snapshotLsCmd() *command {
	return jsonListCmd(a, "list saved snapshots", (*stasis.Client).ListSnapshots, a.failSnapshots,
		"no snapshots", "ID\tNAME\tSANDBOX\tSIZE\tCREATED", func(s stasis.SnapshotInfo) string {
			return fmt.Sprintf("%s\t%s\t%s\t%s\t%s", s.ID, dash(s.Name), s.SandboxID, humanBytes(s.SizeBytes), ago(s.CreatedAt))
		})
}

func (a *app) snapshotRmCmd() *command {
	return &command{
		name:    "rm",
		usage:   "SNAPSHOT_ID... [--json]",
		summary: "delete saved snapshots (sandboxes made from them keep running)",
		minArgs: 1, maxArgs: -1,
		flags: func(fs *flag.FlagSet) func(context.Context, []string) int {
			jsonOut := fs.Bool("json", false, "print JSON")
			return func(ctx context.Context, ids []string) int {
				return a.forEach(ctx, ids, false, *jsonOut, func(ctx context.Context, c *stasis.Client, id string) (any, string, error) {
					if err := c.DeleteSnapshot(ctx, id); err != nil {
						return nil, "", err
					}
					return map[string]any{"id": id, "deleted": true}, id + " deleted", nil
				})
			}
		},
	}
}
