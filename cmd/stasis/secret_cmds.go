package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"strconv"
	"strings"

	stasis "github.com/stasis-sandbox/stasis"
)

func (a *app) secretCmd() *command {
	return &command{
		name:    "secret",
		summary: "secrets injected into sandboxes' outbound requests (the sandbox only sees a stand-in)",
		subs:    []*command{a.secretCreateCmd(), a.secretLsCmd(), a.secretRmCmd(), a.secretRotateCmd(), a.secretAuditCmd()},
	}
}

// readValue reads a secret's value from stdin (never argv, where other
// users of the machine can see it), without its final newline.
func (a *app) readValue() (string, error) {
	b, err := io.ReadAll(io.LimitReader(a.stdin, 64<<10))
	if err != nil {
		return "", fmt.Errorf("reading the value from stdin: %w", err)
	}
	v := strings.TrimSuffix(strings.TrimSuffix(string(b), "\n"), "\r")
	if v == "" {
		return "", errors.New("no value on stdin (e.g. `stasis secret create NAME --provider openai < key.txt`)")
	}
	return v, nil
}

func (a *app) secretCreateCmd() *command {
	return &command{
		name:    "create",
		usage:   "NAME (--provider P | --auth bearer|basic|api-key|custom --host H... [--header H] [--prefix P] [--username U] [--template HEADER=TEMPLATE]...) < value",
		summary: "store a secret; its value is read from stdin",
		minArgs: 1, maxArgs: 1,
		flags: func(fs *flag.FlagSet) func(context.Context, []string) int {
			provider := fs.String("provider", "", "a provider shortcut (GET /providers lists them): anthropic, openai, github, gemini, …")
			authType := fs.String("auth", "", "how the value is sent: bearer, basic, api-key or custom")
			header := fs.String("header", "", "api-key: the header name")
			prefix := fs.String("prefix", "", "api-key: a prefix before the value, e.g. \"Token \"")
			username := fs.String("username", "", "basic: the username")
			templates := kvFlag{}
			fs.Var(templates, "template", "custom: HEADER=TEMPLATE, the template using {{ value }} (repeatable)")
			var hosts listFlag
			fs.Var(&hosts, "host", "a host the secret may be sent to (*.example.com: its subdomains); repeatable")
			jsonOut := fs.Bool("json", false, "print the secret as JSON")
			return func(ctx context.Context, args []string) int {
				value, err := a.readValue()
				if err != nil {
					return a.fail(err, "")
				}
				opts := stasis.SecretCreateOptions{Name: args[0], Value: value, Provider: *provider, Hosts: hosts}
				if *authType != "" {
					rule := stasis.SecretAuthRule{Type: *authType, Header: *header, Prefix: *prefix, Username: *username}
					if len(templates) > 0 {
						rule.Headers = templates
					}
					opts.Auth = &stasis.SecretAuth{Rule: rule}
				}
				c, err := a.client()
				if err != nil {
					return a.fail(err, "")
				}
				s, err := c.Secrets().Create(ctx, opts)
				if err != nil {
					return a.fail(err, "")
				}
				if *jsonOut {
					return a.printJSON(s)
				}
				fmt.Fprintln(a.stdout, s.Name)
				return 0
			}
		},
	}
}

func (a *app) secretLsCmd() *command {
	list := func(c *stasis.Client, ctx context.Context) ([]stasis.SecretInfo, error) { return c.Secrets().List(ctx) }
	return jsonListCmd(a, "list secrets (never their values)", list, a.fail,
		"", "NAME\tAUTH\tPROVIDER\tHOSTS\tLAST USED", func(s stasis.SecretInfo) string {
			used := "-"
			if s.LastUsedAt != nil {
				used = s.LastUsedAt.Local().Format("2006-01-02 15:04:05")
			}
			return fmt.Sprintf("%s\t%s\t%s\t%s\t%s", s.Name, s.AuthType, dash(s.ProviderShortcut), strings.Join(s.Hosts, ","), used)
		})
}

func (a *app) secretRmCmd() *command {
	return &command{
		name:    "rm",
		usage:   "NAME...",
		summary: "delete secrets: every sandbox they are bound to loses them at once",
		minArgs: 1, maxArgs: -1,
		flags: func(fs *flag.FlagSet) func(context.Context, []string) int {
			return func(ctx context.Context, args []string) int {
				c, err := a.client()
				if err != nil {
					return a.fail(err, "")
				}
				rc := 0
				for _, name := range args {
					if err := c.Secrets().Delete(ctx, name); err != nil {
						rc = a.fail(err, "")
					}
				}
				return rc
			}
		},
	}
}

func (a *app) secretRotateCmd() *command {
	return &command{
		name:    "rotate",
		usage:   "NAME < new-value",
		summary: "replace a secret's value (read from stdin); the next request uses it",
		minArgs: 1, maxArgs: 1,
		flags: func(fs *flag.FlagSet) func(context.Context, []string) int {
			return func(ctx context.Context, args []string) int {
				value, err := a.readValue()
				if err != nil {
					return a.fail(err, "")
				}
				c, err := a.client()
				if err != nil {
					return a.fail(err, "")
				}
				if _, err := c.Secrets().Rotate(ctx, args[0], value); err != nil {
					return a.fail(err, "")
				}
				return 0
			}
		},
	}
}

func (a *app) secretAuditCmd() *command {
	return &command{
		name:    "audit",
		usage:   "[--limit N] [--status 2xx|3xx|4xx|5xx|errors] [--before ID] [--json] NAME",
		summary: "print the requests a secret was sent with, newest first",
		minArgs: 1, maxArgs: 1,
		flags: func(fs *flag.FlagSet) func(context.Context, []string) int {
			limit := fs.Int("limit", 50, "events (1-200)")
			status := fs.String("status", "", "only this status class, or errors")
			before := fs.Int64("before", 0, "events older than this event id")
			jsonOut := fs.Bool("json", false, "print JSON")
			return func(ctx context.Context, args []string) int {
				c, err := a.client()
				if err != nil {
					return a.fail(err, "")
				}
				evs, err := c.Secrets().Audit(ctx, args[0], stasis.AuditOptions{Limit: *limit, Status: *status, Before: *before})
				if err != nil {
					return a.fail(err, "")
				}
				return printList(a, evs, *jsonOut, "", "ID\tTIME\tSANDBOX\tREQUEST\tSTATUS\tUPSTREAM\tMS\tERROR", func(e stasis.AuditEvent) string {
					up, ms, code := "-", "-", "-"
					if e.UpstreamStatus != nil {
						up = strconv.Itoa(*e.UpstreamStatus)
					}
					if e.LatencyMs != nil {
						ms = strconv.FormatInt(*e.LatencyMs, 10)
					}
					if e.ErrorCode != nil {
						code = *e.ErrorCode
					}
					return fmt.Sprintf("%d\t%s\t%s\t%s https://%s%s\t%d\t%s\t%s\t%s", e.ID, e.Time.Local().Format("2006-01-02 15:04:05"),
						e.SandboxID, e.Method, e.Host, e.Path, e.Status, up, ms, code)
				})
			}
		},
	}
}
