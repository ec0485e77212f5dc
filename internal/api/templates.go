package api

import (
	"encoding/json"
	"fmt"
	"net/http"
	"strconv"
	"time"

	"github.com/stasis-sandbox/stasis/internal/sandbox"
	"github.com/stasis-sandbox/stasis/internal/store"
)

// templateJSON is a template on the wire (Superserve's field names).
type templateJSON struct {
	ID            string     `json:"id"`
	Name          string     `json:"name"`
	TeamID        string     `json:"team_id"`
	Status        string     `json:"status"`
	VCPU          int        `json:"vcpu"`
	MemoryMiB     int        `json:"memory_mib"`
	DiskMiB       int        `json:"disk_mib"`
	SizeBytes     int64      `json:"size_bytes,omitempty"`
	ErrorMessage  string     `json:"error_message,omitempty"`
	CreatedAt     time.Time  `json:"created_at"`
	BuiltAt       *time.Time `json:"built_at,omitempty"`
	LatestBuildID string     `json:"latest_build_id,omitempty"`
	BuildID       string     `json:"build_id,omitempty"` // only in the create response
}

func templateToJSON(t *store.Template) templateJSON {
	return templateJSON{ID: t.ID, Name: t.Name, TeamID: t.TeamID, Status: t.Status, VCPU: t.VCPU,
		MemoryMiB: t.MemoryMiB, DiskMiB: t.DiskMiB, SizeBytes: t.SnapshotBytes, ErrorMessage: t.Error,
		CreatedAt: t.CreatedAt, BuiltAt: t.BuiltAt, LatestBuildID: t.LatestBuildID}
}

type buildJSON struct {
	ID            string     `json:"id"`
	TemplateID    string     `json:"template_id"`
	Status        string     `json:"status"`
	BuildSpecHash string     `json:"build_spec_hash"`
	ErrorMessage  string     `json:"error_message,omitempty"`
	StartedAt     *time.Time `json:"started_at,omitempty"`
	FinalizedAt   *time.Time `json:"finalized_at,omitempty"`
	CreatedAt     time.Time  `json:"created_at"`
}

func buildToJSON(b *store.Build) buildJSON {
	return buildJSON{ID: b.ID, TemplateID: b.TemplateID, Status: b.Status, BuildSpecHash: b.SpecHash,
		ErrorMessage: b.Error, StartedAt: b.StartedAt, FinalizedAt: b.FinalizedAt, CreatedAt: b.CreatedAt}
}

// createTemplateRequest is Superserve's template create body: the build is
// in build_spec; any other field is an error (decodeJSON).
type createTemplateRequest struct {
	Name      string             `json:"name"`
	VCPU      int                `json:"vcpu"`
	MemoryMiB int                `json:"memory_mib"`
	DiskMiB   int                `json:"disk_mib"`
	BuildSpec *sandbox.BuildSpec `json:"build_spec"`
}

func (s *Server) createTemplate(w http.ResponseWriter, r *http.Request, teamID string) {
	var req createTemplateRequest
	if err := decodeJSON(w, r, &req, false); err != nil {
		s.fail(w, err)
		return
	}
	if req.BuildSpec == nil {
		writeError(w, http.StatusBadRequest, "invalid_request",
			`build_spec is required: {"name": ..., "build_spec": {"from": IMAGE, "steps": [...], "start_cmd": ..., "ready_cmd": ...}}`)
		return
	}
	t, b, err := s.svc.CreateTemplate(r.Context(), teamID, sandbox.TemplateParams{
		Name: req.Name, VCPU: req.VCPU, MemoryMiB: req.MemoryMiB, DiskMiB: req.DiskMiB, Spec: *req.BuildSpec})
	if err != nil {
		s.fail(w, err)
		return
	}
	out := templateToJSON(t)
	out.BuildID = b.ID
	writeJSON(w, http.StatusAccepted, out)
}

func (s *Server) listTemplates(w http.ResponseWriter, r *http.Request, teamID string) {
	list, err := s.svc.ListTemplates(r.Context(), teamID, r.URL.Query().Get("name_prefix"))
	if err != nil {
		s.fail(w, err)
		return
	}
	out := make([]templateJSON, 0, len(list))
	for _, t := range list {
		out = append(out, templateToJSON(t))
	}
	writeJSON(w, http.StatusOK, out)
}

func (s *Server) getTemplate(w http.ResponseWriter, r *http.Request, teamID string) {
	t, err := s.svc.GetTemplate(r.Context(), teamID, r.PathValue("id"))
	if err != nil {
		s.fail(w, err)
		return
	}
	writeJSON(w, http.StatusOK, templateToJSON(t))
}

func (s *Server) deleteTemplate(w http.ResponseWriter, r *http.Request, teamID string) {
	if err := s.svc.DeleteTemplate(r.Context(), teamID, r.PathValue("id")); err != nil {
		s.fail(w, err)
		return
	}
	w.WriteHeader(http.StatusNoContent)
}

func (s *Server) rebuildTemplate(w http.ResponseWriter, r *http.Request, teamID string) {
	b, err := s.svc.Rebuild(r.Context(), teamID, r.PathValue("id"))
	if err != nil {
		s.fail(w, err)
		return
	}
	writeJSON(w, http.StatusAccepted, buildToJSON(b))
}

func (s *Server) listBuilds(w http.ResponseWriter, r *http.Request, teamID string) {
	limit := 0
	if v := r.URL.Query().Get("limit"); v != "" {
		n, err := strconv.Atoi(v)
		if err != nil || n < 0 {
			writeError(w, http.StatusBadRequest, "invalid_request", "limit must be a non-negative integer")
			return
		}
		limit = n
	}
	list, err := s.svc.Builds(r.Context(), teamID, r.PathValue("id"), limit)
	if err != nil {
		s.fail(w, err)
		return
	}
	out := make([]buildJSON, 0, len(list))
	for _, b := range list {
		out = append(out, buildToJSON(b))
	}
	writeJSON(w, http.StatusOK, out)
}

func (s *Server) getBuild(w http.ResponseWriter, r *http.Request, teamID string) {
	_, b, err := s.svc.Build(r.Context(), teamID, r.PathValue("id"), r.PathValue("build"))
	if err != nil {
		s.fail(w, err)
		return
	}
	writeJSON(w, http.StatusOK, buildToJSON(b))
}

func (s *Server) cancelBuild(w http.ResponseWriter, r *http.Request, teamID string) {
	if err := s.svc.CancelBuild(r.Context(), teamID, r.PathValue("id"), r.PathValue("build")); err != nil {
		s.fail(w, err)
		return
	}
	w.WriteHeader(http.StatusNoContent)
}

// buildLogs streams a build's log as Server-Sent Events, ending with an
// event that has finished=true and the final status.
func (s *Server) buildLogs(w http.ResponseWriter, r *http.Request, teamID string) {
	if _, _, err := s.svc.Build(r.Context(), teamID, r.PathValue("id"), r.PathValue("build")); err != nil {
		s.fail(w, err)
		return
	}
	flusher, _ := w.(http.Flusher)
	w.Header().Set("Content-Type", "text/event-stream")
	w.Header().Set("Cache-Control", "no-cache")
	w.WriteHeader(http.StatusOK)
	s.svc.FollowBuild(r.Context(), teamID, r.PathValue("id"), r.PathValue("build"), func(ev sandbox.LogEvent) error {
		b, _ := json.Marshal(ev)
		if _, err := fmt.Fprintf(w, "data: %s\n\n", b); err != nil {
			return err
		}
		if flusher != nil {
			flusher.Flush()
		}
		return nil
	})
}
