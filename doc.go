// Package stasis is the Go SDK for stasis, a self-hosted sandbox platform
// whose sandboxes can be paused (checkpointed to disk, every process
// included) and resumed later where they left off.
//
// It speaks stasisd's Superserve-compatible HTTP API and imports only the
// standard library and github.com/coder/websocket.
//
// # Configuration
//
// NewClient takes functional options; whatever they leave unset comes from
// the environment (STASIS_URL, STASIS_API_KEY), then from the credentials
// file $HOME/.config/stasis/credentials that `make run` writes:
//
//	STASIS_URL=http://127.0.0.1:8080
//	STASIS_API_KEY=...
//
// # Sandboxes
//
// Client.Create boots a sandbox; Client.Connect attaches to an existing one
// (activating it, so a paused sandbox is resumed); Client.List,
// Client.KillByID and Client.UpdateByID work from ids alone. A *Sandbox has
// Info, Pause, Resume, Kill and Update, plus Commands and Files for the
// data plane.
//
// # Commands
//
// Commands.Run executes a shell command and returns its Result (stdout,
// stderr, exit code), buffered or streamed through OnStdout/OnStderr
// callbacks. Commands.Spawn starts a Session over a WebSocket: write its
// Stdin, Signal it, Resize its PTY, Wait for it, Close it.
//
// # Templates
//
// Client.CreateTemplate builds a template from a TemplateSpec: a base (an
// OCI image or a built-in such as "stasis/minimal"), build steps (RunStep,
// EnvStep, WorkdirStep, UserStep), and optionally a StartCmd whose
// processes keep running and a ReadyCmd that says they are up. The build
// runs on the server; Template.WaitUntilReady waits for it (streaming its
// log through WaitOptions.OnLog if asked) and returns a *BuildError with
// the failure's code ("step_failed", "image_pull_failed", ...) if it
// fails. Template.FollowLogs streams a build's log. Sandboxes name the
// template in CreateOptions.Template and start from its snapshot, with
// StartCmd already running. Client.GetTemplate, Client.ListTemplates,
// Client.DeleteTemplate, Template.Rebuild, Template.Builds, Template.Build
// and Template.CancelBuild manage templates and their builds.
//
// # Forks and snapshots
//
// Sandbox.Fork (or Client.ForkByID) turns a paused sandbox into up to 100
// new ones that continue from its state and then diverge.
// Sandbox.SaveSnapshot saves a sandbox's state under an id that
// CreateOptions.Snapshot boots from; Client.ListSnapshots and
// Client.DeleteSnapshot manage them.
//
// # Access tokens, retries and errors
//
// Data-plane calls carry a per-sandbox access token that rotates on every
// resume. When the data plane answers 401 or 503, the SDK calls
// activate once (concurrent callers share one call), stores the fresh
// token and retries once. Idempotent requests (GET, DELETE) are retried
// with exponential backoff on 429 (honouring Retry-After), 502, 503 and
// 504 and on network errors; POST and PATCH are never retried.
//
// Errors match the sentinels ErrNotFound, ErrConflict, ErrValidation,
// ErrAuth, ErrRateLimit, ErrTimeout, ErrServer, ErrOutputTooLarge and
// ErrBuildFailed with
// errors.Is; server answers are *APIError values, reachable with errors.As.
//
// All calls take a context.Context first.
package stasis
