package secrets

import (
	"regexp"
	"strings"
)

var hostRE = regexp.MustCompile(`^(\*\.)?[A-Za-z0-9]([A-Za-z0-9-]*[A-Za-z0-9])?(\.[A-Za-z0-9]([A-Za-z0-9-]*[A-Za-z0-9])?)+$`)

// publicSuffixes2 are common two-label public suffixes a wildcard may not
// sit directly on (*.co.uk would match every UK company). Not the whole
// Public Suffix List: a wildcard must also have at least two labels.
var publicSuffixes2 = map[string]bool{
	"co.uk": true, "org.uk": true, "ac.uk": true, "gov.uk": true, "com.au": true, "net.au": true, "org.au": true,
	"co.jp": true, "ne.jp": true, "or.jp": true, "co.nz": true, "co.za": true, "com.br": true, "com.cn": true,
	"com.mx": true, "co.in": true, "co.kr": true, "com.tw": true, "com.sg": true, "github.io": true,
	"herokuapp.com": true, "vercel.app": true, "pages.dev": true, "workers.dev": true, "netlify.app": true,
	"appspot.com": true, "cloudfront.net": true, "amazonaws.com": true,
}

// validateHost checks one entry of a secret's hosts.
func validateHost(h string) error {
	if base, ok := strings.CutPrefix(h, "*."); ok && hostRE.MatchString("x."+base) {
		if !strings.Contains(base, ".") || publicSuffixes2[strings.ToLower(base)] {
			return invalid("hosts: %q is a wildcard on a public suffix; name the domain under it", h)
		}
	}
	if len(h) > 253 || !hostRE.MatchString(h) {
		return invalid("hosts: %q is not a hostname or a *.domain wildcard", h)
	}
	return nil
}

// MatchHost reports whether host matches pattern: equal (ignoring case),
// or, for *.domain, one more label in front of domain.
func MatchHost(pattern, host string) bool {
	pattern, host = strings.ToLower(pattern), strings.ToLower(strings.TrimSuffix(host, "."))
	base, wild := strings.CutPrefix(pattern, "*.")
	if !wild {
		return pattern == host
	}
	label, rest, ok := strings.Cut(host, ".")
	return ok && label != "" && rest == base
}

// MatchHosts reports whether host matches one of patterns.
func MatchHosts(patterns []string, host string) bool {
	for _, p := range patterns {
		if MatchHost(p, host) {
			return true
		}
	}
	return false
}
