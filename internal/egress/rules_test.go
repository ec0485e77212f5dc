package egress

import (
	"net/netip"
	"strings"
	"testing"
)

func TestCompileRejectsBadEntries(t *testing.T) {
	for _, tc := range []struct {
		allow, deny []string
		want        string
	}{
		{[]string{"203.0.113.0/33"}, nil, `allow_out[0] "203.0.113.0/33": not a valid CIDR`},
		{[]string{"1.2.3"}, nil, `allow_out[0] "1.2.3"`},
		{nil, []string{"example.com"}, `deny_out[0] "example.com": deny_out takes CIDRs only`},
		{[]string{"ok.test", ""}, nil, `allow_out[1] "": must not be empty`},
		{nil, []string{""}, `deny_out[0] "": must not be empty`},
		{[]string{"*"}, nil, `allow_out[0] "*"`},
		{[]string{"a.*.test"}, nil, `allow_out[0] "a.*.test"`},
		{[]string{"example.com:443"}, nil, `allow_out[0] "example.com:443"`},
		{[]string{"2001:db8::/32"}, nil, "IPv6 is not supported"},
		{[]string{"-bad.test"}, nil, `allow_out[0] "-bad.test"`},
		{make([]string, 257), nil, "257 entries"},
	} {
		_, err := Compile(tc.allow, tc.deny)
		if err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("Compile(%q, %q) = %v, want an error containing %q", tc.allow, tc.deny, err, tc.want)
		}
	}
}

func TestMatchName(t *testing.T) {
	p, err := Compile([]string{"Exact.Test.", "*.wild.test", "198.51.100.0/24"}, []string{"0.0.0.0/0"})
	if err != nil {
		t.Fatal(err)
	}
	for host, want := range map[string]string{
		"exact.test":       "Exact.Test.",
		"sub.exact.test":   "",
		"a.wild.test":      "*.wild.test",
		"a.b.c.wild.test":  "*.wild.test",
		"wild.test":        "",
		"notwild.test":     "",
		"evilwild.test":    "",
		"wild.test.evil":   "",
		"":                 "",
		"198.51.100.1":     "",
		"a.wild.test.evil": "",
	} {
		if got := p.MatchName(NormalizeHost(host)); got != want {
			t.Errorf("MatchName(%q) = %q, want %q", host, got, want)
		}
	}
}

func TestDecideAddr(t *testing.T) {
	p, err := Compile([]string{"198.51.100.0/24", "10.0.0.0/8"}, []string{"0.0.0.0/0", "203.0.113.7"})
	if err != nil {
		t.Fatal(err)
	}
	for addr, want := range map[string]Decision{
		"198.51.100.9":    {true, "allow_out:198.51.100.0/24"}, // allow wins over the overlapping deny
		"203.0.113.7":     {false, "deny_out:0.0.0.0/0"},
		"10.1.2.3":        {false, RuleInternal}, // never, whatever allow_out says
		"169.254.169.254": {false, RuleInternal},
		"127.0.0.1":       {false, RuleInternal},
		"100.64.0.1":      {false, RuleInternal},
		"224.0.0.1":       {false, RuleInternal},
		"255.255.255.255": {false, RuleInternal},
		"::1":             {false, RuleInternal},
	} {
		if got := p.DecideAddr(netip.MustParseAddr(addr), true); got != want {
			t.Errorf("DecideAddr(%s) = %+v, want %+v", addr, got, want)
		}
	}
	var none *Policy
	if got := none.DecideAddr(netip.MustParseAddr("203.0.113.1"), false); got != (Decision{false, RuleDefault}) {
		t.Errorf("no rules, --egress deny: %+v", got)
	}
	if got := none.DecideAddr(netip.MustParseAddr("203.0.113.1"), true); got != (Decision{true, RuleDefault}) {
		t.Errorf("no rules, --egress allow: %+v", got)
	}
}
