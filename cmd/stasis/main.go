// Command stasis is the command-line client for stasisd: create, list,
// pause, resume, fork and delete sandboxes, run commands in them, open
// shells, copy files, build templates and save snapshots. Run `stasis help`
// for usage.
package main

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"os/signal"
	"sort"
	"strconv"
	"strings"
	"syscall"
	"text/tabwriter"
	"time"

	stasis "github.com/stasis-sandbox/stasis"
	"golang.org/x/term"
)

func main() {
	a := &app{stdin: os.Stdin, stdout: os.Stdout, stderr: os.Stderr}
	os.Exit(a.run(os.Args[1:]))
}

// app holds the process's streams and the connection flags.
type app struct {
	stdin          *os.File
	stdout, stderr *os.File

	url, apiKey string
}

type command struct {
	name    string
	usage   string // arguments, after the command name
	summary string
	// flags registers the command's own flags; run gets the positional
	// arguments.
	flags func(fs *flag.FlagSet) func(ctx context.Context, args []string) int
	// minArgs/maxArgs bound the positional arguments (maxArgs < 0: any).
	minArgs, maxArgs int
	// ownSignals: the command handles SIGINT/SIGTERM itself.
	ownSignals bool
	// subs makes the command a group ("stasis template create"): the next
	// argument names one of them, and flags and run are unused.
	subs []*command
}

func findCommand(list []*command, name string) *command {
	for _, c := range list {
		if c.name == name {
			return c
		}
	}
	return nil
}

func (a *app) commands() []*command {
	return []*command{
		a.createCmd(), a.lsCmd(), a.infoCmd(), a.execCmd(), a.shellCmd(),
		a.pauseCmd(), a.resumeCmd(), a.killCmd(), a.cpCmd(), a.forkCmd(),
		a.templateCmd(), a.snapshotCmd(), a.networkCmd(), a.previewCmd(), a.secretCmd(), a.nodeCmd(), a.versionCmd(),
	}
}

const globalUsage = `stasis — command-line client for stasis sandboxes

Usage:
  stasis [--url URL] [--api-key KEY] <command> [flags] [arguments]

Commands:
%s
  help [command]   show help for a command

Connection: --url and --api-key (accepted before or after the command),
else $STASIS_URL and $STASIS_API_KEY, else ~/.config/stasis/credentials
(written by 'make run'). The URL defaults to %s.

Every command accepts --help. Most accept --json for machine-readable output.
A sandbox ID may be shortened to any prefix that names one sandbox.
`

func (a *app) usage(w io.Writer) {
	var b strings.Builder
	for _, c := range a.commands() {
		first, _, _ := strings.Cut(c.summary, "\n")
		fmt.Fprintf(&b, "  %-16s %s\n", c.name, strings.TrimSuffix(first, "."))
		for _, sub := range c.subs {
			first, _, _ := strings.Cut(sub.summary, "\n")
			fmt.Fprintf(&b, "    %-14s %s\n", sub.name, strings.TrimSuffix(first, "."))
		}
	}
	fmt.Fprintf(w, globalUsage, strings.TrimRight(b.String(), "\n"), stasis.DefaultURL)
}

// groupUsage lists a command group's subcommands.
func (a *app) groupUsage(w io.Writer, full string, g *command) {
	fmt.Fprintf(w, "Usage: stasis %s <command> [flags] [arguments]\n\n%s\n\nCommands:\n", full, g.summary)
	for _, sub := range g.subs {
		first, _, _ := strings.Cut(sub.summary, "\n")
		fmt.Fprintf(w, "  %-10s %s\n", sub.name, strings.TrimSuffix(first, "."))
	}
	fmt.Fprintf(w, "\nRun 'stasis %s <command> -h' for a command's flags.\n", full)
}

func (a *app) run(args []string) int {
	global := flag.NewFlagSet("stasis", flag.ContinueOnError)
	global.SetOutput(a.stderr)
	a.connFlags(global)
	global.Usage = func() {} // help and errors are printed below
	if err := global.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			a.usage(a.stdout)
			return 0
		}
		fmt.Fprintln(a.stderr, "(see 'stasis help')")
		return 2
	}
	args = global.Args()
	if len(args) == 0 {
		a.usage(a.stderr)
		return 2
	}
	name, args := args[0], args[1:]
	if name == "help" {
		if len(args) == 0 {
			a.usage(a.stdout)
			return 0
		}
		// "help template create" is "template create -h".
		name, args = args[0], append(args[1:len(args):len(args)], "-h")
	}
	cmd := findCommand(a.commands(), name)
	if cmd == nil {
		fmt.Fprintf(a.stderr, "stasis: unknown command %q (see 'stasis help')\n", name)
		return 2
	}
	full := cmd.name
	for cmd.subs != nil {
		if len(args) > 1 && args[0] == "help" {
			args = []string{args[1], "-h"}
		}
		if len(args) == 0 {
			a.groupUsage(a.stderr, full, cmd)
			return 2
		}
		switch args[0] {
		case "-h", "-help", "--help", "help":
			a.groupUsage(a.stdout, full, cmd)
			return 0
		}
		sub := findCommand(cmd.subs, args[0])
		if sub == nil {
			fmt.Fprintf(a.stderr, "stasis: unknown command %q (see 'stasis help %s')\n", full+" "+args[0], full)
			return 2
		}
		full += " " + sub.name
		cmd, args = sub, args[1:]
	}
	fs := flag.NewFlagSet("stasis "+full, flag.ContinueOnError)
	fs.SetOutput(a.stderr)
	a.connFlags(fs)
	runFn := cmd.flags(fs)
	fs.Usage = func() {} // help and errors are printed below
	pos, err := parseInterspersed(fs, args)
	if err != nil {
		if errors.Is(err, flag.ErrHelp) {
			commandHelp(a.stdout, full, cmd, fs)
			return 0
		}
		fmt.Fprintf(a.stderr, "Usage: stasis %s %s\n(see 'stasis %s --help')\n", full, cmd.usage, full)
		return 2
	}
	if len(pos) < cmd.minArgs || (cmd.maxArgs >= 0 && len(pos) > cmd.maxArgs) {
		fmt.Fprintf(a.stderr, "Usage: stasis %s %s\n(see 'stasis %s --help')\n", full, cmd.usage, full)
		return 2
	}
	ctx := context.Background()
	if !cmd.ownSignals {
		var stop context.CancelFunc
		ctx, stop = signal.NotifyContext(ctx, os.Interrupt, syscall.SIGTERM)
		defer stop()
	}
	return runFn(ctx, pos)
}

// connFlagNames are the connection flags every command accepts; command
// help lists them apart from the command's own.
var connFlagNames = map[string]bool{"url": true, "api-key": true}

func (a *app) connFlags(fs *flag.FlagSet) {
	fs.StringVar(&a.url, "url", a.url, "`URL` of stasisd (default $STASIS_URL, credentials file, "+stasis.DefaultURL+")")
	fs.StringVar(&a.apiKey, "api-key", a.apiKey, "the API `KEY` to authenticate with (default $STASIS_API_KEY, then the credentials file)")
}

// commandHelp writes a command's help: usage line, summary and flags, each
// flag spelled as the usage line spells it (--name NAME, -n N).
func commandHelp(w io.Writer, full string, cmd *command, fs *flag.FlagSet) {
	fmt.Fprintf(w, "Usage: stasis %s %s\n\n%s\n", full, cmd.usage, cmd.summary)
	var own, conn [][2]string
	fs.VisitAll(func(f *flag.Flag) {
		if connFlagNames[f.Name] {
			conn = append(conn, flagRow(f, false))
		} else {
			own = append(own, flagRow(f, true))
		}
	})
	for _, sec := range []struct {
		title string
		rows  [][2]string
	}{{"Flags", own}, {"Connection flags (also accepted before the command)", conn}} {
		if len(sec.rows) == 0 {
			continue
		}
		fmt.Fprintf(w, "\n%s:\n", sec.title)
		width := 0
		for _, r := range sec.rows {
			if n := len(r[0]); n > width && n <= 24 {
				width = n
			}
		}
		for _, r := range sec.rows {
			if len(r[0]) > width {
				fmt.Fprintf(w, "  %s\n  %*s  %s\n", r[0], width, "", r[1])
			} else {
				fmt.Fprintf(w, "  %-*s  %s\n", width, r[0], r[1])
			}
		}
	}
}

// flagRow renders one flag as ("--name NAME", "description (default x)").
// The value's name comes from `backquotes` in the description, else from
// the flag's type.
func flagRow(f *flag.Flag, showDefault bool) [2]string {
	dash := "--"
	if len(f.Name) == 1 {
		dash = "-"
	}
	left := dash + f.Name
	valueName, desc := flag.UnquoteUsage(f)
	if bf, ok := f.Value.(interface{ IsBoolFlag() bool }); ok && bf.IsBoolFlag() {
		valueName = ""
	} else if !strings.Contains(f.Usage, "`") {
		switch f.Value.(type) {
		case kvFlag:
			valueName = "k=v"
		case *durationFlag:
			valueName = "D"
		default:
			if valueName == "string" {
				valueName = strings.ToUpper(strings.ReplaceAll(f.Name, "-", "_"))
			} else {
				valueName = "N"
			}
		}
	}
	if valueName != "" {
		left += " " + valueName
	}
	switch f.DefValue {
	case "", "0", "false":
	default:
		if showDefault {
			desc += " (default " + f.DefValue + ")"
		}
	}
	return [2]string{left, desc}
}

// parseInterspersed parses flags that may appear between positional
// arguments. Everything after a "--" is positional.
func parseInterspersed(fs *flag.FlagSet, args []string) ([]string, error) {
	var pos []string
	for {
		if len(args) > 0 && args[0] == "--" {
			return append(pos, args[1:]...), nil
		}
		if err := fs.Parse(args); err != nil {
			return nil, err
		}
		rest := fs.Args()
		if consumed := len(args) - len(rest); consumed > 0 && args[consumed-1] == "--" {
			return append(pos, rest...), nil
		}
		if len(rest) == 0 {
			return pos, nil
		}
		pos = append(pos, rest[0])
		args = rest[1:]
	}
}

// client builds an SDK client from the flags, environment and
// credentials file.
func (a *app) client() (*stasis.Client, error) {
	var opts []stasis.Option
	if a.url != "" {
		opts = append(opts, stasis.WithBaseURL(a.url))
	}
	if a.apiKey != "" {
		opts = append(opts, stasis.WithAPIKey(a.apiKey))
	}
	return stasis.NewClient(opts...)
}

// fail prints err and returns exit status 1. id, when set, names the
// sandbox the failing call was about.
func (a *app) fail(err error, id string) int {
	fmt.Fprintf(a.stderr, "stasis: %s\n", a.describe(err, id))
	return 1
}

func (a *app) describe(err error, id string) string {
	msg := strings.TrimPrefix(err.Error(), "stasis: ")
	var apiErr *stasis.APIError
	switch {
	case id != "" && errors.Is(err, stasis.ErrNotFound):
		return fmt.Sprintf("sandbox %s not found", id)
	case errors.Is(err, syscall.ECONNREFUSED):
		u := a.url
		if c, cerr := a.client(); cerr == nil {
			u = c.BaseURL()
		}
		return fmt.Sprintf("cannot reach stasisd at %s: connection refused (is it running? start it with 'make run', or point --url / STASIS_URL at it)", u)
	case errors.As(err, &apiErr) && errors.Is(err, stasis.ErrAuth):
		return fmt.Sprintf("authentication failed: %s (check --api-key, STASIS_API_KEY or ~/.config/stasis/credentials)", apiErr.Message)
	case errors.As(err, &apiErr) && errors.Is(err, stasis.ErrConflict) && id != "":
		if strings.Contains(apiErr.Message, id) { // the server named it already
			return apiErr.Message
		}
		return fmt.Sprintf("sandbox %s: %s", id, apiErr.Message)
	case errors.As(err, &apiErr) && apiErr.StatusCode == 507:
		return "server storage is full: " + apiErr.Message
	case errors.Is(err, context.Canceled):
		return "interrupted"
	}
	return msg
}

func (a *app) printJSON(v any) int {
	enc := json.NewEncoder(a.stdout)
	enc.SetIndent("", "  ")
	if err := enc.Encode(v); err != nil {
		fmt.Fprintf(a.stderr, "stasis: %v\n", err)
		return 1
	}
	return 0
}

// printList prints what a list command got: JSON, or a table of header and
// one row of tab-separated cells per item. With nothing to list, a non-empty
// `empty` goes to stderr instead of the table.
func printList[T any](a *app, list []T, jsonOut bool, empty, header string, row func(T) string) int {
	if jsonOut {
		return a.printJSON(list)
	}
	if len(list) == 0 && empty != "" {
		fmt.Fprintln(a.stderr, empty)
		return 0
	}
	tw := tabwriter.NewWriter(a.stdout, 0, 0, 2, ' ', 0)
	fmt.Fprintln(tw, header)
	for _, v := range list {
		fmt.Fprintln(tw, row(v))
	}
	tw.Flush()
	return 0
}

// jsonListCmd is an "ls" command with --json as its only flag: fetch gets
// the rows, fail reports its error, and printList prints them.
func jsonListCmd[T any](a *app, summary string, fetch func(*stasis.Client, context.Context) ([]T, error),
	fail func(error, string) int, empty, header string, row func(T) string) *command {
	return &command{
		name:    "ls",
		usage:   "[--json]",
		summary: summary,
		maxArgs: 0,
		flags: func(fs *flag.FlagSet) func(context.Context, []string) int {
			jsonOut := fs.Bool("json", false, "print JSON")
			return func(ctx context.Context, _ []string) int {
				c, err := a.client()
				if err != nil {
					return a.fail(err, "")
				}
				list, err := fetch(c, ctx)
				if err != nil {
					return fail(err, "")
				}
				return printList(a, list, *jsonOut, empty, header, row)
			}
		},
	}
}

func (a *app) isTerminal(f *os.File) bool { return term.IsTerminal(int(f.Fd())) }

// ---------------------------------------------------------------------------
// Flag value types

// kvFlag collects repeated key=value flags.
type kvFlag map[string]string

func (f kvFlag) String() string {
	keys := make([]string, 0, len(f))
	for k := range f {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	for i, k := range keys {
		keys[i] = k + "=" + f[k]
	}
	return strings.Join(keys, ",")
}

func (f kvFlag) Set(s string) error {
	k, v, ok := strings.Cut(s, "=")
	if !ok || k == "" {
		return fmt.Errorf("want key=value, got %q", s)
	}
	f[k] = v
	return nil
}

// durationFlag accepts Go durations ("90s", "10m", "1h30m") or plain
// seconds ("90").
type durationFlag struct{ d time.Duration }

func (f *durationFlag) String() string {
	if f == nil || f.d == 0 {
		return ""
	}
	return f.d.String()
}

func (f *durationFlag) Set(s string) error {
	if n, err := strconv.Atoi(s); err == nil {
		if n < 0 {
			return errors.New("must not be negative")
		}
		f.d = time.Duration(n) * time.Second
		return nil
	}
	d, err := time.ParseDuration(s)
	if err != nil {
		return fmt.Errorf("want a duration like 90s, 10m or 2h, or seconds")
	}
	if d < 0 {
		return errors.New("must not be negative")
	}
	f.d = d
	return nil
}
