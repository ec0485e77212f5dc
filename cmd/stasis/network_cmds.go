package main

import (
	"context"
	"flag"
	"fmt"
	"strconv"
	"strings"
	"text/tabwriter"
	"time"

	stasis "github.com/stasis-sandbox/stasis"
)

// listFlag collects a repeated flag's values.
type listFlag []string

func (f *listFlag) String() string     { return strings.Join(*f, ",") }
func (f *listFlag) Set(s string) error { *f = append(*f, s); return nil }

func (a *app) networkCmd() *command {
	return &command{
		name:    "network",
		summary: "a sandbox's network: the log of its outbound connections",
		subs:    []*command{a.networkLogCmd()},
	}
}

func (a *app) networkLogCmd() *command {
	return &command{
		name:    "log",
		usage:   "[-f] [--limit N] [--verdict allowed|blocked|failed] ID",
		summary: "print a sandbox's outbound connections, oldest of the page first (-f: keep following)",
		minArgs: 1, maxArgs: 1,
		flags: func(fs *flag.FlagSet) func(context.Context, []string) int {
			follow := fs.Bool("f", false, "follow: print new connections as they are logged, until interrupted")
			limit := fs.Int("limit", 50, "how many of the newest connections to print first (1-200)")
			verdict := fs.String("verdict", "", "only connections with this verdict")
			jsonOut := fs.Bool("json", false, "print JSON lines")
			return func(ctx context.Context, args []string) int {
				c, err := a.client()
				if err != nil {
					return a.fail(err, "")
				}
				id := args[0]
				page, err := c.NetworkLogByID(ctx, id, stasis.NetworkLogOptions{Limit: *limit, Verdict: *verdict})
				if err != nil {
					return a.fail(err, id)
				}
				tw := tabwriter.NewWriter(a.stdout, 0, 4, 2, ' ', 0)
				if !*jsonOut {
					fmt.Fprintln(tw, "TIME\tVERDICT\tHOST\tDESTINATION\tRULE\tSENT\tRECEIVED")
				}
				var last int64
				print := func(evs []stasis.NetworkEvent) {
					for i := len(evs) - 1; i >= 0; i-- { // oldest first, like a log
						e := evs[i]
						last = max(last, e.ID)
						if *jsonOut {
							a.printJSON(e)
							continue
						}
						fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%d\t%d\n", e.Time.Local().Format("15:04:05.000"), e.Verdict,
							dash(e.Host), e.DstIP+":"+strconv.Itoa(e.DstPort), dash(e.MatchRule), e.BytesSent, e.BytesRecv)
					}
					tw.Flush()
				}
				print(page.Events)
				if !*follow {
					return 0
				}
				// Follow: poll for rows newer than the newest printed, until
				// interrupted.
				for {
					select {
					case <-ctx.Done():
						return 0
					case <-time.After(time.Second):
					}
					var fresh []stasis.NetworkEvent
					for p, err := range c.NetworkLogPages(ctx, id, stasis.NetworkLogOptions{Limit: 200, Verdict: *verdict}) {
						if err != nil {
							if ctx.Err() != nil {
								return 0
							}
							return a.fail(err, id)
						}
						done := false
						for _, e := range p.Events {
							if e.ID <= last {
								done = true
								break
							}
							fresh = append(fresh, e)
						}
						if done {
							break
						}
					}
					print(fresh)
				}
			}
		},
	}
}

func (a *app) previewCmd() *command {
	return &command{
		name:    "preview",
		usage:   "[--link] ID PORT",
		summary: "print the URL of a port in a sandbox (requests to it wake a paused sandbox)",
		minArgs: 2, maxArgs: 2,
		flags: func(fs *flag.FlagSet) func(context.Context, []string) int {
			link := fs.Bool("link", false, "print a one-time link that opens a private preview in a browser")
			return func(ctx context.Context, args []string) int {
				c, err := a.client()
				if err != nil {
					return a.fail(err, "")
				}
				port, err := strconv.Atoi(args[1])
				if err != nil {
					return a.fail(fmt.Errorf("PORT must be a number, not %q", args[1]), "")
				}
				if *link {
					l, err := c.PreviewLink(ctx, args[0], port)
					if err != nil {
						return a.fail(err, args[0])
					}
					fmt.Fprintln(a.stdout, l)
					return 0
				}
				u, err := c.PreviewURL(args[0], port)
				if err != nil {
					return a.fail(err, args[0])
				}
				fmt.Fprintln(a.stdout, u)
				return 0
			}
		},
	}
}
