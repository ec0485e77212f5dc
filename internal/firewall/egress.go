package firewall

import (
	"context"
	"net/netip"
	"strconv"
	"strings"
)

// Egress sends what sandboxes start towards the outside to stasisd's
// egress proxy and resolver (see package egress), in chains of its own:
//
//	nat    <chain>-NAT, from PREROUTING for packets in on a sandbox link:
//	       DNS (UDP and TCP port 53, to any address) to the resolver; TCP to
//	       the always-blocked ranges and to the host's own addresses to a
//	       port the filter refuses; every other TCP connection to the proxy.
//	       Anything else (UDP, ICMP) is not redirected and is dropped.
//	filter <chain>-EG, from INPUT before the sandbox chain: the redirected
//	       connections to the proxy's and resolver's ports are accepted;
//	       new TCP connections to anything else on the host are refused with
//	       a reset (the sandbox chain drops the rest).
type Egress struct {
	nat, refuse, filter string
	ifPrefix            string
}

// NewEgress returns the egress rules for interfaces named ifPrefix*.
func NewEgress(ifPrefix string) *Egress {
	c := "STASIS-" + strings.ToUpper(ifPrefix)
	return &Egress{nat: c + "-NAT", refuse: c + "-REF", filter: c + "-EG", ifPrefix: ifPrefix}
}

// refusedPort is where connections that must fail are redirected; the
// filter refuses every port but the proxy's and the resolver's.
const refusedPort = 1

// Install (re)writes the chains for the given ports and hooks them in. It
// is idempotent; blocked lists the destinations never redirected. With
// nflogGroup > 0 the first packet of each refused connection is copied to
// that NFLOG group, for the network log.
func (e *Egress) Install(ctx context.Context, proxyPort, dnsPort int, blocked []netip.Prefix, nflogGroup int) error {
	match := e.ifPrefix + "+"
	proxy, dns := strconv.Itoa(proxyPort), strconv.Itoa(dnsPort)
	nat := [][]string{
		{"-p", "udp", "--dport", "53", "-j", "REDIRECT", "--to-ports", dns},
		{"-p", "tcp", "--dport", "53", "-j", "REDIRECT", "--to-ports", dns},
	}
	// TCP to where no sandbox may go is sent to a port the filter refuses:
	// the sandbox's connect fails at once, and nothing leaves the host.
	// The nat table sees only a connection's first packet: one log entry
	// per refused connection.
	refuse := [][]string{{"-p", "tcp", "-j", "REDIRECT", "--to-ports", strconv.Itoa(refusedPort)}}
	if nflogGroup > 0 {
		refuse = append([][]string{{"-j", "NFLOG", "--nflog-group", strconv.Itoa(nflogGroup)}}, refuse...)
	}
	for _, p := range blocked {
		nat = append(nat, []string{"-p", "tcp", "-d", p.String(), "-j", e.refuse})
	}
	nat = append(nat,
		[]string{"-p", "tcp", "-m", "addrtype", "--dst-type", "LOCAL", "-j", e.refuse},
		[]string{"-p", "tcp", "-m", "addrtype", "--dst-type", "BROADCAST", "-j", e.refuse},
		[]string{"-p", "tcp", "-j", "REDIRECT", "--to-ports", proxy},
	)
	filter := [][]string{
		{"-p", "tcp", "--dport", proxy, "-m", "conntrack", "--ctstate", "DNAT", "-j", "ACCEPT"},
		{"-p", "tcp", "--dport", dns, "-m", "conntrack", "--ctstate", "DNAT", "-j", "ACCEPT"},
		{"-p", "udp", "--dport", dns, "-m", "conntrack", "--ctstate", "DNAT", "-j", "ACCEPT"},
		{"-p", "tcp", "-m", "conntrack", "--ctstate", "NEW", "-j", "REJECT", "--reject-with", "tcp-reset"},
	}
	if err := writeChain(ctx, "nat", e.refuse, refuse); err != nil {
		return err
	}
	if err := writeChain(ctx, "nat", e.nat, nat); err != nil {
		return err
	}
	if err := writeChain(ctx, "filter", e.filter, filter); err != nil {
		return err
	}
	if err := hookFirst(ctx, "nat", "PREROUTING", "-i", match, "-j", e.nat); err != nil {
		return err
	}
	return hookFirst(ctx, "filter", "INPUT", "-i", match, "-j", e.filter)
}

// Remove unhooks and deletes the chains.
func (e *Egress) Remove(ctx context.Context) error {
	match := e.ifPrefix + "+"
	for ipt(ctx, "-t", "nat", "-D", "PREROUTING", "-i", match, "-j", e.nat) == nil {
	}
	for ipt(ctx, "-D", "INPUT", "-i", match, "-j", e.filter) == nil {
	}
	ipt(ctx, "-t", "nat", "-F", e.nat)
	ipt(ctx, "-t", "nat", "-F", e.refuse)
	ipt(ctx, "-F", e.filter)
	err := ipt(ctx, "-t", "nat", "-X", e.nat)
	if err2 := ipt(ctx, "-t", "nat", "-X", e.refuse); err == nil {
		err = err2
	}
	if err2 := ipt(ctx, "-X", e.filter); err == nil {
		err = err2
	}
	return err
}

// writeChain creates table's chain if needed and replaces its rules.
func writeChain(ctx context.Context, table, chain string, rules [][]string) error {
	if err := ipt(ctx, "-t", table, "-N", chain); err != nil && !strings.Contains(err.Error(), "exists") {
		return err
	}
	if err := ipt(ctx, "-t", table, "-F", chain); err != nil {
		return err
	}
	for _, r := range rules {
		if err := ipt(ctx, append([]string{"-t", table, "-A", chain}, r...)...); err != nil {
			return err
		}
	}
	return nil
}

// hookFirst makes rule the first of table's hook chain (once).
func hookFirst(ctx context.Context, table, hook string, rule ...string) error {
	for ipt(ctx, append([]string{"-t", table, "-D", hook}, rule...)...) == nil {
	}
	return ipt(ctx, append([]string{"-t", table, "-I", hook, "1"}, rule...)...)
}
