// Package agentproto is the wire protocol between stasisd and stasis-agent,
// the init process inside every sandbox. Both sides import it; nothing else
// should.
//
// The agent serves HTTP/1.1, to the host side of the sandbox's link only: it
// closes connections that come from inside the sandbox. Every request
// carries "Authorization: Bearer <token>". The agent never holds the token
// itself, only its SHA-256 (TokenHash): it starts with the hash in
// EnvTokenSHA256, and a rotation (PathToken) replaces it. Plain endpoints
// speak JSON; errors are {"error":{"code":..., "message":...}} with the codes
// below.
//
// Exec is one endpoint for buffered, streaming and interactive use: the client
// sends POST /v1/exec with "Connection: Upgrade" and "Upgrade: stasis-exec";
// the agent answers 101 and both sides then exchange frames (see frame.go).
// The client's first frame is FrameStart; the agent answers FrameStarted (or
// FrameExit if the command could not be started; with HoldStarted it sends
// FrameStarted in the same write as the next frame), then streams FrameStdout /
// FrameStderr and ends with exactly one FrameExit, after which it half-closes
// the connection and waits (briefly) for the client to close. The client must
// keep its side open until FrameExit: end of input from the client means it
// is gone, and the agent then kills the command's process group. The client
// must send FrameStart right behind the upgrade request without waiting for
// the 101: the agent sends the 101 in the same write as its first frame
// (agents before this revision sent it first; clients cannot tell). Frames
// may follow FrameStart at once (a client with no input sends
// FrameStdinClose with it): the agent applies them once the command started.
package agentproto

import (
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"net"
	"strconv"
	"strings"
	"syscall"
	"time"

	"golang.org/x/sys/unix"
)

// Version identifies this protocol revision; the agent reports it in Health.
const Version = 1

// HTTP paths served by the agent.
const (
	PathHealth = "/v1/health" // GET: Health
	PathToken  = "/v1/token"  // POST TokenRequest: replace the token (204)
	PathExec   = "/v1/exec"   // POST + Upgrade: framed exec stream
	PathFiles  = "/v1/files"  // GET ?path=[&format=zip], POST ?path= (body = contents)
	PathStat   = "/v1/stat"   // GET ?path=: FileInfo
	// PathQuiesce (POST, 204) is sent before a checkpoint: the agent drops
	// what it can rebuild (its spare shell) until the next command.
	PathQuiesce = "/v1/quiesce"
)

// EnvTokenSHA256 is the environment variable that gives the agent its first
// credential: the hex SHA-256 of its token. Code in the sandbox can read the
// agent's initial environment (/proc/1/environ), so the token itself never
// goes there; its hash is of no use for authenticating.
const EnvTokenSHA256 = "STASIS_AGENT_TOKEN_SHA256"

// TokenHash is what the agent keeps of a token and compares (in constant
// time) with the hash of the token a request presents.
func TokenHash(token string) [sha256.Size]byte {
	return sha256.Sum256([]byte(token))
}

// TokenHashHex is TokenHash in hex, as EnvTokenSHA256 carries it.
func TokenHashHex(token string) string {
	h := TokenHash(token)
	return hex.EncodeToString(h[:])
}

// UpgradeProtocol is the value of the Upgrade header for PathExec.
const UpgradeProtocol = "stasis-exec"

// Error codes carried in ErrorBody, with the HTTP status the agent uses.
const (
	CodeUnauthorized     = "unauthorized"      // 401
	CodeBadRequest       = "bad_request"       // 400 (malformed request)
	CodeInvalidPath      = "invalid_path"      // 400 (relative, "..", not a directory on the way)
	CodeIsDirectory      = "is_directory"      // 400 (file operation on a directory)
	CodePermissionDenied = "permission_denied" // 403
	CodeNotFound         = "not_found"         // 404
	CodeMethodNotAllowed = "method_not_allowed"
	CodeNoSpace          = "no_space" // 507 (ENOSPC, EDQUOT)
	CodeInternal         = "internal" // 500
)

// ErrorBody is the JSON body of every non-2xx response.
type ErrorBody struct {
	Error ErrorDetail `json:"error"`
}

// ErrorDetail is the inside of ErrorBody.
type ErrorDetail struct {
	Code    string `json:"code"`
	Message string `json:"message"`
}

// Health is the body of a successful GET /v1/health.
type Health struct {
	Pid      int   `json:"pid"`
	UptimeMs int64 `json:"uptime_ms"`
	Version  int   `json:"version"`
}

// TokenRequest is the body of POST /v1/token. The agent keeps only the new
// token's hash.
type TokenRequest struct {
	Token string `json:"token"`
}

// FileInfo is the body of GET /v1/stat. Stat follows symlinks.
type FileInfo struct {
	Name  string    `json:"name"`
	Size  int64     `json:"size"`
	Mode  uint32    `json:"mode"` // permission bits incl. setuid/setgid/sticky, e.g. 0o644
	IsDir bool      `json:"is_dir"`
	Mtime time.Time `json:"mtime"`
}

// WriteResult is the body of a successful POST /v1/files.
type WriteResult struct {
	Path string `json:"path"`
	Size int64  `json:"size"`
}

// StartRequest is the JSON payload of FrameStart.
type StartRequest struct {
	Command    string            `json:"command"`               // run as /bin/sh -c <command>
	WorkingDir string            `json:"working_dir,omitempty"` // default: agent's default workdir
	Env        map[string]string `json:"env,omitempty"`         // added to the child's environment
	TimeoutS   int               `json:"timeout_s,omitempty"`   // 0: no timeout
	User       string            `json:"user,omitempty"`        // default: agent's default user
	PTY        *PTYSize          `json:"pty,omitempty"`         // run on a pseudo-terminal of this size
	// Keep makes the command outlive its exec connection: when the
	// connection ends (the client went, or the sandbox was paused and
	// restored) the command keeps running and its output is held (the
	// last KeptOutputMax bytes) until a client attaches.
	Keep bool `json:"keep,omitempty"`
	// Attach, instead of starting a command, attaches this connection to
	// the running (or recently ended) kept command with this pid: the
	// agent answers FrameStarted, the held output, then the live stream
	// as for a new command; input frames go to the command. It replaces
	// any connection attached before. An unknown pid is a FrameExit with
	// ExitCodeStartFailed.
	Attach int `json:"attach,omitempty"`
	// HoldStarted tells the agent that the client does not need
	// FrameStarted before the command's first output or exit (a buffered
	// run): the agent then sends it in the same write as that frame, one
	// send through the sandbox's network stack instead of two. The frames
	// and their order are unchanged. The agent may also gather the
	// output of such a run for a few milliseconds between reads (fewer
	// wake-ups and sends); a stream gets it as it comes. Agents before
	// this field send FrameStarted at once; clients cannot tell.
	HoldStarted bool `json:"hold_started,omitempty"`
}

// KeptOutputMax bounds the output the agent holds for a kept command while
// no client is attached; older output is dropped first.
const KeptOutputMax = 1 << 20

// PTYSize is a terminal size; also the JSON payload of FrameResize.
type PTYSize struct {
	Cols uint16 `json:"cols"`
	Rows uint16 `json:"rows"`
}

// Started is the JSON payload of FrameStarted.
type Started struct {
	Pid int `json:"pid"`
}

// ExitCodeStartFailed is the exit code reported when the agent could not
// start the command at all (bad working directory, unknown user, fork
// failure, ...). Exit.Error then says why. A command the shell cannot find
// is not a start failure: the shell runs and exits 127 as usual.
const ExitCodeStartFailed = -1

// Exit is the JSON payload of FrameExit, the last frame of an exec stream.
//
// ExitCode is the command's exit status; if it was killed by a signal it is
// 128+signal number (shell convention), e.g. 137 for SIGKILL — including when
// the agent killed it because of a timeout, in which case Error is
// "command timed out after Ns". If it could not be started, ExitCode is
// ExitCodeStartFailed (-1) and Error says why.
type Exit struct {
	ExitCode int    `json:"exit_code"`
	Error    string `json:"error,omitempty"`
}

// ParseSignal accepts "SIGTERM", "TERM", "sigterm" or a decimal number and
// returns the signal. The payload of FrameSignal is such a name as plain text.
func ParseSignal(name string) (syscall.Signal, error) {
	s := strings.TrimSpace(name)
	if n, err := strconv.Atoi(s); err == nil {
		if n <= 0 || n > 64 {
			return 0, fmt.Errorf("invalid signal number %d", n)
		}
		return syscall.Signal(n), nil
	}
	up := strings.ToUpper(s)
	if !strings.HasPrefix(up, "SIG") {
		up = "SIG" + up
	}
	if sig := unix.SignalNum(up); sig != 0 {
		return sig, nil
	}
	return 0, fmt.Errorf("unknown signal %q", name)
}

// KeepAlive is the TCP keep-alive of connections between stasisd and an
// agent, on both ends. Go's default probes a connection after 15 s idle,
// which woke an idle sandbox's sentry several times between two health
// probes of its agent (40-50 s apart). 75 s is longer than those and than
// stasisd keeps an unused connection (agentclient's IdleConnTimeout, 60 s),
// so a pooled connection is never probed (a quiet exec stream still is).
func KeepAlive() net.KeepAliveConfig {
	return net.KeepAliveConfig{Enable: true, Idle: 75 * time.Second, Interval: 15 * time.Second, Count: 9}
}

// EnvEgressCA carries stasisd's egress CA (PEM, a public certificate) to a
// new sandbox's agent, which adds it to the trust store before it answers
// (agent.InstallTrust): readiness then implies trust, with no round trips.
const EnvEgressCA = "STASIS_EGRESS_CA"

// Where a sandbox finds the egress CA that secret injection presents
// certificates from: alone, and added to the system bundle (Debian's
// path, which SSL_CERT_FILE and friends name whatever the image's own).
const (
	EgressCAPath    = "/etc/ssl/certs/stasis-egress-ca.pem"
	TrustBundlePath = "/etc/ssl/certs/ca-certificates.crt"
)

// SystemBundles are where images keep their CA bundle, Debian's first.
func SystemBundles() []string {
	return []string{TrustBundlePath, "/etc/pki/tls/certs/ca-bundle.crt", "/etc/ssl/cert.pem", "/etc/ssl/ca-bundle.pem"}
}
