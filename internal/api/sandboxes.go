package api

import (
	"context"
	"encoding/json"
	"net/http"
	"strings"
	"time"

	"github.com/stasis-sandbox/stasis/internal/sandbox"
	"github.com/stasis-sandbox/stasis/internal/store"
)

// sandboxJSON is a sandbox on the wire (Superserve's field names).
type sandboxJSON struct {
	ID                string            `json:"id"`
	Name              string            `json:"name"`
	Status            string            `json:"status"`
	Template          string            `json:"template"`
	VCPUCount         int               `json:"vcpu_count"`
	MemoryMiB         int               `json:"memory_mib"`
	CreatedAt         time.Time         `json:"created_at"`
	TimeoutSeconds    *int              `json:"timeout_seconds"`
	AutoDeleteSeconds *int              `json:"auto_delete_seconds"`
	AutoDeleteAt      *time.Time        `json:"auto_delete_at,omitempty"`
	Metadata          map[string]string `json:"metadata"`
	Error             string            `json:"error,omitempty"` // why a sandbox is failed, or why its last resume failed
	Usage             usageJSON         `json:"usage"`           // stasis extension
	Pause             *pauseJSON        `json:"pause,omitempty"` // stasis extension: where a paused sandbox is
	AccessToken       string            `json:"access_token,omitempty"`
	Network           networkJSON       `json:"network"`
	PreviewPrivate    bool              `json:"preview_private"` // stasis extension: preview URLs need the access token
	Secrets           []bindingJSON     `json:"secrets,omitempty"`
	Node              string            `json:"node,omitempty"` // stasis extension: the cluster node that owns it
}

// pauseJSON says where a paused sandbox is. Durable: its snapshot is sealed
// on disk and survives a restart or a host crash (usually well within a
// second of the pause). InMemory: it is also still frozen in RAM, so resuming
// it is a thaw (the tiered pause).
//
// With an object store (--snapshot-url), Portable: the snapshot is in the
// store, so any node can resume the sandbox; Upload says how its upload
// stands (e.g. failed, retrying). Both are absent on a single node.
type pauseJSON struct {
	Durable  bool        `json:"durable"`
	InMemory bool        `json:"in_memory"`
	Portable *bool       `json:"portable,omitempty"`
	Upload   *uploadJSON `json:"upload,omitempty"`
}

// uploadJSON is the state of a paused sandbox's snapshot upload.
type uploadJSON struct {
	State  string `json:"state"`            // pending, uploading, portable, failed ("" before it starts)
	Detail string `json:"detail,omitempty"` // why it failed and when it retries
}

// usageJSON is metered usage; compute is billed only while active.
type usageJSON struct {
	ActiveSeconds float64 `json:"active_seconds"`
	PausedSeconds float64 `json:"paused_seconds"`
	SnapshotBytes int64   `json:"snapshot_bytes"`
}

func (s *Server) toJSON(r *http.Request, sb *store.Sandbox, token string) sandboxJSON {
	out := sandboxJSON{
		ID: sb.ID, Name: sb.Name, Status: sb.Status, Template: sb.Template,
		VCPUCount: sb.VCPU, MemoryMiB: sb.MemoryMiB, CreatedAt: sb.CreatedAt,
		TimeoutSeconds: sb.TimeoutSeconds, AutoDeleteSeconds: sb.AutoDeleteSeconds,
		Metadata: sb.Metadata, Error: sb.Error, AccessToken: token, Node: sb.Node,
	}
	if out.Metadata == nil {
		out.Metadata = map[string]string{}
	}
	out.AutoDeleteAt = sb.DeleteAt
	out.Network = networkToJSON(sb.Network)
	out.PreviewPrivate = sb.PreviewPrivate
	if bs, err := s.bindingsOf(r, sb.ID); err != nil {
		s.log.Error("secret bindings", "sandbox", sb.ID, "err", err)
	} else {
		out.Secrets = bs
	}
	active, paused := sb.Usage(time.Now())
	out.Usage = usageJSON{ActiveSeconds: seconds(active), PausedSeconds: seconds(paused), SnapshotBytes: sb.SnapshotBytes}
	if sb.Status == store.StatusPaused {
		durable, inMemory := s.svc.PauseState(sb)
		out.Pause = &pauseJSON{Durable: durable, InMemory: inMemory}
		if p := s.svc.Portability(sb); p != nil {
			out.Pause.Portable = &p.Portable
			out.Pause.Upload = &uploadJSON{State: p.State, Detail: p.Detail}
		}
	}
	return out
}

type createRequest struct {
	Name              *string           `json:"name"`
	FromTemplate      string            `json:"from_template"`
	FromSnapshot      string            `json:"from_snapshot"`
	TimeoutSeconds    *int              `json:"timeout_seconds"`
	AutoDeleteSeconds *int              `json:"auto_delete_seconds"`
	Metadata          map[string]string `json:"metadata"`
	EnvVars           map[string]string `json:"env_vars"`
	VCPU              int               `json:"vcpu"`       // stasis extension
	MemoryMiB         int               `json:"memory_mib"` // stasis extension
	DiskMiB           int               `json:"disk_mib"`   // stasis extension: writable-layer quota
	Network           *networkJSON      `json:"network"`
	PreviewPrivate    *bool             `json:"preview_private"` // stasis extension
	Secrets           map[string]string `json:"secrets"`         // env key → secret name
}

func isEmptyJSON(raw json.RawMessage) bool {
	s := strings.TrimSpace(string(raw))
	return s == "" || s == "null" || s == "{}" || s == "[]"
}

func (s *Server) createSandbox(w http.ResponseWriter, r *http.Request, teamID string) {
	var req createRequest
	if err := decodeJSON(w, r, &req, true); err != nil {
		s.fail(w, err)
		return
	}
	switch {
	case req.FromSnapshot != "" && req.FromTemplate != "":
		writeError(w, http.StatusBadRequest, "invalid_request", "give from_template or from_snapshot, not both")
		return
	}
	if err := s.checkCreateSecrets(r, teamID, req.Secrets, req.EnvVars); err != nil {
		s.failSecret(w, err)
		return
	}
	name := "sandbox-" + time.Now().UTC().Format("20060102-150405")
	if req.Name != nil {
		name = *req.Name
	}
	sb, tok, err := s.svc.Create(r.Context(), teamID, sandbox.CreateParams{
		Name: name, Template: req.FromTemplate, Snapshot: req.FromSnapshot, VCPU: req.VCPU, MemoryMiB: req.MemoryMiB, DiskMiB: req.DiskMiB,
		Metadata: req.Metadata, Env: req.EnvVars,
		TimeoutSeconds: req.TimeoutSeconds, AutoDeleteSeconds: req.AutoDeleteSeconds,
		Network: req.Network.toStore(), PreviewPrivate: req.PreviewPrivate,
	})
	if err != nil {
		s.fail(w, err)
		return
	}
	if len(req.Secrets) > 0 {
		if err := s.secrets.Bind(r.Context(), teamID, sb.ID, req.Secrets); err != nil {
			// A secret deleted meanwhile: no half-bound sandbox is left.
			if derr := s.svc.Delete(context.WithoutCancel(r.Context()), teamID, sb.ID); derr != nil {
				s.log.Error("deleting a sandbox whose secrets could not be bound", "sandbox", sb.ID, "err", derr)
			}
			s.failSecret(w, err)
			return
		}
	}
	writeJSON(w, http.StatusCreated, s.toJSON(r, sb, tok))
}

func (s *Server) listSandboxes(w http.ResponseWriter, r *http.Request, teamID string) {
	filter := map[string]string{}
	for k, vs := range r.URL.Query() {
		key, ok := strings.CutPrefix(k, "metadata.")
		if !ok || key == "" {
			writeError(w, http.StatusBadRequest, "invalid_request",
				"unknown query parameter "+sandbox.Shorten(k)+" (filter with metadata.KEY=VALUE)")
			return
		}
		filter[key] = vs[0]
	}
	list, err := s.svc.List(r.Context(), teamID, filter)
	if err != nil {
		s.fail(w, err)
		return
	}
	out := make([]sandboxJSON, 0, len(list))
	for _, sb := range list {
		out = append(out, s.toJSON(r, sb, ""))
	}
	writeJSON(w, http.StatusOK, out)
}

func (s *Server) getSandbox(w http.ResponseWriter, r *http.Request, teamID string) {
	sb, err := s.svc.Get(r.Context(), teamID, r.PathValue("id"))
	if err != nil {
		s.fail(w, err)
		return
	}
	writeJSON(w, http.StatusOK, s.toJSON(r, sb, ""))
}

func (s *Server) updateSandbox(w http.ResponseWriter, r *http.Request, teamID string) {
	var raw map[string]json.RawMessage
	if err := decodeJSON(w, r, &raw, false); err != nil {
		s.fail(w, err)
		return
	}
	var p sandbox.UpdateParams
	for k, v := range raw {
		var err error
		switch k {
		case "metadata":
			err = decodeOptional(v, &p.Metadata)
		case "timeout_seconds":
			err = decodeOptional(v, &p.TimeoutSeconds)
		case "auto_delete_seconds":
			err = decodeOptional(v, &p.AutoDeleteSeconds)
		case "network":
			err = decodeNetworkUpdate(v, &p.Network)
		case "preview_private":
			err = decodeOptional(v, &p.PreviewPrivate)
		default:
			writeError(w, http.StatusBadRequest, "invalid_request",
				"unknown field "+sandbox.Shorten(k)+" (updatable: metadata, timeout_seconds, auto_delete_seconds, network, preview_private)")
			return
		}
		if err != nil {
			writeError(w, http.StatusBadRequest, "invalid_request", "field "+k+": "+jsonErrorText(err))
			return
		}
	}
	sb, err := s.svc.Update(r.Context(), teamID, r.PathValue("id"), p)
	if err != nil {
		s.fail(w, err)
		return
	}
	writeJSON(w, http.StatusOK, s.toJSON(r, sb, ""))
}

func decodeOptional[T any](raw json.RawMessage, o *sandbox.Optional[T]) error {
	o.Set = true
	if strings.TrimSpace(string(raw)) == "null" {
		return nil
	}
	var v T
	if err := json.Unmarshal(raw, &v); err != nil {
		return err
	}
	o.Value = &v
	return nil
}

func (s *Server) deleteSandbox(w http.ResponseWriter, r *http.Request, teamID string) {
	if err := s.svc.Delete(r.Context(), teamID, r.PathValue("id")); err != nil {
		s.fail(w, err)
		return
	}
	w.WriteHeader(http.StatusNoContent)
}

func (s *Server) pauseSandbox(w http.ResponseWriter, r *http.Request, teamID string) {
	sb, err := s.svc.Pause(r.Context(), teamID, r.PathValue("id"))
	if err != nil {
		s.fail(w, err)
		return
	}
	writeJSON(w, http.StatusOK, s.toJSON(r, sb, ""))
}

func (s *Server) resumeSandbox(activate bool) teamHandler {
	return func(w http.ResponseWriter, r *http.Request, teamID string) {
		sb, tok, err := s.svc.Resume(r.Context(), teamID, r.PathValue("id"), activate)
		if err != nil {
			s.fail(w, err)
			return
		}
		writeJSON(w, http.StatusOK, s.toJSON(r, sb, tok))
	}
}

func seconds(d time.Duration) float64 { return float64(d.Milliseconds()) / 1000 }

// teamUsage serves GET /usage: the team's metered totals.
func (s *Server) teamUsage(w http.ResponseWriter, r *http.Request, teamID string) {
	u, err := s.store.TeamUsage(r.Context(), teamID, time.Now())
	if err != nil {
		s.fail(w, err)
		return
	}
	writeJSON(w, http.StatusOK, usageJSON{ActiveSeconds: seconds(u.Active), PausedSeconds: seconds(u.Paused), SnapshotBytes: u.SnapshotBytes})
}

// forkSandbox serves POST /sandboxes/{id}/fork {count} (a stasis extension):
// new sandboxes that continue from the paused sandbox's snapshot. In a
// cluster each is placed as a create is.
func (s *Server) forkSandbox(w http.ResponseWriter, r *http.Request, teamID string) {
	var req struct {
		Count *int `json:"count"`
	}
	if err := decodeJSON(w, r, &req, true); err != nil {
		s.fail(w, err)
		return
	}
	count := 1
	if req.Count != nil {
		count = *req.Count
	}
	var peers sandbox.ForkPeers // nil: every child here
	if s.peers != nil {
		// Children placed on other nodes are made there as this client.
		peers = forkPeers{p: s.peers, auth: http.Header{"X-Api-Key": r.Header.Values("X-API-Key")}}
	}
	created, err := s.svc.ForkAcross(r.Context(), teamID, r.PathValue("id"), count, peers)
	s.writeForks(w, r, created, err)
}

// snapshotJSON is a saved snapshot on the wire (a stasis extension).
type snapshotJSON struct {
	ID        string    `json:"id"`
	SandboxID string    `json:"sandbox_id"`
	Name      string    `json:"name"`
	SizeBytes int64     `json:"size_bytes"`
	CreatedAt time.Time `json:"created_at"`
}

func savedToJSON(s *store.SavedSnapshot) snapshotJSON {
	return snapshotJSON{ID: s.ID, SandboxID: s.SandboxID, Name: s.Name, SizeBytes: s.SizeBytes, CreatedAt: s.CreatedAt}
}

func (s *Server) saveSnapshot(w http.ResponseWriter, r *http.Request, teamID string) {
	var req struct {
		Name string `json:"name"`
	}
	if err := decodeJSON(w, r, &req, true); err != nil {
		s.fail(w, err)
		return
	}
	snap, err := s.svc.SaveSnapshot(r.Context(), teamID, r.PathValue("id"), req.Name)
	if err != nil {
		s.fail(w, err)
		return
	}
	writeJSON(w, http.StatusCreated, savedToJSON(snap))
}

func (s *Server) listSnapshots(w http.ResponseWriter, r *http.Request, teamID string) {
	list, err := s.svc.SavedSnapshots(r.Context(), teamID)
	if err != nil {
		s.fail(w, err)
		return
	}
	out := make([]snapshotJSON, 0, len(list))
	for _, snap := range list {
		out = append(out, savedToJSON(snap))
	}
	writeJSON(w, http.StatusOK, out)
}

func (s *Server) deleteSnapshot(w http.ResponseWriter, r *http.Request, teamID string) {
	if err := s.svc.DeleteSavedSnapshot(r.Context(), teamID, r.PathValue("id")); err != nil {
		s.fail(w, err)
		return
	}
	w.WriteHeader(http.StatusNoContent)
}
