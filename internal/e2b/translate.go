package e2b

import (
	"net/url"
	"slices"
	"strings"
	"time"

	"github.com/stasis-sandbox/stasis/internal/store"
)

// Translation between E2B's control-plane model and stasis's, in one place.
//
// E2B's lifecycle maps onto stasis's timeout: a sandbox's `timeout` is
// stasis's (counted from the create, resume or last setTimeout); onTimeout
// "kill" makes the timeout delete the sandbox (DeleteOnTimeout), "pause"
// pause it. A paused sandbox has no auto-delete: E2B keeps it until killed.

// defaultTimeout is E2B's TTL when a create or connect names none (seconds).
const defaultTimeout = 300

// e2bTemplates maps E2B's template names to stasis's.
var e2bTemplates = map[string]string{
	"base":                "stasis/base",
	"code-interpreter-v1": "stasis/code-interpreter",
}

// stasisTemplate is the stasis template for an E2B template ID: E2B's names
// map to built-ins, anything else is taken as a stasis name.
func stasisTemplate(id string) string {
	if t, ok := e2bTemplates[id]; ok {
		return t
	}
	return id
}

// e2bTemplate is the name an E2B client knows a stasis template by.
func e2bTemplate(name string) string {
	for k, v := range e2bTemplates {
		if v == name {
			return k
		}
	}
	return name
}

type sandboxJSON struct {
	SandboxID          string  `json:"sandboxID"`
	TemplateID         string  `json:"templateID"`
	Alias              string  `json:"alias,omitempty"`
	ClientID           string  `json:"clientID"`
	EnvdVersion        string  `json:"envdVersion"`
	EnvdAccessToken    string  `json:"envdAccessToken,omitempty"`
	TrafficAccessToken *string `json:"trafficAccessToken"`
	Domain             *string `json:"domain"`
}

type listedJSON struct {
	SandboxID   string            `json:"sandboxID"`
	TemplateID  string            `json:"templateID"`
	Alias       string            `json:"alias,omitempty"`
	ClientID    string            `json:"clientID"`
	CPUCount    int               `json:"cpuCount"`
	MemoryMB    int               `json:"memoryMB"`
	DiskSizeMB  int               `json:"diskSizeMB"`
	EnvdVersion string            `json:"envdVersion"`
	StartedAt   time.Time         `json:"startedAt"`
	EndAt       time.Time         `json:"endAt"`
	State       string            `json:"state"`
	Metadata    map[string]string `json:"metadata"`
}

type lifecycleJSON struct {
	AutoResume bool   `json:"autoResume"`
	OnTimeout  string `json:"onTimeout"`
}

type detailJSON struct {
	listedJSON
	EnvdAccessToken     string             `json:"envdAccessToken,omitempty"`
	Domain              *string            `json:"domain"`
	Lifecycle           lifecycleJSON      `json:"lifecycle"`
	AllowInternetAccess *bool              `json:"allowInternetAccess"`
	Network             *networkDetailJSON `json:"network,omitempty"`
}

type networkDetailJSON struct {
	AllowOut           []string `json:"allowOut"`
	DenyOut            []string `json:"denyOut"`
	AllowPublicTraffic bool     `json:"allowPublicTraffic"`
}

func (s *Server) sandboxJSON(sb *store.Sandbox) sandboxJSON {
	tok := s.svc.EnvdToken(sb.ID)
	return sandboxJSON{
		SandboxID: sb.ID, TemplateID: e2bTemplate(sb.Template), ClientID: "stasis",
		EnvdVersion: EnvdVersion, EnvdAccessToken: tok,
		// The same token opens the sandbox's other ports (see proxyPort).
		TrafficAccessToken: &tok,
	}
}

// state is E2B's name for a sandbox's status: it knows only running and
// paused; stasis's transitional states are reported as what they lead to.
func state(sb *store.Sandbox) string {
	switch sb.Status {
	case store.StatusPaused, store.StatusPausing:
		return "paused"
	}
	return "running"
}

func listed(sb *store.Sandbox) listedJSON {
	end := time.Now()
	if sb.PauseAt != nil {
		end = *sb.PauseAt
	} else if sb.Status == store.StatusPaused {
		end = sb.StatusChangedAt
	}
	md := sb.Metadata
	if md == nil {
		md = map[string]string{}
	}
	return listedJSON{
		SandboxID: sb.ID, TemplateID: e2bTemplate(sb.Template), ClientID: "stasis",
		CPUCount: sb.VCPU, MemoryMB: sb.MemoryMiB, DiskSizeMB: sb.DiskMiB, EnvdVersion: EnvdVersion,
		StartedAt: sb.CreatedAt.UTC(), EndAt: end.UTC(), State: state(sb), Metadata: md,
	}
}

func (s *Server) detail(sb *store.Sandbox) detailJSON {
	d := detailJSON{
		listedJSON:      listed(sb),
		EnvdAccessToken: s.svc.EnvdToken(sb.ID),
		Lifecycle:       lifecycleJSON{AutoResume: !sb.NoAutoResume, OnTimeout: onTimeout(sb)},
	}
	if n := sb.Network; n != nil || sb.PreviewPrivate {
		d.Network = &networkDetailJSON{AllowOut: []string{}, DenyOut: []string{}, AllowPublicTraffic: !sb.PreviewPrivate}
		if n != nil {
			d.Network.AllowOut = append(d.Network.AllowOut, n.AllowOut...)
			d.Network.DenyOut = append(d.Network.DenyOut, n.DenyOut...)
		}
	}
	// Internet access was turned off if everything is denied and nothing
	// allowed; otherwise it was not set explicitly (null).
	if n := sb.Network; n != nil && len(n.AllowOut) == 0 && slices.Contains(n.DenyOut, internetDenied) {
		off := false
		d.AllowInternetAccess = &off
	}
	return d
}

// onTimeout reads E2B's lifecycle back from the stasis timers.
func onTimeout(sb *store.Sandbox) string {
	if sb.DeleteOnTimeout {
		return "kill"
	}
	return "pause"
}

// parseMetadataQuery parses E2B's list filter "k=v&k2=v2", sent URL-encoded
// once more than each key and value (e2b-protocol.md §2.2): the query
// parameter (already unescaped once by net/url) is unescaped again, split
// on & and =, and then each key and value is unescaped.
func parseMetadataQuery(q string) (map[string]string, error) {
	out := map[string]string{}
	if q == "" {
		return out, nil
	}
	q, err := url.QueryUnescape(q)
	if err != nil {
		return nil, err
	}
	for _, pair := range strings.Split(q, "&") {
		k, v, _ := strings.Cut(pair, "=")
		var err error
		if k, err = url.QueryUnescape(k); err != nil {
			return nil, err
		}
		if v, err = url.QueryUnescape(v); err != nil {
			return nil, err
		}
		out[k] = v
	}
	return out, nil
}
