package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"strings"
	"sync"
	"text/tabwriter"
	"time"

	stasis "github.com/stasis-sandbox/stasis"
)

func (a *app) templateCmd() *command {
	return &command{
		name:    "template",
		summary: "build and manage templates (sandbox images with processes already running)",
		subs: []*command{
			a.templateCreateCmd(), a.templateLsCmd(), a.templateInfoCmd(), a.templateRmCmd(),
			a.templateRebuildCmd(), a.templateLogsCmd(), a.templateCancelCmd(),
		},
	}
}

// failTemplate is fail for calls about a named template.
func (a *app) failTemplate(err error, name string) int {
	if errors.Is(err, stasis.ErrNotFound) && name != "" {
		fmt.Fprintf(a.stderr, "stasis: template %s not found\n", name)
		return 1
	}
	return a.fail(err, "")
}

// logPrinter writes build log events to w: step output as it comes,
// builder messages ("system") as "==> " lines.
type logPrinter struct {
	mu      sync.Mutex
	w       io.Writer
	midLine bool // the last text written did not end a line
}

func (p *logPrinter) event(ev stasis.BuildLogEvent) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if ev.Text == "" {
		return
	}
	if ev.Stream != "system" {
		io.WriteString(p.w, ev.Text)
		p.midLine = !strings.HasSuffix(ev.Text, "\n")
		return
	}
	if p.midLine {
		io.WriteString(p.w, "\n")
	}
	// A message may span lines (a multi-line step command): indent the rest.
	for i, line := range strings.Split(strings.TrimRight(ev.Text, "\n"), "\n") {
		prefix := "==> "
		if i > 0 {
			prefix = "    "
		}
		io.WriteString(p.w, prefix+line+"\n")
	}
	p.midLine = false
}

func (p *logPrinter) endLine() {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.midLine {
		io.WriteString(p.w, "\n")
		p.midLine = false
	}
}

// buildFlags are the flags of the commands that start a build.
type buildFlags struct {
	wait, noWait, quiet, jsonOut *bool
}

func addBuildFlags(fs *flag.FlagSet) buildFlags {
	return buildFlags{
		wait:    fs.Bool("wait", true, "wait for the build, following its log (--wait=false is --no-wait)"),
		noWait:  fs.Bool("no-wait", false, "start the build and return at once"),
		quiet:   fs.Bool("quiet", false, "wait without printing the build log"),
		jsonOut: fs.Bool("json", false, "print the result as JSON"),
	}
}

func (f buildFlags) detach() bool { return *f.noWait || !*f.wait }

// awaitBuild waits for a template build, printing its log to stderr
// unless quiet, and reports the outcome. It returns the exit status.
func (a *app) awaitBuild(ctx context.Context, tpl *stasis.Template, buildID string, f buildFlags) int {
	opts := &stasis.WaitOptions{BuildID: buildID}
	lp := &logPrinter{w: a.stderr}
	if !*f.quiet {
		opts.OnLog = lp.event
	}
	ready, err := tpl.WaitUntilReady(ctx, opts)
	lp.endLine()
	var be *stasis.BuildError
	switch {
	case errors.As(err, &be) && be.Code == stasis.BuildCodeCancelled:
		fmt.Fprintf(a.stderr, "stasis: template %s: build %s was cancelled\n", tpl.Name, buildID)
		return 1
	case errors.As(err, &be):
		fmt.Fprintf(a.stderr, "stasis: template %s: build %s failed: %s: %s\n", tpl.Name, buildID, be.Code, be.Message)
		return 1
	case errors.Is(err, context.Canceled):
		fmt.Fprintf(a.stderr, "stasis: interrupted; build %s goes on on the server: follow it with 'stasis template logs %s', stop it with 'stasis template cancel %s'\n",
			buildID, tpl.Name, tpl.Name)
		return 1
	case err != nil:
		return a.failTemplate(err, tpl.Name)
	}
	if *f.jsonOut {
		return a.printJSON(ready)
	}
	fmt.Fprintf(a.stderr, "template %s is ready; create sandboxes with 'stasis create --template %s'\n", ready.Name, ready.Name)
	fmt.Fprintln(a.stdout, ready.ID)
	return 0
}

func (a *app) templateCreateCmd() *command {
	return &command{
		name:  "create",
		usage: "-f FILE [--name NAME] [--no-wait | --quiet] [--json]",
		summary: "build a template from a YAML file, following the build log\n\n" +
			"The build log goes to stderr; the template's id is printed on stdout once\n" +
			"it is ready. A failed build exits 1 with its error code (e.g. step_failed).\n" +
			"FILE - reads standard input.\n\n" + templateFileHelp,
		maxArgs: 0,
		flags: func(fs *flag.FlagSet) func(context.Context, []string) int {
			file := fs.String("f", "", "template `FILE` (YAML or JSON; - for stdin)")
			name := fs.String("name", "", "template name (overrides the file's)")
			bf := addBuildFlags(fs)
			return func(ctx context.Context, _ []string) int {
				if *file == "" {
					fmt.Fprintln(a.stderr, "stasis: template create needs -f FILE (see 'stasis template create -h')")
					return 2
				}
				var r io.Reader = a.stdin
				if *file != "-" {
					f, err := os.Open(*file)
					if err != nil {
						fmt.Fprintf(a.stderr, "stasis: %v\n", err)
						return 1
					}
					defer f.Close()
					r = f
				}
				spec, err := parseTemplateFile(r)
				if err != nil {
					fmt.Fprintf(a.stderr, "stasis: %s: %v\n", *file, err)
					return 1
				}
				if *name != "" {
					spec.Name = *name
				}
				if spec.Name == "" {
					fmt.Fprintf(a.stderr, "stasis: %s: \"name\" is required (or pass --name)\n", *file)
					return 1
				}
				c, err := a.client()
				if err != nil {
					return a.fail(err, "")
				}
				tpl, err := c.CreateTemplate(ctx, spec)
				var apiErr *stasis.APIError
				if errors.As(err, &apiErr) && apiErr.StatusCode == 409 {
					fmt.Fprintf(a.stderr, "stasis: %s (rebuild it with 'stasis template rebuild %s', or delete it with 'stasis template rm %s')\n",
						apiErr.Message, spec.Name, spec.Name)
					return 1
				} else if err != nil {
					return a.fail(err, "")
				}
				if bf.detach() {
					if *bf.jsonOut {
						return a.printJSON(tpl)
					}
					fmt.Fprintf(a.stderr, "build %s of template %s started; follow it with 'stasis template logs %s'\n",
						tpl.LatestBuildID, tpl.Name, tpl.Name)
					fmt.Fprintln(a.stdout, tpl.ID)
					return 0
				}
				return a.awaitBuild(ctx, tpl, tpl.LatestBuildID, bf)
			}
		},
	}
}

func (a *app) templateRebuildCmd() *command {
	return &command{
		name:  "rebuild",
		usage: "NAME [--no-wait | --quiet] [--json]",
		summary: "build a template again, following the build log\n\n" +
			"If the template is unchanged and its build is ready or in progress, that\n" +
			"build is used instead of starting another.",
		minArgs: 1, maxArgs: 1,
		flags: func(fs *flag.FlagSet) func(context.Context, []string) int {
			bf := addBuildFlags(fs)
			return func(ctx context.Context, args []string) int {
				tpl, code := a.getTemplate(ctx, args[0])
				if tpl == nil {
					return code
				}
				b, err := tpl.Rebuild(ctx)
				if err != nil {
					return a.failTemplate(err, args[0])
				}
				if b.Status == stasis.BuildReady || bf.detach() {
					if *bf.jsonOut {
						return a.printJSON(b)
					}
					if b.Status == stasis.BuildReady {
						fmt.Fprintf(a.stderr, "template %s is unchanged: build %s is ready\n", tpl.Name, b.ID)
					} else {
						fmt.Fprintf(a.stderr, "build %s of template %s is %s; follow it with 'stasis template logs %s'\n", b.ID, tpl.Name, b.Status, tpl.Name)
					}
					fmt.Fprintln(a.stdout, b.ID)
					return 0
				}
				return a.awaitBuild(ctx, tpl, b.ID, bf)
			}
		},
	}
}

func (a *app) templateLsCmd() *command {
	return &command{
		name:    "ls",
		usage:   "[--prefix PREFIX] [--json]",
		summary: "list templates",
		maxArgs: 0,
		flags: func(fs *flag.FlagSet) func(context.Context, []string) int {
			prefix := fs.String("prefix", "", "only templates whose names start with this")
			jsonOut := fs.Bool("json", false, "print JSON")
			return func(ctx context.Context, _ []string) int {
				c, err := a.client()
				if err != nil {
					return a.fail(err, "")
				}
				list, err := c.ListTemplates(ctx, *prefix)
				if err != nil {
					return a.fail(err, "")
				}
				return printList(a, list, *jsonOut, "no templates (built-ins such as stasis/minimal are always there)", "NAME\tID\tSTATUS\tVCPU\tMEMORY\tSIZE\tBUILT", func(t *stasis.Template) string {
					size := "-"
					if t.SizeBytes > 0 {
						size = humanBytes(t.SizeBytes)
					}
					return fmt.Sprintf("%s\t%s\t%s\t%d\t%d MiB\t%s\t%s", t.Name, t.ID, t.Status, t.VCPU, t.MemoryMiB, size, ago(t.BuiltAt))
				})
			}
		},
	}
}

func (a *app) templateInfoCmd() *command {
	return &command{
		name:    "info",
		usage:   "NAME [--builds N] [--json]",
		summary: "show a template and its recent builds",
		minArgs: 1, maxArgs: 1,
		flags: func(fs *flag.FlagSet) func(context.Context, []string) int {
			nBuilds := fs.Int("builds", 5, "how many recent builds to show")
			jsonOut := fs.Bool("json", false, "print JSON")
			return func(ctx context.Context, args []string) int {
				tpl, code := a.getTemplate(ctx, args[0])
				if tpl == nil {
					return code
				}
				var builds []stasis.Build
				if *nBuilds > 0 {
					var err error
					if builds, err = tpl.Builds(ctx, *nBuilds); err != nil {
						return a.failTemplate(err, args[0])
					}
				}
				if *jsonOut {
					if builds == nil {
						builds = []stasis.Build{}
					}
					return a.printJSON(struct {
						*stasis.Template
						Builds []stasis.Build `json:"builds"`
					}{tpl, builds})
				}
				tw := tabwriter.NewWriter(a.stdout, 0, 0, 2, ' ', 0)
				row := func(k, v string) { fmt.Fprintf(tw, "%s:\t%s\n", k, v) }
				row("Name", tpl.Name)
				row("ID", tpl.ID)
				row("Status", string(tpl.Status))
				if tpl.ErrorMessage != "" {
					row("Error", tpl.ErrorMessage)
				}
				row("vCPUs", fmt.Sprint(tpl.VCPU))
				row("Memory", fmt.Sprintf("%d MiB", tpl.MemoryMiB))
				if tpl.DiskMiB > 0 {
					row("Disk", fmt.Sprintf("%d MiB", tpl.DiskMiB))
				}
				if tpl.SizeBytes > 0 {
					row("Snapshot", humanBytes(tpl.SizeBytes))
				}
				row("Created", fmt.Sprintf("%s (%s)", tpl.CreatedAt.Local().Format(time.RFC3339), ago(tpl.CreatedAt)))
				if !tpl.BuiltAt.IsZero() {
					row("Built", fmt.Sprintf("%s (%s)", tpl.BuiltAt.Local().Format(time.RFC3339), ago(tpl.BuiltAt)))
				}
				tw.Flush()
				if len(builds) > 0 {
					fmt.Fprintln(a.stdout, "\nBuilds (newest first):")
					tw = tabwriter.NewWriter(a.stdout, 0, 0, 2, ' ', 0)
					fmt.Fprintln(tw, "  ID\tSTATUS\tCREATED\tTOOK\tERROR")
					for _, b := range builds {
						took := "-"
						if !b.StartedAt.IsZero() && !b.FinalizedAt.IsZero() {
							took = b.FinalizedAt.Sub(b.StartedAt).Round(100 * time.Millisecond).String()
						}
						fmt.Fprintf(tw, "  %s\t%s\t%s\t%s\t%s\n", b.ID, b.Status, ago(b.CreatedAt), took, dash(firstLine(b.ErrorMessage)))
					}
					tw.Flush()
				}
				return 0
			}
		},
	}
}

func firstLine(s string) string {
	line, _, _ := strings.Cut(s, "\n")
	return line
}

func (a *app) templateRmCmd() *command {
	return &command{
		name:    "rm",
		usage:   "NAME... [--json]",
		summary: "delete templates (sandboxes made from them keep running)",
		minArgs: 1, maxArgs: -1,
		flags: func(fs *flag.FlagSet) func(context.Context, []string) int {
			jsonOut := fs.Bool("json", false, "print JSON")
			return func(ctx context.Context, names []string) int {
				return a.forEach(ctx, names, false, *jsonOut, func(ctx context.Context, c *stasis.Client, name string) (any, string, error) {
					if err := c.DeleteTemplate(ctx, name); err != nil {
						return nil, "", err
					}
					return map[string]any{"name": name, "deleted": true}, name + " deleted", nil
				})
			}
		},
	}
}

// getTemplate fetches template name, or reports why it cannot and returns
// the exit code.
func (a *app) getTemplate(ctx context.Context, name string) (*stasis.Template, int) {
	c, err := a.client()
	if err != nil {
		return nil, a.fail(err, "")
	}
	tpl, err := c.GetTemplate(ctx, name)
	if err != nil {
		return nil, a.failTemplate(err, name)
	}
	return tpl, 0
}

// templateBuild resolves NAME [BUILD] to a template and a build id (the
// latest build when none is given).
func (a *app) templateBuild(ctx context.Context, args []string) (*stasis.Template, string, int) {
	tpl, code := a.getTemplate(ctx, args[0])
	if tpl == nil {
		return nil, "", code
	}
	if len(args) > 1 {
		return tpl, args[1], 0
	}
	if tpl.LatestBuildID != "" {
		return tpl, tpl.LatestBuildID, 0
	}
	builds, err := tpl.Builds(ctx, 1)
	if err != nil {
		return nil, "", a.failTemplate(err, args[0])
	}
	if len(builds) == 0 {
		fmt.Fprintf(a.stderr, "stasis: template %s has no builds\n", tpl.Name)
		return nil, "", 1
	}
	return tpl, builds[0].ID, 0
}

func (a *app) templateLogsCmd() *command {
	return &command{
		name:  "logs",
		usage: "NAME [BUILD]",
		summary: "print a build's log, following it until the build ends\n\n" +
			"BUILD defaults to the latest build. Exits 1 if the build failed or was\n" +
			"cancelled.",
		minArgs: 1, maxArgs: 2,
		flags: func(fs *flag.FlagSet) func(context.Context, []string) int {
			return func(ctx context.Context, args []string) int {
				tpl, buildID, code := a.templateBuild(ctx, args)
				if tpl == nil {
					return code
				}
				lp := &logPrinter{w: a.stdout}
				var final stasis.BuildStatus
				err := tpl.FollowLogs(ctx, buildID, func(ev stasis.BuildLogEvent) {
					lp.event(ev)
					if ev.Finished {
						final = ev.Status
					}
				})
				lp.endLine()
				if errors.Is(err, stasis.ErrNotFound) {
					fmt.Fprintf(a.stderr, "stasis: build %s of template %s not found\n", buildID, tpl.Name)
					return 1
				} else if err != nil {
					return a.fail(err, "")
				}
				if final == stasis.BuildFailed || final == stasis.BuildCancelled {
					b, err := tpl.Build(ctx, buildID)
					if err != nil {
						return a.fail(err, "")
					}
					if be := (*stasis.BuildError)(nil); errors.As(b.Err(), &be) && be.Code != stasis.BuildCodeCancelled {
						fmt.Fprintf(a.stderr, "stasis: build %s failed: %s: %s\n", buildID, be.Code, be.Message)
					} else {
						fmt.Fprintf(a.stderr, "stasis: build %s was cancelled\n", buildID)
					}
					return 1
				}
				return 0
			}
		},
	}
}

func (a *app) templateCancelCmd() *command {
	return &command{
		name:    "cancel",
		usage:   "NAME [BUILD]",
		summary: "stop a build in progress (default: the latest build)",
		minArgs: 1, maxArgs: 2,
		flags: func(fs *flag.FlagSet) func(context.Context, []string) int {
			return func(ctx context.Context, args []string) int {
				tpl, buildID, code := a.templateBuild(ctx, args)
				if tpl == nil {
					return code
				}
				b, err := tpl.Build(ctx, buildID)
				if err != nil {
					return a.failTemplate(err, args[0])
				}
				if b.Status.Done() {
					fmt.Fprintf(a.stdout, "build %s already %s\n", b.ID, b.Status)
					return 0
				}
				if err := tpl.CancelBuild(ctx, buildID); err != nil {
					return a.failTemplate(err, args[0])
				}
				fmt.Fprintf(a.stdout, "build %s cancelled\n", buildID)
				return 0
			}
		},
	}
}
