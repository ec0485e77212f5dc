package api

import (
	"bytes"
	"encoding/base64"
	"encoding/json"
	"fmt"
	"net"
	"net/http"
	"strconv"
	"strings"
	"time"

	"github.com/stasis-sandbox/stasis/internal/sandbox"
	"github.com/stasis-sandbox/stasis/internal/store"
)

// networkJSON is a sandbox's egress rules on the wire.
type networkJSON struct {
	AllowOut []string `json:"allow_out"`
	DenyOut  []string `json:"deny_out"`
}

func (n *networkJSON) toStore() *store.Network {
	if n == nil {
		return nil
	}
	return &store.Network{AllowOut: n.AllowOut, DenyOut: n.DenyOut}
}

// networkToJSON shows the rules with both lists present (empty when the
// sandbox has none).
func networkToJSON(n *store.Network) networkJSON {
	out := networkJSON{AllowOut: []string{}, DenyOut: []string{}}
	if n != nil {
		out.AllowOut = append(out.AllowOut, n.AllowOut...)
		out.DenyOut = append(out.DenyOut, n.DenyOut...)
	}
	return out
}

// decodeNetworkUpdate reads PATCH's network object strictly: the object
// replaces both lists (a list left out becomes empty), null restores the
// defaults.
func decodeNetworkUpdate(raw json.RawMessage, o *sandbox.Optional[store.Network]) error {
	o.Set = true
	if strings.TrimSpace(string(raw)) == "null" {
		return nil
	}
	var n networkJSON
	dec := json.NewDecoder(bytes.NewReader(raw))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&n); err != nil {
		return err
	}
	o.Value = n.toStore()
	return nil
}

// networkEventJSON is one network log row on the wire (Superserve's
// NetworkEvent; fields of the other kind are left out).
type networkEventJSON struct {
	Kind      string    `json:"kind"`
	ID        int64     `json:"id"`
	TS        time.Time `json:"ts"`
	Host      string    `json:"host"`
	DstIP     string    `json:"dst_ip,omitempty"`
	DstPort   int       `json:"dst_port,omitempty"`
	Verdict   string    `json:"verdict,omitempty"`
	MatchRule string    `json:"match_rule,omitempty"`
	BytesSent *int64    `json:"bytes_sent,omitempty"`
	BytesRecv *int64    `json:"bytes_recv,omitempty"`
	// request rows
	Method         string `json:"method,omitempty"`
	Path           string `json:"path,omitempty"`
	Status         int    `json:"status,omitempty"`
	UpstreamStatus *int   `json:"upstream_status,omitempty"`
	LatencyMs      *int64 `json:"latency_ms,omitempty"`
	SecretID       string `json:"secret_id,omitempty"`
	ErrorCode      string `json:"error_code,omitempty"`
}

type networkPageJSON struct {
	Data       []networkEventJSON `json:"data"`
	NextCursor *string            `json:"next_cursor"`
	HasMore    bool               `json:"has_more"`
}

// Network log paging.
const (
	defaultLogLimit = 50
	maxLogLimit     = 200
	cursorPrefix    = "nl1:"
)

func encodeCursor(id int64) string {
	return base64.RawURLEncoding.EncodeToString([]byte(cursorPrefix + strconv.FormatInt(id, 10)))
}

func decodeCursor(s string) (int64, bool) {
	b, err := base64.RawURLEncoding.DecodeString(s)
	if err != nil {
		return 0, false
	}
	v, ok := strings.CutPrefix(string(b), cursorPrefix)
	if !ok {
		return 0, false
	}
	id, err := strconv.ParseInt(v, 10, 64)
	return id, err == nil && id > 0
}

// networkLog serves GET /sandboxes/{id}/network: the sandbox's network
// log, newest first.
func (s *Server) networkLog(w http.ResponseWriter, r *http.Request, teamID string) {
	sb, err := s.svc.Get(r.Context(), teamID, r.PathValue("id"))
	if err != nil {
		s.fail(w, err)
		return
	}
	q := store.NetworkLogQuery{SandboxID: sb.ID, Limit: defaultLogLimit}
	bad := func(format string, args ...any) {
		writeError(w, http.StatusBadRequest, "invalid_request", fmt.Sprintf(format, args...))
	}
	for k, vs := range r.URL.Query() {
		v := vs[0]
		switch k {
		case "limit":
			n, err := strconv.Atoi(v)
			if err != nil || n < 1 || n > maxLogLimit {
				bad("limit must be an integer from 1 to %d, not %q", maxLogLimit, v)
				return
			}
			q.Limit = n
		case "before":
			if t, err := time.Parse(time.RFC3339Nano, v); err == nil {
				q.Before = t
			} else if id, ok := decodeCursor(v); ok {
				q.BeforeID = id
			} else {
				bad("before must be an RFC3339 time or a next_cursor value, not %q", v)
				return
			}
		case "since":
			t, err := time.Parse(time.RFC3339Nano, v)
			if err != nil {
				bad("since must be an RFC3339 time, not %q", v)
				return
			}
			q.Since = t
		case "verdict":
			if v != "allowed" && v != "blocked" && v != "failed" {
				bad("verdict must be allowed, blocked or failed, not %q", v)
				return
			}
			q.Verdict = v
		default:
			bad("unknown query parameter %s (limit, before, since, verdict)", k)
			return
		}
	}
	rows, more, err := s.store.ListNetworkLog(r.Context(), q)
	if err != nil {
		s.fail(w, err)
		return
	}
	page := networkPageJSON{Data: make([]networkEventJSON, 0, len(rows)), HasMore: more}
	for _, e := range rows {
		out := networkEventJSON{Kind: e.Kind, ID: e.ID, TS: e.Time, Host: e.Host}
		if e.Kind == "connection" {
			sent, recv := e.BytesSent, e.BytesRecv
			out.DstIP, out.DstPort, out.Verdict, out.MatchRule = e.DstIP, e.DstPort, e.Verdict, e.MatchRule
			out.BytesSent, out.BytesRecv = &sent, &recv
		} else {
			out.Method, out.Path, out.Status, out.UpstreamStatus = e.Method, e.Path, e.Status, e.UpstreamStatus
			out.LatencyMs, out.SecretID, out.ErrorCode = e.LatencyMs, e.SecretID, e.ErrorCode
		}
		page.Data = append(page.Data, out)
	}
	if more && len(rows) > 0 {
		c := encodeCursor(rows[len(rows)-1].ID)
		page.NextCursor = &c
	}
	writeJSON(w, http.StatusOK, page)
}

// PreviewLinker makes one-time links that open a sandbox's private
// preview in a browser (see package preview).
type PreviewLinker interface {
	Domain() string
	Link(id, previewURL string) string
}

// SetPreview enables preview links.
func (s *Server) SetPreview(p PreviewLinker) { s.preview = p }

// previewLink serves POST /sandboxes/{id}/preview-link {port} (a stasis
// extension): the sandbox's preview URL for port, and a one-time link to it
// that sets a cookie in the browser that opens it (private previews need
// one; the link expires after a few minutes).
func (s *Server) previewLink(w http.ResponseWriter, r *http.Request, teamID string) {
	if s.preview == nil {
		writeError(w, http.StatusNotFound, "not_found", "preview URLs are not enabled on this server")
		return
	}
	var req struct {
		Port int `json:"port"`
	}
	if err := decodeJSON(w, r, &req, false); err != nil {
		s.fail(w, err)
		return
	}
	if req.Port < 1024 || req.Port > 65535 {
		writeError(w, http.StatusBadRequest, "invalid_request", fmt.Sprintf("port must be from 1024 to 65535, not %d", req.Port))
		return
	}
	sb, err := s.svc.Get(r.Context(), teamID, r.PathValue("id"))
	if err != nil {
		s.fail(w, err)
		return
	}
	u := PreviewURL(r, s.preview.Domain(), sb.ID, req.Port)
	writeJSON(w, http.StatusOK, map[string]any{"url": u, "link": s.preview.Link(sb.ID, u), "private": sb.PreviewPrivate})
}

// PreviewURL is the preview URL of port in sandbox id as reached through
// the server that r came to: same scheme and port, preview domain.
func PreviewURL(r *http.Request, domain, id string, port int) string {
	scheme := "http"
	if r.TLS != nil || r.Header.Get("X-Forwarded-Proto") == "https" {
		scheme = "https"
	}
	host := fmt.Sprintf("%d-%s.%s", port, id, domain)
	if _, p, err := net.SplitHostPort(r.Host); err == nil && !(scheme == "http" && p == "80" || scheme == "https" && p == "443") {
		host = net.JoinHostPort(host, p)
	}
	return scheme + "://" + host + "/"
}
