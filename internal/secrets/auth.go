package secrets

import (
	"bytes"
	"encoding/base64"
	"encoding/json"
	"fmt"
	"net/http"
	"regexp"
	"sort"
	"strings"
)

// Auth types.
const (
	Bearer  = "bearer"
	Basic   = "basic"
	APIKey  = "api-key"
	Custom  = "custom"
	PerHost = "per_host"
)

// Limits, as in Superserve's API.
const (
	MaxNameLen       = 128
	MaxValueLen      = 8192
	MaxHosts         = 16
	MaxCustomHeaders = 8
	MaxPerHostRules  = 16
)

// Rule says how the credential is attached to a request.
type Rule struct {
	Type     string            `json:"type"`
	Header   string            `json:"header,omitempty"`   // api-key
	Prefix   string            `json:"prefix,omitempty"`   // api-key
	Username string            `json:"username,omitempty"` // basic
	Headers  map[string]string `json:"headers,omitempty"`  // custom: templates with {{ value }}
	Hosts    []string          `json:"hosts,omitempty"`    // a per_host rule's hosts
}

// Auth is one rule for every host, or per-host rules.
type Auth struct {
	Rule    Rule   // when PerHost is empty
	PerHost []Rule // the first rule whose hosts match applies
}

// Type is the auth_type reported for the secret.
func (a Auth) Type() string {
	if len(a.PerHost) > 0 {
		return PerHost
	}
	return a.Rule.Type
}

// Config is auth_config on the wire: the rule without its type, or
// {"per_host": rules}.
func (a Auth) Config() map[string]any {
	var v any = a.Rule
	if len(a.PerHost) > 0 {
		v = map[string]any{"per_host": a.PerHost}
	}
	b, _ := json.Marshal(v)
	var m map[string]any
	json.Unmarshal(b, &m)
	delete(m, "type")
	return m
}

// MarshalJSON stores an Auth as it is sent: a rule, or {"per_host": [...]}.
func (a Auth) MarshalJSON() ([]byte, error) {
	if len(a.PerHost) > 0 {
		return json.Marshal(map[string]any{"per_host": a.PerHost})
	}
	return json.Marshal(a.Rule)
}

// ParseAuth decodes an auth field, refusing unknown keys.
func ParseAuth(raw json.RawMessage) (Auth, error) {
	var probe map[string]json.RawMessage
	if err := json.Unmarshal(raw, &probe); err != nil || probe == nil {
		return Auth{}, invalid("auth must be an object")
	}
	if ph, ok := probe["per_host"]; ok {
		if len(probe) != 1 {
			return Auth{}, invalid("auth: per_host cannot be combined with other keys")
		}
		var rules []json.RawMessage
		if err := json.Unmarshal(ph, &rules); err != nil {
			return Auth{}, invalid("auth.per_host must be an array of rules")
		}
		a := Auth{PerHost: []Rule{}}
		for i, r := range rules {
			rule, err := decodeRule(r)
			if err != nil {
				return Auth{}, invalid("auth.per_host[%d]: %s", i, err)
			}
			a.PerHost = append(a.PerHost, rule)
		}
		if len(a.PerHost) == 0 {
			return Auth{}, invalid("auth.per_host must have at least one rule")
		}
		return a, nil
	}
	rule, err := decodeRule(raw)
	if err != nil {
		return Auth{}, invalid("auth: %s", err)
	}
	if rule.Hosts != nil {
		return Auth{}, invalid("auth: hosts belongs in per_host rules; a single rule applies to every host of the secret")
	}
	return Auth{Rule: rule}, nil
}

func decodeRule(raw json.RawMessage) (Rule, error) {
	var r Rule
	dec := json.NewDecoder(bytes.NewReader(raw))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&r); err != nil {
		return r, fmt.Errorf("%s", strings.TrimPrefix(err.Error(), "json: "))
	}
	return r, nil
}

var headerNameRE = regexp.MustCompile("^[!#$%&'*+.^_`|~0-9A-Za-z-]+$")

// validHeaderValue refuses control characters, which would split headers.
func validHeaderValue(v string) bool {
	return !strings.ContainsFunc(v, func(r rune) bool { return r < 0x20 && r != '\t' || r == 0x7f })
}

// validate checks a rule; perHost says whether it is one of per_host's.
func (r Rule) validate(perHost bool) error {
	switch r.Type {
	case Bearer, Basic, APIKey, Custom:
	case "":
		return fmt.Errorf("type is required (bearer, basic, api-key or custom)")
	default:
		return fmt.Errorf("type %q is not one of bearer, basic, api-key, custom", r.Type)
	}
	if r.Type != APIKey && (r.Header != "" || r.Prefix != "") {
		return fmt.Errorf("header and prefix are only for type api-key")
	}
	if r.Type != Basic && r.Username != "" {
		return fmt.Errorf("username is only for type basic")
	}
	if r.Type != Custom && r.Headers != nil {
		return fmt.Errorf("headers are only for type custom")
	}
	switch r.Type {
	case APIKey:
		if !headerNameRE.MatchString(r.Header) {
			return fmt.Errorf("api-key needs header, a valid HTTP header name")
		}
		if !validHeaderValue(r.Prefix) {
			return fmt.Errorf("prefix must not contain control characters")
		}
	case Basic:
		if strings.Contains(r.Username, ":") || !validHeaderValue(r.Username) {
			return fmt.Errorf("username must not contain ':' or control characters")
		}
	case Custom:
		if len(r.Headers) == 0 || len(r.Headers) > MaxCustomHeaders {
			return fmt.Errorf("custom needs headers: 1 to %d header templates", MaxCustomHeaders)
		}
		for k, v := range r.Headers {
			if !headerNameRE.MatchString(k) {
				return fmt.Errorf("headers: %q is not a valid HTTP header name", k)
			}
			if !validHeaderValue(v) {
				return fmt.Errorf("headers: the template of %s must not contain control characters", k)
			}
			if !valueRE.MatchString(v) {
				return fmt.Errorf("headers: the template of %s does not use {{ value }}", k)
			}
		}
	}
	if perHost && (len(r.Hosts) == 0 || len(r.Hosts) > MaxHosts) {
		return fmt.Errorf("hosts: 1 to %d hosts", MaxHosts)
	}
	return nil
}

// validate checks an Auth against the secret's hosts.
func (a Auth) validate(hosts []string) error {
	if len(a.PerHost) == 0 {
		if err := a.Rule.validate(false); err != nil {
			return invalid("auth: %s", err)
		}
		return nil
	}
	if len(a.PerHost) > MaxPerHostRules {
		return invalid("auth.per_host has %d rules; the limit is %d", len(a.PerHost), MaxPerHostRules)
	}
	top := map[string]bool{}
	for _, h := range hosts {
		top[strings.ToLower(h)] = true
	}
	seen := map[string]bool{}
	for i, r := range a.PerHost {
		if err := r.validate(true); err != nil {
			return invalid("auth.per_host[%d]: %s", i, err)
		}
		for _, h := range r.Hosts {
			h = strings.ToLower(h)
			if !top[h] {
				return invalid("auth.per_host[%d]: host %q is not in the secret's hosts", i, h)
			}
			if seen[h] {
				return invalid("auth.per_host[%d]: host %q is already in another rule", i, h)
			}
			seen[h] = true
		}
	}
	return nil
}

// RuleFor returns the rule that applies toward host.
func (a Auth) RuleFor(host string) (Rule, bool) {
	if len(a.PerHost) == 0 {
		return a.Rule, true
	}
	for _, r := range a.PerHost {
		if MatchHosts(r.Hosts, host) {
			return r, true
		}
	}
	return Rule{}, false
}

var valueRE = regexp.MustCompile(`\{\{\s*value\s*\}\}`)

// Apply attaches value to h by the rule, in place of the stand-in token
// wherever it appeared; the stand-in does not go upstream.
func (r Rule) Apply(h http.Header, token, value string) {
	inboundUser := ""
	for k, vs := range h {
		for _, v := range vs {
			if u, ok := basicWithPassword(v, token); ok {
				inboundUser = u
				h.Del(k)
			} else if strings.Contains(v, token) {
				h.Del(k)
			}
		}
	}
	switch r.Type {
	case Bearer:
		h.Set("Authorization", "Bearer "+value)
	case Basic:
		user := r.Username
		if user == "" {
			user = inboundUser
		}
		if user == "" {
			user = "x"
		}
		h.Set("Authorization", "Basic "+base64.StdEncoding.EncodeToString([]byte(user+":"+value)))
	case APIKey:
		h.Set(r.Header, r.Prefix+value)
	case Custom:
		keys := make([]string, 0, len(r.Headers))
		for k := range r.Headers {
			keys = append(keys, k)
		}
		sort.Strings(keys)
		for _, k := range keys {
			h.Set(k, valueRE.ReplaceAllLiteralString(r.Headers[k], value))
		}
	}
}

// basicWithPassword reports whether v is HTTP Basic credentials whose
// password is token, and returns the username.
func basicWithPassword(v, token string) (string, bool) {
	enc, ok := strings.CutPrefix(v, "Basic ")
	if !ok {
		if enc, ok = strings.CutPrefix(v, "basic "); !ok {
			return "", false
		}
	}
	dec, err := base64.StdEncoding.DecodeString(strings.TrimSpace(enc))
	if err != nil {
		return "", false
	}
	user, pass, ok := strings.Cut(string(dec), ":")
	return user, ok && pass == token
}

// FindToken returns the first candidate token found in h: in a header's
// value, or as the password of Basic credentials.
func FindToken(h http.Header, isToken func(string) bool) (string, bool) {
	for _, vs := range h {
		for _, v := range vs {
			for _, w := range tokenCandidates(v) {
				if isToken(w) {
					return w, true
				}
			}
		}
	}
	return "", false
}

// tokenCandidates splits a header value into the words a stand-in token
// could be: whitespace- or comma-separated parts, and a Basic password.
func tokenCandidates(v string) []string {
	out := strings.FieldsFunc(v, func(r rune) bool { return r == ' ' || r == ',' || r == '\t' || r == '=' || r == ';' })
	if enc, ok := strings.CutPrefix(v, "Basic "); ok {
		if dec, err := base64.StdEncoding.DecodeString(strings.TrimSpace(enc)); err == nil {
			if _, pass, ok := strings.Cut(string(dec), ":"); ok {
				out = append(out, pass)
			}
		}
	}
	return out
}
