package egress

import (
	"fmt"
	"net/netip"
	"strings"
)

// MaxRules bounds each of a sandbox's rule lists.
const MaxRules = 256

// Verdicts of a connection, as the network log reports them.
const (
	Allowed = "allowed"
	Blocked = "blocked"
	Failed  = "failed" // allowed, but the destination could not be reached
)

// Rule names that are not one of the sandbox's own rules.
const (
	RuleDefault  = "default"     // no rule matched: the server's --egress default
	RuleInternal = "internal-ip" // always blocked, whatever the rules say
)

// alwaysBlocked are the ranges no sandbox ever reaches, whatever its rules:
// private, shared, loopback, link-local (other sandboxes and the metadata
// address), multicast, reserved and "this network". The host's own
// addresses are checked separately, as they change.
var alwaysBlocked = []netip.Prefix{
	netip.MustParsePrefix("0.0.0.0/8"),
	netip.MustParsePrefix("10.0.0.0/8"),
	netip.MustParsePrefix("100.64.0.0/10"),
	netip.MustParsePrefix("127.0.0.0/8"),
	netip.MustParsePrefix("169.254.0.0/16"),
	netip.MustParsePrefix("172.16.0.0/12"),
	netip.MustParsePrefix("192.168.0.0/16"),
	netip.MustParsePrefix("224.0.0.0/4"),
	netip.MustParsePrefix("240.0.0.0/4"), // reserved, and the broadcast address
}

// AlwaysBlocked returns the ranges no sandbox may reach, for the firewall.
func AlwaysBlocked() []netip.Prefix { return append([]netip.Prefix(nil), alwaysBlocked...) }

// IsAlwaysBlocked reports whether no rule can ever allow a connection to a.
// Anything but IPv4 is blocked too: sandboxes have no IPv6.
func IsAlwaysBlocked(a netip.Addr) bool {
	a = a.Unmap()
	if !a.Is4() {
		return true
	}
	for _, p := range alwaysBlocked {
		if p.Contains(a) {
			return true
		}
	}
	return false
}

// RuleError is a rule list that cannot be used; Message names the bad entry.
type RuleError struct{ Message string }

func (e *RuleError) Error() string { return e.Message }

// Policy is a sandbox's compiled egress rules. The zero value, and nil,
// apply only the server's default.
type Policy struct {
	allowNets  []cidrRule
	allowNames []nameRule
	denyNets   []cidrRule
}

type cidrRule struct {
	prefix netip.Prefix
	text   string
}

// nameRule is a domain in allow_out: exact, or (wildcard) every name below
// suffix at any depth but not suffix itself.
type nameRule struct {
	name     string // lower case, no trailing dot; without "*." for a wildcard
	wildcard bool
	text     string
}

// Compile validates and compiles the allow_out and deny_out lists.
// allow_out takes CIDRs (or single IPv4 addresses) and domain names,
// "*.example.com" standing for every name below example.com; deny_out takes
// CIDRs only. The error names the first bad entry.
func Compile(allowOut, denyOut []string) (*Policy, error) {
	if len(allowOut) > MaxRules {
		return nil, &RuleError{fmt.Sprintf("network.allow_out has %d entries; the limit is %d", len(allowOut), MaxRules)}
	}
	if len(denyOut) > MaxRules {
		return nil, &RuleError{fmt.Sprintf("network.deny_out has %d entries; the limit is %d", len(denyOut), MaxRules)}
	}
	p := &Policy{}
	for i, s := range allowOut {
		where := fmt.Sprintf("network.allow_out[%d] %q", i, s)
		if s == "" {
			return nil, &RuleError{where + ": must not be empty"}
		}
		if looksLikeIP(s) {
			pr, err := parseCIDR(s)
			if err != nil {
				return nil, &RuleError{where + ": " + err.Error()}
			}
			p.allowNets = append(p.allowNets, cidrRule{pr, s})
			continue
		}
		r, err := parseName(s)
		if err != nil {
			return nil, &RuleError{where + ": " + err.Error()}
		}
		p.allowNames = append(p.allowNames, r)
	}
	for i, s := range denyOut {
		where := fmt.Sprintf("network.deny_out[%d] %q", i, s)
		if s == "" {
			return nil, &RuleError{where + ": must not be empty"}
		}
		if !looksLikeIP(s) {
			return nil, &RuleError{where + ": deny_out takes CIDRs only (e.g. 0.0.0.0/0); list allowed domains in allow_out"}
		}
		pr, err := parseCIDR(s)
		if err != nil {
			return nil, &RuleError{where + ": " + err.Error()}
		}
		p.denyNets = append(p.denyNets, cidrRule{pr, s})
	}
	return p, nil
}

// looksLikeIP tells address-shaped entries (digits, dots, colons, a slash)
// from names, so that a malformed CIDR is reported as one.
func looksLikeIP(s string) bool {
	if strings.Contains(s, ":") || strings.Contains(s, "/") {
		return true
	}
	for _, r := range s {
		if (r < '0' || r > '9') && r != '.' {
			return false
		}
	}
	return true
}

func parseCIDR(s string) (netip.Prefix, error) {
	var pr netip.Prefix
	if strings.Contains(s, "/") {
		var err error
		if pr, err = netip.ParsePrefix(s); err != nil {
			return pr, fmt.Errorf("not a valid CIDR (want e.g. 203.0.113.0/24)")
		}
	} else {
		a, err := netip.ParseAddr(s)
		if err != nil {
			return pr, fmt.Errorf("not a valid IP address or CIDR")
		}
		pr = netip.PrefixFrom(a, a.BitLen())
	}
	if !pr.Addr().Is4() {
		return pr, fmt.Errorf("IPv6 is not supported: sandboxes have IPv4 egress only")
	}
	return pr.Masked(), nil
}

// parseName validates a domain name or "*."-wildcard.
func parseName(s string) (nameRule, error) {
	r := nameRule{text: s}
	name := strings.TrimSuffix(strings.ToLower(s), ".")
	if rest, ok := strings.CutPrefix(name, "*."); ok {
		r.wildcard, name = true, rest
	}
	if strings.Contains(name, "*") {
		return r, fmt.Errorf("a wildcard may only be a leading \"*.\" (e.g. *.example.com)")
	}
	if err := checkHostname(name); err != nil {
		return r, err
	}
	r.name = name
	return r, nil
}

func checkHostname(name string) error {
	if name == "" || len(name) > 253 {
		return fmt.Errorf("not a valid domain name")
	}
	for _, label := range strings.Split(name, ".") {
		if label == "" || len(label) > 63 || label[0] == '-' || label[len(label)-1] == '-' {
			return fmt.Errorf("not a valid domain name")
		}
		for _, c := range label {
			if !(c >= 'a' && c <= 'z' || c >= '0' && c <= '9' || c == '-' || c == '_') {
				if c == ':' {
					return fmt.Errorf("ports are not supported in rules")
				}
				return fmt.Errorf("not a valid domain name (letters, digits, '-' and '.' only)")
			}
		}
	}
	return nil
}

// NormalizeHost lower-cases a host name and drops a trailing dot; it returns
// "" for IP literals and anything that is not a valid name.
func NormalizeHost(h string) string {
	h = strings.TrimSuffix(strings.ToLower(h), ".")
	if _, err := netip.ParseAddr(h); err == nil {
		return ""
	}
	if checkHostname(h) != nil {
		return ""
	}
	return h
}

// HasNames reports whether any allow rule is a domain: only then can a
// connection's name change its verdict.
func (p *Policy) HasNames() bool { return p != nil && len(p.allowNames) > 0 }

// MatchName returns the allow_out domain rule that allows host (normalized),
// or "".
func (p *Policy) MatchName(host string) string {
	if p == nil || host == "" {
		return ""
	}
	for _, r := range p.allowNames {
		if r.wildcard {
			if strings.HasSuffix(host, "."+r.name) {
				return r.text
			}
		} else if host == r.name {
			return r.text
		}
	}
	return ""
}

// Decision is the verdict on a connection and the rule that gave it.
type Decision struct {
	Allowed bool
	Rule    string // "allow_out:<entry>", "deny_out:<entry>", RuleDefault or RuleInternal
}

// DecideAddr decides on a connection to dst by address rules alone: an
// allow_out CIDR wins over a deny_out CIDR, and without either the server's
// default applies. Always-blocked addresses are blocked whatever the rules.
func (p *Policy) DecideAddr(dst netip.Addr, defaultAllow bool) Decision {
	if IsAlwaysBlocked(dst) {
		return Decision{Rule: RuleInternal}
	}
	if p != nil {
		for _, r := range p.allowNets {
			if r.prefix.Contains(dst) {
				return Decision{Allowed: true, Rule: "allow_out:" + r.text}
			}
		}
		for _, r := range p.denyNets {
			if r.prefix.Contains(dst) {
				return Decision{Rule: "deny_out:" + r.text}
			}
		}
	}
	return Decision{Allowed: defaultAllow, Rule: RuleDefault}
}
