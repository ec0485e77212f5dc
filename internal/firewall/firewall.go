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
	for _, hook := range []string{"INPUT", "FORWARD"} {
		rule := []string{hook, "-i", match, "-j", r.chain}
		if ipt(ctx, append([]string{"-C"}, rule...)...) == nil {
			continue
		}
		if err := ipt(ctx, append([]string{"-I"}, rule...)...); err != nil {
			return err
		}
	}
	return nil
}

// Remove unhooks and deletes the chain.
func (r *Rules) Remove(ctx context.Context) error {
	for _, hook := range []string{"INPUT", "FORWARD"} {
		for ipt(ctx, "-D", hook, "-i", r.ifPrefix+"+", "-j", r.chain) == nil {
		}
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
