package main

import (
	"context"
	"flag"
	"fmt"
	"sort"
	"strings"
	"sync"
	"text/tabwriter"
	"time"

	stasis "github.com/stasis-sandbox/stasis"
)

func (a *app) createCmd() *command {
	return &command{
		name:    "create",
		usage:   "[--name NAME] [--template TEMPLATE | --snapshot SNAPSHOT] [--timeout D] [--auto-delete D] [--metadata k=v]... [--env k=v]... [--allow-out RULE]... [--deny-out CIDR]... [--secret ENV=SECRET]... [--private-preview] [--json]",
		summary: "create a sandbox and print its id",
		maxArgs: 0,
		flags: func(fs *flag.FlagSet) func(context.Context, []string) int {
			name := fs.String("name", "", "sandbox name")
			template := fs.String("template", "", "template to boot from, e.g. stasis/minimal (default: the server's)")
			snapshot := fs.String("snapshot", "", "snapshot id to boot from instead of a template")
			var timeout, autoDelete durationFlag
			fs.Var(&timeout, "timeout", "pause after this much active time, counted from creation and from every resume, whether or not it is busy (e.g. 10m, or seconds)")
			fs.Var(&autoDelete, "auto-delete", "delete this long after being paused (e.g. 24h, or seconds)")
			metadata, env, secrets := kvFlag{}, kvFlag{}, kvFlag{}
			fs.Var(secrets, "secret", "bind a stored secret to an environment variable, ENV=SECRET_NAME (repeatable); the sandbox sees a stand-in token")
			fs.Var(metadata, "metadata", "metadata key=value (repeatable)")
			fs.Var(env, "env", "environment variable key=value for every command (repeatable)")
			var allowOut, denyOut listFlag
			fs.Var(&allowOut, "allow-out", "allow egress to a CIDR or domain (*.example.com: its subdomains); repeatable")
			fs.Var(&denyOut, "deny-out", "deny egress to a CIDR (0.0.0.0/0: everything not allowed); repeatable")
			privatePreview := fs.Bool("private-preview", false, "preview URLs need the sandbox's access token")
			jsonOut := fs.Bool("json", false, "print the sandbox as JSON")
			return func(ctx context.Context, _ []string) int {
				c, err := a.client()
				if err != nil {
					return a.fail(err, "")
				}
				opts := stasis.CreateOptions{
					Name: *name, Template: *template, Snapshot: *snapshot,
					Timeout: timeout.d, AutoDelete: autoDelete.d, PrivatePreview: *privatePreview,
				}
				if allowOut != nil || denyOut != nil {
					opts.Network = &stasis.Network{AllowOut: allowOut, DenyOut: denyOut}
				}
				if len(metadata) > 0 {
					opts.Metadata = metadata
				}
				if len(env) > 0 {
					opts.EnvVars = env
				}
				if len(secrets) > 0 {
					opts.Secrets = secrets
				}
				sb, err := c.Create(ctx, opts)
				if err != nil {
					return a.fail(err, "")
				}
				if *jsonOut {
					return a.printJSON(sb.Snapshot())
				}
				fmt.Fprintln(a.stdout, sb.ID)
				return 0
			}
		},
	}
}

func (a *app) lsCmd() *command {
	return &command{
		name:    "ls",
		usage:   "[--metadata k=v]... [--json]",
		summary: "list sandboxes",
		maxArgs: 0,
		flags: func(fs *flag.FlagSet) func(context.Context, []string) int {
			metadata := kvFlag{}
			fs.Var(metadata, "metadata", "only sandboxes with metadata key=value (repeatable)")
			jsonOut := fs.Bool("json", false, "print JSON")
			return func(ctx context.Context, _ []string) int {
				c, err := a.client()
				if err != nil {
					return a.fail(err, "")
				}
				list, err := c.List(ctx, &stasis.ListOptions{Metadata: metadata})
				if err != nil {
					return a.fail(err, "")
				}
				sort.SliceStable(list, func(i, j int) bool { return list[i].CreatedAt.Before(list[j].CreatedAt) })
				return printList(a, list, *jsonOut, "no sandboxes", "ID\tNAME\tSTATUS\tTEMPLATE\tCREATED\tMETADATA", func(s stasis.SandboxInfo) string {
					return fmt.Sprintf("%s\t%s\t%s\t%s\t%s\t%s", s.ID, dash(s.Name), s.Status, dash(s.Template),
						ago(s.CreatedAt), dash(kvFlag(s.Metadata).String()))
				})
			}
		},
	}
}

func dash(s string) string {
	if s == "" {
		return "-"
	}
	return s
}

// ago renders a time as a short age ("3m ago").
func ago(t time.Time) string {
	if t.IsZero() {
		return "-"
	}
	d := time.Since(t)
	switch {
	case d < time.Minute:
		return fmt.Sprintf("%ds ago", max(int(d.Seconds()), 0))
	case d < time.Hour:
		return fmt.Sprintf("%dm ago", int(d.Minutes()))
	case d < 48*time.Hour:
		return fmt.Sprintf("%dh ago", int(d.Hours()))
	}
	return fmt.Sprintf("%dd ago", int(d.Hours()/24))
}

func (a *app) infoCmd() *command {
	return &command{
		name:    "info",
		usage:   "ID [--json]",
		summary: "show a sandbox's details (without resuming it)",
		minArgs: 1, maxArgs: 1,
		flags: func(fs *flag.FlagSet) func(context.Context, []string) int {
			jsonOut := fs.Bool("json", false, "print JSON")
			return func(ctx context.Context, args []string) int {
				c, id, status := a.resolveOne(ctx, args[0])
				if status != 0 {
					return status
				}
				in, err := c.Get(ctx, id)
				if err != nil {
					return a.fail(err, id)
				}
				if *jsonOut {
					return a.printJSON(in)
				}
				tw := tabwriter.NewWriter(a.stdout, 0, 0, 2, ' ', 0)
				row := func(k, v string) { fmt.Fprintf(tw, "%s:\t%s\n", k, v) }
				row("ID", in.ID)
				row("Name", dash(in.Name))
				row("Status", string(in.Status))
				row("Template", dash(in.Template))
				row("vCPUs", fmt.Sprint(in.VCPUCount))
				row("Memory", fmt.Sprintf("%d MiB", in.MemoryMiB))
				row("Created", fmt.Sprintf("%s (%s)", in.CreatedAt.Local().Format(time.RFC3339), ago(in.CreatedAt)))
				row("Timeout", durOrNone(in.Timeout))
				ad := durOrNone(in.AutoDelete)
				if !in.AutoDeleteAt.IsZero() {
					ad += " (at " + in.AutoDeleteAt.Local().Format(time.RFC3339) + ")"
				}
				row("Auto-delete", ad)
				row("Metadata", dash(kvFlag(in.Metadata).String()))
				tw.Flush()
				return 0
			}
		},
	}
}

func durOrNone(d time.Duration) string {
	if d == 0 {
		return "none"
	}
	return d.String()
}

// forEach runs fn for every id concurrently, printing a line per success
// and an error per failure, and returns 1 if anything failed. With
// sandboxes, each id is first resolved to a full sandbox id (see
// idResolver); errors still name the id as the user typed it.
func (a *app) forEach(ctx context.Context, ids []string, sandboxes, jsonOut bool, fn func(ctx context.Context, c *stasis.Client, id string) (any, string, error)) int {
	c, err := a.client()
	if err != nil {
		return a.fail(err, "")
	}
	r := newIDResolver(c)
	type outcome struct {
		v    any
		line string
		err  error
	}
	out := make([]outcome, len(ids))
	var wg sync.WaitGroup
	for i, id := range ids {
		wg.Add(1)
		go func() {
			defer wg.Done()
			if sandboxes {
				full, err := r.resolve(ctx, id)
				if err != nil {
					out[i] = outcome{err: err}
					return
				}
				id = full
			}
			v, line, err := fn(ctx, c, id)
			out[i] = outcome{v, line, err}
		}()
	}
	wg.Wait()
	status := 0
	var results []any
	for i, o := range out {
		if o.err != nil {
			a.fail(o.err, ids[i])
			status = 1
			continue
		}
		if jsonOut {
			results = append(results, o.v)
		} else {
			fmt.Fprintln(a.stdout, o.line)
		}
	}
	if jsonOut {
		if results == nil {
			results = []any{}
		}
		if a.printJSON(results) != 0 {
			return 1
		}
	}
	return status
}

func (a *app) pauseCmd() *command {
	return &command{
		name:    "pause",
		usage:   "ID... [--json]",
		summary: "checkpoint sandboxes to disk (processes resume where they left off)",
		minArgs: 1, maxArgs: -1,
		flags: func(fs *flag.FlagSet) func(context.Context, []string) int {
			jsonOut := fs.Bool("json", false, "print JSON")
			return func(ctx context.Context, ids []string) int {
				return a.forEach(ctx, ids, true, *jsonOut, func(ctx context.Context, c *stasis.Client, id string) (any, string, error) {
					in, err := c.PauseByID(ctx, id)
					if err != nil {
						return nil, "", err
					}
					return in, fmt.Sprintf("%s %s", id, in.Status), nil
				})
			}
		},
	}
}

func (a *app) resumeCmd() *command {
	return &command{
		name:    "resume",
		usage:   "ID... [--json]",
		summary: "resume paused sandboxes",
		minArgs: 1, maxArgs: -1,
		flags: func(fs *flag.FlagSet) func(context.Context, []string) int {
			jsonOut := fs.Bool("json", false, "print JSON")
			return func(ctx context.Context, ids []string) int {
				return a.forEach(ctx, ids, true, *jsonOut, func(ctx context.Context, c *stasis.Client, id string) (any, string, error) {
					sb, err := c.ResumeByID(ctx, id)
					if err != nil {
						return nil, "", err
					}
					in := sb.Snapshot()
					return in, fmt.Sprintf("%s %s", id, in.Status), nil
				})
			}
		},
	}
}

func (a *app) killCmd() *command {
	return &command{
		name:    "kill",
		usage:   "ID... [--json]",
		summary: "delete sandboxes",
		minArgs: 1, maxArgs: -1,
		flags: func(fs *flag.FlagSet) func(context.Context, []string) int {
			jsonOut := fs.Bool("json", false, "print JSON")
			return func(ctx context.Context, ids []string) int {
				return a.forEach(ctx, ids, true, *jsonOut, func(ctx context.Context, c *stasis.Client, id string) (any, string, error) {
					if err := c.KillByID(ctx, id); err != nil {
						return nil, "", err
					}
					return map[string]any{"id": id, "killed": true}, id + " killed", nil
				})
			}
		},
	}
}

func (a *app) versionCmd() *command {
	return &command{
		name:    "version",
		summary: "print the client version",
		maxArgs: 0,
		flags: func(fs *flag.FlagSet) func(context.Context, []string) int {
			return func(context.Context, []string) int {
				fmt.Fprintln(a.stdout, "stasis "+stasis.Version)
				return 0
			}
		},
	}
}

// shellQuote quotes s for a POSIX shell.
func shellQuote(s string) string {
	if s != "" && strings.IndexFunc(s, func(r rune) bool {
		return !(r >= 'a' && r <= 'z' || r >= 'A' && r <= 'Z' || r >= '0' && r <= '9' || strings.ContainsRune("_@%+=:,./-", r))
	}) < 0 {
		return s
	}
	return "'" + strings.ReplaceAll(s, "'", `'\''`) + "'"
}
