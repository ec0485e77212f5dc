package stasis

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"net/url"
	"regexp"
	"strconv"
	"strings"
	"time"
)

// TemplateSpec describes a template for Client.CreateTemplate: a base image,
// build steps run in a build sandbox, and optionally a process to start
// (StartCmd) and a check that it is up (ReadyCmd). The running build
// sandbox is then snapshotted; sandboxes created from the template restore
// that snapshot, with the StartCmd processes already running.
type TemplateSpec struct {
	// Name is the template's unique name; sandboxes name it in
	// CreateOptions.Template. Names starting with "stasis/" are reserved.
	Name string
	// From is the base: an OCI image reference pulled by the server (e.g.
	// "docker.io/library/python:3.12-slim") or a built-in template
	// ("stasis/minimal", "stasis/base"). Required.
	From string
	// Steps run in order during the build.
	Steps []BuildStep
	// StartCmd is started in the background after the steps; its processes
	// are running in every sandbox created from the template.
	StartCmd string
	// ReadyCmd is retried until it exits 0 before the snapshot is taken.
	ReadyCmd string
	// VCPU, MemoryMiB and DiskMiB size sandboxes made from the template;
	// zero uses the server's defaults.
	VCPU      int
	MemoryMiB int
	DiskMiB   int
}

// BuildStep is one step of a template build. Exactly one field is set; the
// constructors RunStep, EnvStep, WorkdirStep and UserStep build them.
type BuildStep struct {
	// Run is a shell command; a non-zero exit fails the build with
	// BuildError code "step_failed".
	Run string
	// Env sets an environment variable for later steps and for sandboxes.
	Env *StepEnv
	// Workdir sets the working directory (absolute) for later steps and
	// for sandboxes.
	Workdir string
	// User switches (creating it if needed) the user later steps and
	// sandbox commands run as.
	User *StepUser
}

// StepEnv is the variable of an env step.
type StepEnv struct {
	Key   string `json:"key"`
	Value string `json:"value"`
}

// StepUser is the user of a user step; Sudo grants passwordless sudo.
type StepUser struct {
	Name string `json:"name"`
	Sudo bool   `json:"sudo,omitempty"`
}

// RunStep returns a step that runs a shell command.
func RunStep(command string) BuildStep { return BuildStep{Run: command} }

// EnvStep returns a step that sets an environment variable.
func EnvStep(key, value string) BuildStep { return BuildStep{Env: &StepEnv{Key: key, Value: value}} }

// WorkdirStep returns a step that sets the working directory.
func WorkdirStep(dir string) BuildStep { return BuildStep{Workdir: dir} }

// UserStep returns a step that switches to user name, with sudo if asked.
func UserStep(name string, sudo bool) BuildStep {
	return BuildStep{User: &StepUser{Name: name, Sudo: sudo}}
}

// MarshalJSON encodes the wire form: an object with exactly one of run,
// env, workdir and user.
func (s BuildStep) MarshalJSON() ([]byte, error) {
	w, err := s.wire()
	if err != nil {
		return nil, err
	}
	return json.Marshal(w)
}

// UnmarshalJSON decodes the wire form.
func (s *BuildStep) UnmarshalJSON(b []byte) error {
	var w stepWire
	if err := json.Unmarshal(b, &w); err != nil {
		return err
	}
	*s = BuildStep{Env: w.Env, User: w.User}
	if w.Run != nil {
		s.Run = *w.Run
	}
	if w.Workdir != nil {
		s.Workdir = *w.Workdir
	}
	return nil
}

type stepWire struct {
	Run     *string   `json:"run,omitempty"`
	Env     *StepEnv  `json:"env,omitempty"`
	Workdir *string   `json:"workdir,omitempty"`
	User    *StepUser `json:"user,omitempty"`
}

func (s BuildStep) wire() (stepWire, error) {
	var w stepWire
	n := 0
	if s.Run != "" {
		w.Run = &s.Run
		n++
	}
	if s.Env != nil {
		w.Env = s.Env
		n++
	}
	if s.Workdir != "" {
		w.Workdir = &s.Workdir
		n++
	}
	if s.User != nil {
		w.User = s.User
		n++
	}
	if n != 1 {
		return w, errorf(ErrValidation, "a build step must have exactly one of Run, Env, Workdir, User (got %d)", n)
	}
	return w, nil
}

// TemplateStatus is a template's state: pending or building until its
// first build finishes, then ready or failed. A ready template stays ready
// while it is rebuilt.
type TemplateStatus string

// Template statuses.
const (
	TemplatePending  TemplateStatus = "pending"
	TemplateBuilding TemplateStatus = "building"
	TemplateReady    TemplateStatus = "ready"
	TemplateFailed   TemplateStatus = "failed"
)

// Template is a user template as the server last reported it, and a handle
// for its builds. It marshals to the wire JSON. Its fields are not updated
// by its methods: GetTemplate (or WaitUntilReady's result) fetches fresh
// ones. It is safe for concurrent use.
type Template struct {
	ID        string         `json:"id"`
	Name      string         `json:"name"`
	TeamID    string         `json:"team_id"`
	Status    TemplateStatus `json:"status"`
	VCPU      int            `json:"vcpu"`
	MemoryMiB int            `json:"memory_mib"`
	DiskMiB   int            `json:"disk_mib"`
	// SizeBytes is the size of the template's snapshot once built.
	SizeBytes int64 `json:"size_bytes,omitempty"`
	// ErrorMessage is why the last build failed ("code: message").
	ErrorMessage string    `json:"error_message,omitempty"`
	CreatedAt    time.Time `json:"created_at"`
	// BuiltAt is when the current snapshot was made; zero if never.
	BuiltAt time.Time `json:"built_at,omitzero"`
	// LatestBuildID is the most recent build (for a template just
	// created, its first build).
	LatestBuildID string `json:"latest_build_id,omitempty"`

	c *Client
}

type templateWire struct {
	Template
	BuildID string `json:"build_id,omitempty"`
}

func (c *Client) newTemplate(w templateWire, what string) (*Template, error) {
	if w.ID == "" {
		return nil, fmt.Errorf("stasis: %s: response has no template id", what)
	}
	t := w.Template
	if w.BuildID != "" {
		t.LatestBuildID = w.BuildID
	}
	t.c = c
	return &t, nil
}

// BuildStatus is a template build's state.
type BuildStatus string

// Build statuses. Pending, building and snapshotting are in progress;
// ready, failed and cancelled are final.
const (
	BuildPending      BuildStatus = "pending"
	BuildBuilding     BuildStatus = "building"
	BuildSnapshotting BuildStatus = "snapshotting"
	BuildReady        BuildStatus = "ready"
	BuildFailed       BuildStatus = "failed"
	BuildCancelled    BuildStatus = "cancelled"
)

// Done reports whether the status is final.
func (s BuildStatus) Done() bool {
	return s == BuildReady || s == BuildFailed || s == BuildCancelled
}

// Build is one build of a template. It marshals to the wire JSON.
type Build struct {
	ID         string      `json:"id"`
	TemplateID string      `json:"template_id"`
	Status     BuildStatus `json:"status"`
	// SpecHash identifies the spec built; an unchanged rebuild returns the
	// existing build.
	SpecHash string `json:"build_spec_hash"`
	// ErrorMessage is why the build failed, "code: message".
	ErrorMessage string    `json:"error_message,omitempty"`
	StartedAt    time.Time `json:"started_at,omitzero"`
	FinalizedAt  time.Time `json:"finalized_at,omitzero"`
	CreatedAt    time.Time `json:"created_at"`
}

// Err returns a *BuildError for a failed or cancelled build, else nil.
func (b *Build) Err() error {
	switch b.Status {
	case BuildFailed:
		code, msg := ParseBuildError(b.ErrorMessage)
		return &BuildError{Code: code, Message: msg, BuildID: b.ID, TemplateID: b.TemplateID}
	case BuildCancelled:
		return &BuildError{Code: BuildCodeCancelled, Message: "template build was cancelled", BuildID: b.ID, TemplateID: b.TemplateID}
	}
	return nil
}

// BuildLogEvent is one event of a build's log. Text is raw output (a chunk
// of a step's stdout or stderr) or, for the "system" stream, whole lines
// from the builder. The last event has Finished set and the final Status.
type BuildLogEvent struct {
	Timestamp time.Time   `json:"timestamp"`
	Stream    string      `json:"stream"` // "stdout", "stderr" or "system"
	Text      string      `json:"text"`
	Finished  bool        `json:"finished,omitempty"`
	Status    BuildStatus `json:"status,omitempty"`
}

// Build error codes: the prefix of a failed build's error message.
const (
	BuildCodeImagePullFailed = "image_pull_failed"
	BuildCodeStepFailed      = "step_failed"
	BuildCodeStartCmdFailed  = "start_cmd_failed"
	BuildCodeReadyCmdFailed  = "ready_cmd_failed"
	BuildCodeSnapshotFailed  = "snapshot_failed"
	BuildCodeBuildFailed     = "build_failed"
	// BuildCodeCancelled is used by the SDK for a cancelled build.
	BuildCodeCancelled = "cancelled"
)

// BuildError is a template build that failed or was cancelled. It matches
// ErrBuildFailed with errors.Is.
type BuildError struct {
	// Code is one of the BuildCode constants (new server versions may add
	// others).
	Code       string
	Message    string
	BuildID    string
	TemplateID string
}

func (e *BuildError) Error() string {
	if e.Code == BuildCodeCancelled {
		return "stasis: " + e.Message
	}
	return fmt.Sprintf("stasis: template build failed: %s: %s", e.Code, e.Message)
}

// Is makes a BuildError match ErrBuildFailed.
func (e *BuildError) Is(target error) bool { return target == ErrBuildFailed }

var buildErrorRE = regexp.MustCompile(`(?s)^(\w+):\s*(.*)$`)

// ParseBuildError splits a build's error message "code: message" into its
// parts, as the Superserve SDKs do. A message without a code prefix gets
// code "build_failed".
func ParseBuildError(errorMessage string) (code, message string) {
	if errorMessage == "" {
		return BuildCodeBuildFailed, "template build failed"
	}
	if m := buildErrorRE.FindStringSubmatch(errorMessage); m != nil && strings.TrimSpace(m[2]) != "" {
		return m[1], strings.TrimSpace(m[2])
	}
	return BuildCodeBuildFailed, errorMessage
}

// ---------------------------------------------------------------------------
// Client calls

func templatePath(nameOrID string, rest ...string) string {
	p := "/templates/" + url.PathEscape(nameOrID)
	for _, r := range rest {
		p += "/" + url.PathEscape(r)
	}
	return p
}

func checkName(what, s string) error {
	if strings.TrimSpace(s) == "" {
		return errorf(ErrValidation, "empty %s", what)
	}
	return nil
}

// CreateTemplate stores a template and starts its first build; it returns
// at once, with LatestBuildID naming that build. Follow it with
// Template.WaitUntilReady or Template.FollowLogs. A name that is taken is
// an error matching ErrConflict: rebuild that template instead.
func (c *Client) CreateTemplate(ctx context.Context, spec TemplateSpec) (*Template, error) {
	if err := checkName("template name", spec.Name); err != nil {
		return nil, err
	}
	if err := checkName("template base (From)", spec.From); err != nil {
		return nil, err
	}
	if spec.VCPU < 0 || spec.MemoryMiB < 0 || spec.DiskMiB < 0 {
		return nil, errorf(ErrValidation, "negative template size")
	}
	type buildSpec struct {
		From     string      `json:"from"`
		Steps    []BuildStep `json:"steps,omitempty"`
		StartCmd string      `json:"start_cmd,omitempty"`
		ReadyCmd string      `json:"ready_cmd,omitempty"`
	}
	body := struct {
		Name      string    `json:"name"`
		VCPU      int       `json:"vcpu,omitempty"`
		MemoryMiB int       `json:"memory_mib,omitempty"`
		DiskMiB   int       `json:"disk_mib,omitempty"`
		BuildSpec buildSpec `json:"build_spec"`
	}{spec.Name, spec.VCPU, spec.MemoryMiB, spec.DiskMiB,
		buildSpec{spec.From, spec.Steps, spec.StartCmd, spec.ReadyCmd}}
	for i, st := range spec.Steps {
		if _, err := st.wire(); err != nil {
			return nil, fmt.Errorf("step %d: %w", i+1, err)
		}
	}
	var w templateWire
	if err := c.doJSON(ctx, call{method: http.MethodPost, path: "/templates", json: body}, &w); err != nil {
		return nil, err
	}
	t, err := c.newTemplate(w, "POST /templates")
	if err == nil && t.LatestBuildID == "" {
		err = errors.New("stasis: POST /templates: response has no build_id")
	}
	return t, err
}

// GetTemplate returns a template by name or id.
func (c *Client) GetTemplate(ctx context.Context, nameOrID string) (*Template, error) {
	if err := checkName("template name", nameOrID); err != nil {
		return nil, err
	}
	var w templateWire
	if err := c.doJSON(ctx, call{method: http.MethodGet, path: templatePath(nameOrID)}, &w); err != nil {
		return nil, err
	}
	return c.newTemplate(w, "GET /templates/{id}")
}

// ListTemplates returns the team's templates whose names start with
// namePrefix (all of them for "").
func (c *Client) ListTemplates(ctx context.Context, namePrefix string) ([]*Template, error) {
	q := url.Values{}
	if namePrefix != "" {
		q.Set("name_prefix", namePrefix)
	}
	var list []templateWire
	if err := c.doJSON(ctx, call{method: http.MethodGet, path: "/templates", query: q}, &list); err != nil {
		return nil, err
	}
	out := make([]*Template, 0, len(list))
	for _, w := range list {
		t, err := c.newTemplate(w, "GET /templates")
		if err != nil {
			return nil, err
		}
		out = append(out, t)
	}
	return out, nil
}

// DeleteTemplate deletes a template by name or id, cancelling its builds.
// Sandboxes already created from it keep running. It is idempotent: a
// template that does not exist (404) counts as deleted.
func (c *Client) DeleteTemplate(ctx context.Context, nameOrID string) error {
	if err := checkName("template name", nameOrID); err != nil {
		return err
	}
	err := c.doJSON(ctx, call{method: http.MethodDelete, path: templatePath(nameOrID)}, nil)
	if errors.Is(err, ErrNotFound) {
		return nil
	}
	return err
}

// Delete deletes the template; see Client.DeleteTemplate.
func (t *Template) Delete(ctx context.Context) error { return t.c.DeleteTemplate(ctx, t.ID) }

// Rebuild starts a new build of the template. If the spec is unchanged and
// a build of it is ready or in progress, that build is returned instead.
func (t *Template) Rebuild(ctx context.Context) (*Build, error) {
	var b Build
	if err := t.c.doJSON(ctx, call{method: http.MethodPost, path: templatePath(t.ID, "builds")}, &b); err != nil {
		return nil, err
	}
	return &b, nil
}

// Builds lists the template's builds, newest first; limit <= 0 lists all.
func (t *Template) Builds(ctx context.Context, limit int) ([]Build, error) {
	q := url.Values{}
	if limit > 0 {
		q.Set("limit", strconv.Itoa(limit))
	}
	var out []Build
	if err := t.c.doJSON(ctx, call{method: http.MethodGet, path: templatePath(t.ID, "builds"), query: q}, &out); err != nil {
		return nil, err
	}
	if out == nil {
		out = []Build{}
	}
	return out, nil
}

// Build returns one build of the template.
func (t *Template) Build(ctx context.Context, buildID string) (*Build, error) {
	if err := checkName("build id", buildID); err != nil {
		return nil, err
	}
	var b Build
	if err := t.c.doJSON(ctx, call{method: http.MethodGet, path: templatePath(t.ID, "builds", buildID)}, &b); err != nil {
		return nil, err
	}
	return &b, nil
}

// CancelBuild stops a build in progress; a finished build is left as it
// is. A build that does not exist (404) is not an error.
func (t *Template) CancelBuild(ctx context.Context, buildID string) error {
	if err := checkName("build id", buildID); err != nil {
		return err
	}
	err := t.c.doJSON(ctx, call{method: http.MethodDelete, path: templatePath(t.ID, "builds", buildID)}, nil)
	if errors.Is(err, ErrNotFound) {
		return nil
	}
	return err
}

// latestBuild resolves the build to follow when none is named: the
// template's current latest build (fetched fresh, so a Rebuild by anyone
// is seen), else the newest listed one.
func (t *Template) latestBuild(ctx context.Context) (string, error) {
	fresh, err := t.c.GetTemplate(ctx, t.ID)
	if err != nil {
		return "", err
	}
	if fresh.LatestBuildID != "" {
		return fresh.LatestBuildID, nil
	}
	list, err := t.Builds(ctx, 1)
	if err != nil {
		return "", err
	}
	if len(list) == 0 {
		return "", errorf(ErrNotFound, "template %s has no builds: rebuild it first", t.Name)
	}
	return list[0].ID, nil
}

// FollowLogs streams a build's log (the latest build when buildID is "")
// from its start, calling fn for each event in order from the calling
// goroutine, until the build finishes (the event with Finished set) or ctx
// ends. A finished build's log is replayed at once. It returns an error if
// the stream ends before the build finishes.
func (t *Template) FollowLogs(ctx context.Context, buildID string, fn func(BuildLogEvent)) error {
	if buildID == "" {
		var err error
		if buildID, err = t.latestBuild(ctx); err != nil {
			return err
		}
	}
	path := templatePath(t.ID, "builds", buildID, "logs")
	what := "GET " + path
	resp, err := t.c.do(ctx, call{method: http.MethodGet, path: path, header: http.Header{"Accept": {"text/event-stream"}}})
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	finished := false
	err = readSSE(resp.Body, func(data []byte) error {
		var ev BuildLogEvent
		if json.Unmarshal(data, &ev) != nil {
			return nil // not ours; ignore like other SSE clients do
		}
		if fn != nil {
			fn(ev)
		}
		if ev.Finished {
			finished = true
			return errStopSSE
		}
		return nil
	})
	switch {
	case finished:
		return nil
	case ctx.Err() != nil:
		return ctxError(what, ctx.Err(), ctx, nil)
	case err != nil:
		return fmt.Errorf("stasis: %s: %w", what, err)
	}
	return fmt.Errorf("stasis: %s: log stream ended before the build finished (connection lost?)", what)
}

// WaitOptions configures Template.WaitUntilReady. The zero value waits for
// the latest build, polling every second.
type WaitOptions struct {
	// BuildID is the build to wait for (default: the latest).
	BuildID string
	// PollInterval is how often the build's status is checked (default 1s).
	PollInterval time.Duration
	// OnLog, when set, receives the build's log while waiting (see
	// FollowLogs). It is called from another goroutine, in order; every
	// event up to the final one is delivered before WaitUntilReady returns
	// unless the log stream fails.
	OnLog func(BuildLogEvent)
}

// logDrainGrace bounds how long WaitUntilReady waits, once the build is
// over, for the log stream to deliver its last events.
const logDrainGrace = 5 * time.Second

// WaitUntilReady waits for a build (by default the latest) to finish and
// returns the template's fresh info once it is ready. A failed build is a
// *BuildError with the server's code (e.g. "step_failed"); a cancelled one
// is a *BuildError with code "cancelled". Both match ErrBuildFailed. The
// wait is bounded only by ctx. opts may be nil.
func (t *Template) WaitUntilReady(ctx context.Context, opts *WaitOptions) (*Template, error) {
	if opts == nil {
		opts = &WaitOptions{}
	}
	poll := opts.PollInterval
	if poll <= 0 {
		poll = time.Second
	}
	buildID := opts.BuildID
	if buildID == "" {
		var err error
		if buildID, err = t.latestBuild(ctx); err != nil {
			return nil, err
		}
	}
	var logDone chan struct{}
	if opts.OnLog != nil {
		lctx, cancel := context.WithCancel(ctx)
		logDone = make(chan struct{})
		go func() {
			defer close(logDone)
			// A failed log stream only loses the log: the poll below
			// still decides the outcome.
			_ = t.FollowLogs(lctx, buildID, opts.OnLog)
		}()
		defer func() {
			select {
			case <-logDone:
			case <-time.After(logDrainGrace):
			}
			cancel()
			<-logDone
		}()
	}
	wake := logDone // a nil channel (no OnLog) never fires
	for {
		b, err := t.Build(ctx, buildID)
		if err != nil {
			return nil, err
		}
		if b.Status.Done() {
			if berr := b.Err(); berr != nil {
				return nil, berr
			}
			return t.c.GetTemplate(ctx, t.ID)
		}
		timer := time.NewTimer(poll)
		select {
		case <-timer.C:
		case <-wake: // the log finished: the status is final now
			wake = nil
			timer.Stop()
		case <-ctx.Done():
			timer.Stop()
			return nil, ctxError("waiting for build "+buildID, ctx.Err(), ctx, nil)
		}
	}
}
