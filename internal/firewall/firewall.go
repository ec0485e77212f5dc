// Package firewall keeps sandboxes away from the host and from each other:
// packets arriving from a sandbox link may only answer connections the host
// opened (stasisd talking to the agent); anything a sandbox starts towards
// the host (the API port, another sandbox's agent via the host) or routes
// through it is dropped. It uses iptables so it works with either backend.
package firewall

import (
	"context"
	"fmt"
	"os/exec"
	"strings"
)

// Rules guards the sandbox links whose host-side interface names start with
// ifPrefix, in a chain of its own so several stasisd instances coexist.
type Rules struct {
	chain    string
	ifPrefix string
}

// New returns the rules for interfaces named ifPrefix*.
func New(ifPrefix string) *Rules {
	return &Rules{chain: "STASIS-" + strings.ToUpper(ifPrefix), ifPrefix: ifPrefix}
}

// Install creates (or refreshes) the chain and hooks it into INPUT and
// FORWARD. It is idempotent.
func (r *Rules) Install(ctx context.Context) error {
	match := r.ifPrefix + "+"
	// A fresh chain each time: flush it if it exists, create it if not.
	if err := ipt(ctx, "-N", r.chain); err != nil && !strings.Contains(err.Error(), "exists") {
		return err
	}
	steps := [][]string{
		{"-F", r.chain},
		{"-A", r.chain, "-m", "conntrack", "--ctstate", "ESTABLISHED,RELATED", "-j", "ACCEPT"},
		{"-A", r.chain, "-j", "DROP"},
	}
	for _, s := range steps {
		if err := ipt(ctx, s...); err != nil {
			return err
		}
	}
	// Exactly one jump per hook: a crashed run of the same prefix may have
	// left several (the chain itself was just refreshed above).
	for _, hook := range []string{"INPUT", "FORWARD"} {
		n, err := r.jumps(ctx, hook)
		if err != nil {
			return err
		}
		if n == 0 {
			if err := ipt(ctx, "-I", hook, "-i", match, "-j", r.chain); err != nil {
				return err
			}
		}
		for ; n > 1; n-- {
			if err := ipt(ctx, "-D", hook, "-i", match, "-j", r.chain); err != nil {
				return err
			}
		}
	}
	return nil
}

// jumps counts the rules in hook that jump to the chain.
func (r *Rules) jumps(ctx context.Context, hook string) (int, error) {
	out, err := exec.CommandContext(ctx, "iptables", "-w", "-S", hook).Output()
	if err != nil {
		return 0, fmt.Errorf("iptables -S %s: %w", hook, err)
	}
	want := fmt.Sprintf("-A %s -i %s+ -j %s", hook, r.ifPrefix, r.chain)
	n := 0
	for _, line := range strings.Split(string(out), "\n") {
		if strings.TrimSpace(line) == want {
			n++
		}
	}
	return n, nil
}

// Chain is the name of the rules' iptables chain.
func (r *Rules) Chain() string { return r.chain }

// Remove unhooks and deletes the chain; a chain that is not there is not
// an error. Only call it when no sandbox of these rules runs any more.
func (r *Rules) Remove(ctx context.Context) error {
	for _, hook := range []string{"INPUT", "FORWARD"} {
		for ipt(ctx, "-D", hook, "-i", r.ifPrefix+"+", "-j", r.chain) == nil {
		}
	}
	if ipt(ctx, "-n", "-L", r.chain) != nil {
		return nil // no such chain
	}
	ipt(ctx, "-F", r.chain)
	return ipt(ctx, "-X", r.chain)
}

func ipt(ctx context.Context, args ...string) error {
	out, err := exec.CommandContext(ctx, "iptables", append([]string{"-w"}, args...)...).CombinedOutput()
	if err != nil {
		return fmt.Errorf("iptables %s: %v: %s", strings.Join(args, " "), err, strings.TrimSpace(string(out)))
	}
	return nil
}
