package e2b

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/stasis-sandbox/stasis/internal/sandbox"
	"github.com/stasis-sandbox/stasis/internal/store"
)

const maxJSONBody = 1 << 20

func (s *Server) controlRoutes() {
	m := s.control
	for _, prefix := range []string{"", "/v2"} {
		m.HandleFunc("POST "+prefix+"/sandboxes", s.withTeam(s.create))
		m.HandleFunc("POST "+prefix+"/sandboxes/{id}/connect", s.withTeam(s.connect))
	}
	m.HandleFunc("GET /v2/sandboxes", s.withTeam(s.list))
	m.HandleFunc("GET /sandboxes", s.withTeam(s.list))
	m.HandleFunc("GET /sandboxes/{id}", s.withTeam(s.info))
	m.HandleFunc("DELETE /sandboxes/{id}", s.withTeam(s.kill))
	m.HandleFunc("POST /sandboxes/{id}/timeout", s.withTeam(s.setTimeout))
	m.HandleFunc("POST /sandboxes/{id}/pause", s.withTeam(s.pause))
	m.HandleFunc("POST /sandboxes/{id}/resume", s.withTeam(s.connect))
	m.HandleFunc("GET /sandboxes/{id}/metrics", s.withTeam(s.metrics))
	m.HandleFunc("POST /sandboxes/{id}/snapshots", s.withTeam(s.createSnapshot))
	m.HandleFunc("GET /snapshots", s.withTeam(s.listSnapshots))
	m.HandleFunc("DELETE /templates/{id}", s.withTeam(s.deleteSnapshot))
	m.HandleFunc("POST /sandboxes/{id}/fork", s.withTeam(s.fork))
	m.HandleFunc("PUT /sandboxes/{id}/network", s.withTeam(s.updateNetwork))
	m.HandleFunc("/", func(w http.ResponseWriter, r *http.Request) {
		writeError(w, http.StatusNotFound, "no route for %s %s", r.Method, r.URL.Path)
	})
}

// decode reads an optional JSON body. Unknown fields are tolerated: the SDK
// sends fields stasis has no use for (e.g. mcp: null).
func decode(r *http.Request, v any) error {
	body, err := io.ReadAll(io.LimitReader(r.Body, maxJSONBody+1))
	if err != nil {
		return fmt.Errorf("could not read body: %w", err)
	}
	if len(body) > maxJSONBody {
		return fmt.Errorf("request body exceeds %d bytes", maxJSONBody)
	}
	if len(bytes.TrimSpace(body)) == 0 {
		return nil
	}
	if err := json.Unmarshal(body, v); err != nil {
		return fmt.Errorf("invalid JSON body: %v", err)
	}
	return nil
}

// networkJSON is E2B's SandboxNetworkConfig. allowOut and denyOut are
// stasis's allow_out and deny_out (the same semantics: CIDRs, addresses and
// domains to allow, CIDRs to deny, allow wins); allowPublicTraffic false
// makes previews private. The rest has no stasis counterpart and is refused.
type networkJSON struct {
	AllowOut           []string        `json:"allowOut"`
	DenyOut            []string        `json:"denyOut"`
	AllowPublicTraffic *bool           `json:"allowPublicTraffic"`
	EgressProxy        json.RawMessage `json:"egressProxy"`
	Rules              json.RawMessage `json:"rules"`
	HTTPSPorts         []int           `json:"httpsPorts"`
	MaskRequestHost    string          `json:"maskRequestHost"`
}

type createRequest struct {
	TemplateID      string `json:"templateID"`
	Timeout         *int   `json:"timeout"`
	AutoPause       bool   `json:"autoPause"`
	AutoPauseMemory *bool  `json:"autoPauseMemory"`
	AutoResume      *struct {
		Enabled bool `json:"enabled"`
	} `json:"autoResume"`
	AllowInternetAccess *bool             `json:"allow_internet_access"`
	Network             *networkJSON      `json:"network"`
	Metadata            map[string]string `json:"metadata"`
	EnvVars             map[string]string `json:"envVars"`
	VolumeMounts        []json.RawMessage `json:"volumeMounts"`
	Secure              *bool             `json:"secure"`
}

// internetDenied is the deny_out entry allow_internet_access: false stands
// for (E2B: "the same as specifying denyOut to 0.0.0.0/0").
const internetDenied = "0.0.0.0/0"

// egressRules maps E2B's network settings onto stasis's egress rules (nil:
// none given, the server's defaults). Settings stasis has no counterpart
// for are refused rather than accepted silently: that would promise an
// isolation or a routing that is not there. Bad entries are refused by the
// sandbox service, naming the entry.
func egressRules(allowInternet *bool, n *networkJSON) (*store.Network, error) {
	if n != nil {
		switch {
		case len(bytes.TrimSpace(n.EgressProxy)) > 0 && string(bytes.TrimSpace(n.EgressProxy)) != "null":
			return nil, errors.New("network.egressProxy is not supported by stasis")
		case len(bytes.TrimSpace(n.Rules)) > 0 && !slices.Contains([]string{"null", "{}"}, string(bytes.TrimSpace(n.Rules))):
			return nil, errors.New("network.rules (header transforms) are not supported through the E2B API; stasis injects credentials with its secrets API")
		case len(n.HTTPSPorts) > 0:
			return nil, errors.New("network.httpsPorts is not supported by stasis: sandbox ports are reached over plain HTTP")
		case n.MaskRequestHost != "":
			return nil, errors.New("network.maskRequestHost is not supported by stasis")
		}
	}
	denyAll := allowInternet != nil && !*allowInternet
	if !denyAll && (n == nil || (n.AllowOut == nil && n.DenyOut == nil)) {
		return nil, nil
	}
	out := &store.Network{AllowOut: []string{}, DenyOut: []string{}}
	if n != nil {
		out.AllowOut = append(out.AllowOut, n.AllowOut...)
		out.DenyOut = append(out.DenyOut, n.DenyOut...)
	}
	if denyAll && !slices.Contains(out.DenyOut, internetDenied) {
		out.DenyOut = append(out.DenyOut, internetDenied)
	}
	return out, nil
}

func (s *Server) create(w http.ResponseWriter, r *http.Request, teamID string) {
	var req createRequest
	if err := decode(r, &req); err != nil {
		writeError(w, http.StatusBadRequest, "%v", err)
		return
	}
	rules, err := egressRules(req.AllowInternetAccess, req.Network)
	if err != nil {
		writeError(w, http.StatusBadRequest, "%v", err)
		return
	}
	if len(req.VolumeMounts) > 0 {
		writeError(w, http.StatusBadRequest, "volumeMounts are not supported by stasis")
		return
	}
	if req.AutoPause && req.AutoPauseMemory != nil && !*req.AutoPauseMemory {
		writeError(w, http.StatusBadRequest, "autoPauseMemory: false is not supported: stasis always pauses with memory")
		return
	}
	timeout := defaultTimeout
	if req.Timeout != nil {
		timeout = *req.Timeout
	}
	p := sandbox.CreateParams{
		Name:           "e2b-" + req.TemplateID,
		Metadata:       req.Metadata,
		Env:            req.EnvVars,
		TimeoutSeconds: &timeout,
	}
	p.DeleteOnTimeout = !req.AutoPause
	// Without autoResume, traffic resumes a paused sandbox as in the rest
	// of stasis; autoResume {enabled: false} leaves that to connect.
	p.NoAutoResume = req.AutoResume != nil && !req.AutoResume.Enabled
	p.Network = rules
	if req.Network != nil && req.Network.AllowPublicTraffic != nil {
		private := !*req.Network.AllowPublicTraffic
		p.PreviewPrivate = &private
	}
	if req.TemplateID == "" {
		req.TemplateID = "base"
	}
	// A snapshot's ID is a template ID to E2B.
	if _, err := s.store.GetSavedSnapshot(r.Context(), teamID, req.TemplateID); err == nil {
		p.Snapshot = req.TemplateID
	} else if !errors.Is(err, store.ErrNotFound) {
		s.fail(w, err)
		return
	} else {
		p.Template = stasisTemplate(req.TemplateID)
	}
	sb, _, err := s.svc.Create(r.Context(), teamID, p)
	if err != nil {
		var e *sandbox.Error
		if errors.As(err, &e) && errors.Is(e.Kind, sandbox.ErrNotFound) {
			writeError(w, http.StatusNotFound, "template '%s' not found", req.TemplateID)
			return
		}
		s.fail(w, err)
		return
	}
	writeJSON(w, http.StatusCreated, s.sandboxJSON(sb))
}

// connect returns a sandbox, resuming it if it is paused (201 then, 200 if
// it was running), and extends its TTL to the requested timeout if that is
// later than the current one.
func (s *Server) connect(w http.ResponseWriter, r *http.Request, teamID string) {
	var req struct {
		Timeout *int  `json:"timeout"`
		Memory  *bool `json:"memory"`
	}
	if err := decode(r, &req); err != nil {
		writeError(w, http.StatusBadRequest, "%v", err)
		return
	}
	if req.Memory != nil && !*req.Memory {
		writeError(w, http.StatusBadRequest, "memory: false (resume without memory) is not supported by stasis")
		return
	}
	timeout := defaultTimeout
	if req.Timeout != nil {
		timeout = *req.Timeout
	}
	id := r.PathValue("id")
	sb, err := s.svc.Get(r.Context(), teamID, id)
	if err != nil {
		s.fail(w, err)
		return
	}
	status := http.StatusOK
	if state(sb) == "paused" {
		// Resume, then give the sandbox its TTL from now (Resume rotates
		// Superserve tokens only; the envd token stays).
		if sb, _, err = s.svc.Resume(r.Context(), teamID, id, true); err != nil {
			s.fail(w, err)
			return
		}
		status = http.StatusCreated
	}
	if sb.PauseAt == nil || time.Until(*sb.PauseAt) < time.Duration(timeout)*time.Second {
		if sb, err = s.svc.Update(r.Context(), teamID, id, sandbox.UpdateParams{
			TimeoutSeconds: sandbox.Optional[int]{Set: true, Value: &timeout}}); err != nil {
			s.fail(w, err)
			return
		}
	}
	writeJSON(w, status, s.sandboxJSON(sb))
}

func (s *Server) list(w http.ResponseWriter, r *http.Request, teamID string) {
	q := r.URL.Query()
	filter, err := parseMetadataQuery(q.Get("metadata"))
	if err != nil {
		writeError(w, http.StatusBadRequest, "invalid metadata filter: %v", err)
		return
	}
	states := map[string]bool{}
	for _, v := range q["state"] {
		for _, st := range strings.Split(v, ",") {
			if st != "running" && st != "paused" {
				writeError(w, http.StatusBadRequest, "invalid state %q: running or paused", st)
				return
			}
			states[st] = true
		}
	}
	limit, ok := pageLimit(w, q)
	if !ok {
		return
	}
	all, err := s.svc.List(r.Context(), teamID, filter)
	if err != nil {
		s.fail(w, err)
		return
	}
	desc := q.Get("order") != "asc"
	slices.SortFunc(all, func(a, b *store.Sandbox) int {
		c := a.CreatedAt.Compare(b.CreatedAt)
		if c == 0 {
			c = strings.Compare(a.ID, b.ID)
		}
		if desc {
			c = -c
		}
		return c
	})
	page(w, q, limit, all, func(sb *store.Sandbox) string { return sb.ID }, func(sb *store.Sandbox) bool {
		if sb.Status == store.StatusFailed || (len(states) > 0 && !states[state(sb)]) {
			return false
		}
		t := q.Get("template")
		return t == "" || e2bTemplate(sb.Template) == t || sb.Template == t
	}, listed)
}

// pageLimit reads a list's limit parameter (default 100), or answers 400.
func pageLimit(w http.ResponseWriter, q url.Values) (int, bool) {
	v := q.Get("limit")
	if v == "" {
		return 100, true
	}
	limit, err := strconv.Atoi(v)
	if err != nil || limit < 1 || limit > 1000 {
		writeError(w, http.StatusBadRequest, "limit must be between 1 and 1000")
		return 0, false
	}
	return limit, true
}

// page answers one page of a list: the items keep accepts, from the one
// whose ID is the nextToken cursor on, at most limit of them; when more
// follow, X-Next-Token is the ID of the next page's first.
func page[T, J any](w http.ResponseWriter, q url.Values, limit int, all []T, id func(T) string, keep func(T) bool, toJSON func(T) J) {
	next := q.Get("nextToken")
	out := []J{}
	started := next == ""
	for _, v := range all {
		if !started {
			if started = id(v) == next; !started {
				continue
			}
		}
		if !keep(v) {
			continue
		}
		if len(out) == limit {
			w.Header().Set("X-Next-Token", id(v))
			break
		}
		out = append(out, toJSON(v))
	}
	writeJSON(w, http.StatusOK, out)
}

func (s *Server) info(w http.ResponseWriter, r *http.Request, teamID string) {
	sb, err := s.svc.Get(r.Context(), teamID, r.PathValue("id"))
	if err != nil {
		s.fail(w, err)
		return
	}
	writeJSON(w, http.StatusOK, s.detail(sb))
}

func (s *Server) kill(w http.ResponseWriter, r *http.Request, teamID string) {
	id := r.PathValue("id")
	if err := s.svc.Delete(r.Context(), teamID, id); err != nil {
		s.fail(w, err)
		return
	}
	s.dropProcs(id)
	w.WriteHeader(http.StatusNoContent)
}

func (s *Server) setTimeout(w http.ResponseWriter, r *http.Request, teamID string) {
	var req struct {
		Timeout *int `json:"timeout"`
	}
	if err := decode(r, &req); err != nil {
		writeError(w, http.StatusBadRequest, "%v", err)
		return
	}
	if req.Timeout == nil {
		writeError(w, http.StatusBadRequest, "timeout is required")
		return
	}
	if _, err := s.svc.Update(r.Context(), teamID, r.PathValue("id"), sandbox.UpdateParams{
		TimeoutSeconds: sandbox.Optional[int]{Set: true, Value: req.Timeout}}); err != nil {
		s.fail(w, err)
		return
	}
	w.WriteHeader(http.StatusNoContent)
}

func (s *Server) pause(w http.ResponseWriter, r *http.Request, teamID string) {
	var req struct {
		Memory *bool `json:"memory"`
	}
	if err := decode(r, &req); err != nil {
		writeError(w, http.StatusBadRequest, "%v", err)
		return
	}
	if req.Memory != nil && !*req.Memory {
		writeError(w, http.StatusBadRequest, "memory: false is not supported: stasis always pauses with memory")
		return
	}
	id := r.PathValue("id")
	sb, err := s.svc.Get(r.Context(), teamID, id)
	if err != nil {
		s.fail(w, err)
		return
	}
	if state(sb) == "paused" {
		writeError(w, http.StatusConflict, "sandbox %s is already paused", id)
		return
	}
	if _, err := s.svc.Pause(r.Context(), teamID, id); err != nil {
		s.fail(w, err)
		return
	}
	w.WriteHeader(http.StatusNoContent)
}

type snapshotJSON struct {
	SnapshotID string   `json:"snapshotID"`
	Names      []string `json:"names"`
}

func snapshotInfo(sn *store.SavedSnapshot) snapshotJSON {
	names := []string{}
	if sn.Name != "" {
		names = append(names, sn.Name)
	}
	return snapshotJSON{SnapshotID: sn.ID, Names: names}
}

func (s *Server) createSnapshot(w http.ResponseWriter, r *http.Request, teamID string) {
	var req struct {
		Name string `json:"name"`
	}
	if err := decode(r, &req); err != nil {
		writeError(w, http.StatusBadRequest, "%v", err)
		return
	}
	sn, err := s.svc.SaveSnapshot(r.Context(), teamID, r.PathValue("id"), req.Name)
	if err != nil {
		s.fail(w, err)
		return
	}
	writeJSON(w, http.StatusCreated, snapshotInfo(sn))
}

func (s *Server) listSnapshots(w http.ResponseWriter, r *http.Request, teamID string) {
	q := r.URL.Query()
	all, err := s.svc.SavedSnapshots(r.Context(), teamID)
	if err != nil {
		s.fail(w, err)
		return
	}
	limit, ok := pageLimit(w, q)
	if !ok {
		return
	}
	page(w, q, limit, all, func(sn *store.SavedSnapshot) string { return sn.ID }, func(sn *store.SavedSnapshot) bool {
		if v := q.Get("sandboxID"); v != "" && sn.SandboxID != v {
			return false
		}
		v := q.Get("name")
		return v == "" || sn.Name == v || sn.ID == v
	}, snapshotInfo)
}

// deleteSnapshot serves DELETE /templates/{id}, which the SDK uses to delete
// snapshots. stasis's templates are managed through its own API.
func (s *Server) deleteSnapshot(w http.ResponseWriter, r *http.Request, teamID string) {
	if err := s.svc.DeleteSavedSnapshot(r.Context(), teamID, r.PathValue("id")); err != nil {
		s.fail(w, err)
		return
	}
	w.WriteHeader(http.StatusNoContent)
}

// fork checkpoints the sandbox (a running one is paused for it and resumed
// after) and starts count sandboxes from that state.
func (s *Server) fork(w http.ResponseWriter, r *http.Request, teamID string) {
	var req struct {
		Count   *int `json:"count"`
		Timeout *int `json:"timeout"`
	}
	if err := decode(r, &req); err != nil {
		writeError(w, http.StatusBadRequest, "%v", err)
		return
	}
	count, timeout := 1, 15
	if req.Count != nil {
		count = *req.Count
	}
	if req.Timeout != nil {
		timeout = *req.Timeout
	}
	id := r.PathValue("id")
	sb, err := s.svc.Get(r.Context(), teamID, id)
	if err != nil {
		s.fail(w, err)
		return
	}
	wasRunning := state(sb) == "running"
	if wasRunning {
		if _, err := s.svc.Pause(r.Context(), teamID, id); err != nil {
			s.fail(w, err)
			return
		}
	}
	created, ferr := s.svc.Fork(r.Context(), teamID, id, count)
	if wasRunning {
		if _, _, err := s.svc.Resume(r.Context(), teamID, id, true); err != nil {
			s.log.Error("e2b fork: resuming the source failed", "sandbox", id, "err", err)
		}
	}
	if ferr != nil && len(created) == 0 {
		s.fail(w, ferr)
		return
	}
	type result struct {
		Sandbox *sandboxJSON `json:"sandbox,omitempty"`
		Error   *apiError    `json:"error,omitempty"`
	}
	out := make([]result, 0, count)
	for _, c := range created {
		sb, err := s.svc.Update(r.Context(), teamID, c.Sandbox.ID, sandbox.UpdateParams{
			TimeoutSeconds: sandbox.Optional[int]{Set: true, Value: &timeout}})
		if err != nil {
			out = append(out, result{Error: &apiError{Code: http.StatusInternalServerError, Message: err.Error()}})
			continue
		}
		j := s.sandboxJSON(sb)
		out = append(out, result{Sandbox: &j})
	}
	for len(out) < count {
		out = append(out, result{Error: &apiError{Code: http.StatusInternalServerError, Message: fmt.Sprint(ferr)}})
	}
	writeJSON(w, http.StatusCreated, out)
}

func (s *Server) updateNetwork(w http.ResponseWriter, r *http.Request, teamID string) {
	var req struct {
		AllowInternetAccess *bool `json:"allow_internet_access"`
		networkJSON
	}
	if err := decode(r, &req); err != nil {
		writeError(w, http.StatusBadRequest, "%v", err)
		return
	}
	rules, err := egressRules(req.AllowInternetAccess, &req.networkJSON)
	if err != nil {
		writeError(w, http.StatusBadRequest, "%v", err)
		return
	}
	// The update replaces the rules; omitted fields clear them.
	if _, err := s.svc.Update(r.Context(), teamID, r.PathValue("id"), sandbox.UpdateParams{
		Network: sandbox.Optional[store.Network]{Set: true, Value: rules}}); err != nil {
		s.fail(w, err)
		return
	}
	w.WriteHeader(http.StatusNoContent)
}
