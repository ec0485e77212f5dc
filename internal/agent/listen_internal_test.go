package agent

import "testing"

// An address without a host listens on IPv4 only (the sandbox's link is
// IPv4): with "tcp", Go probes the IPv6 stack first, system calls that every
// cold create waits for.
func TestListenNetwork(t *testing.T) {
	for addr, want := range map[string]string{
		":49983":          "tcp4",
		"0.0.0.0:49983":   "tcp",
		"127.0.0.1:0":     "tcp",
		"[::1]:49983":     "tcp",
		"169.254.4.2:123": "tcp",
	} {
		if got := listenNetwork(addr); got != want {
			t.Errorf("listenNetwork(%q) = %q, want %q", addr, got, want)
		}
	}
}
