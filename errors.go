package stasis

import (
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"strconv"
	"strings"
)

// Sentinel errors. Errors returned by this package match them with
// errors.Is; an *APIError matches the sentinel for its HTTP status.
var (
	// ErrNotFound: the sandbox, file or route does not exist (HTTP 404).
	ErrNotFound = errors.New("stasis: not found")
	// ErrConflict: the sandbox is not in a valid state for the operation (HTTP 409).
	ErrConflict = errors.New("stasis: conflict")
	// ErrValidation: the request was rejected as invalid (HTTP 400), or the
	// SDK refused to send it (for example a relative file path).
	ErrValidation = errors.New("stasis: invalid request")
	// ErrAuth: missing, invalid or insufficient credentials (HTTP 401/403).
	ErrAuth = errors.New("stasis: authentication failed")
	// ErrRateLimit: too many requests (HTTP 429), after retries for
	// idempotent calls.
	ErrRateLimit = errors.New("stasis: rate limited")
	// ErrTimeout: a deadline expired, either one set by the SDK (a command
	// timeout plus a grace period, a request timeout) or the caller's
	// context deadline. Such errors also match context.DeadlineExceeded.
	ErrTimeout = errors.New("stasis: timed out")
	// ErrServer: the server failed (HTTP 5xx, including 507 storage full).
	ErrServer = errors.New("stasis: server error")
	// ErrOutputTooLarge: a buffered response exceeded the configured cap
	// (see WithMaxOutputBytes and RunOptions.MaxOutputBytes).
	ErrOutputTooLarge = errors.New("stasis: output too large")
	// ErrBuildFailed: a template build failed or was cancelled; the error
	// is a *BuildError with the failure's code.
	ErrBuildFailed = errors.New("stasis: template build failed")
)

// APIError is an error answer from stasisd: an HTTP status with the
// `{"error":{"code","message"}}` envelope. It matches the sentinel errors
// via errors.Is:
//
//	400 → ErrValidation, 401/403 → ErrAuth, 404 → ErrNotFound,
//	409 → ErrConflict, 429 → ErrRateLimit, 5xx → ErrServer.
type APIError struct {
	StatusCode int    // HTTP status code
	Code       string // machine-readable code from the envelope, may be empty
	Message    string // human-readable message from the envelope or the status text
	// RetryAfter is the server's Retry-After header in seconds, or -1.
	RetryAfter int
}

func (e *APIError) Error() string {
	var b strings.Builder
	b.WriteString("stasis: ")
	b.WriteString(e.Message)
	if e.Code != "" || e.StatusCode != 0 {
		b.WriteString(" (")
		if e.StatusCode != 0 {
			b.WriteString(strconv.Itoa(e.StatusCode))
		}
		if e.Code != "" {
			if e.StatusCode != 0 {
				b.WriteString(" ")
			}
			b.WriteString(e.Code)
		}
		b.WriteString(")")
	}
	return b.String()
}

// Is reports whether the error matches one of the package's sentinels.
func (e *APIError) Is(target error) bool {
	switch target {
	case ErrValidation:
		return e.StatusCode == http.StatusBadRequest
	case ErrAuth:
		return e.StatusCode == http.StatusUnauthorized || e.StatusCode == http.StatusForbidden
	case ErrNotFound:
		return e.StatusCode == http.StatusNotFound
	case ErrConflict:
		return e.StatusCode == http.StatusConflict
	case ErrRateLimit:
		return e.StatusCode == http.StatusTooManyRequests
	case ErrServer:
		return e.StatusCode >= 500
	}
	return false
}

// maxErrorBody bounds how much of an error response is read.
const maxErrorBody = 64 << 10

// apiErrorFrom builds an *APIError from a non-2xx response and closes
// nothing: the caller owns resp.Body.
func apiErrorFrom(resp *http.Response) *APIError {
	body, _ := io.ReadAll(io.LimitReader(resp.Body, maxErrorBody))
	return apiErrorFromBody(resp.StatusCode, resp.Header, body)
}

func apiErrorFromBody(status int, h http.Header, body []byte) *APIError {
	e := &APIError{StatusCode: status, RetryAfter: -1}
	var env struct {
		Error *struct {
			Code    string `json:"code"`
			Message string `json:"message"`
		} `json:"error"`
	}
	if json.Unmarshal(body, &env) == nil && env.Error != nil {
		e.Code = env.Error.Code
		e.Message = env.Error.Message
	}
	if e.Message == "" {
		if t := strings.TrimSpace(string(body)); t != "" && len(t) < 300 && !strings.HasPrefix(t, "{") {
			e.Message = t
		} else if st := http.StatusText(status); st != "" {
			e.Message = strings.ToLower(st)
		} else {
			e.Message = fmt.Sprintf("HTTP %d", status)
		}
	}
	if h != nil {
		if v := strings.TrimSpace(h.Get("Retry-After")); v != "" {
			if n, err := strconv.Atoi(v); err == nil && n >= 0 {
				e.RetryAfter = n
			}
		}
	}
	return e
}

// sentinelError is an error with its own message that matches a sentinel.
type sentinelError struct {
	msg      string
	sentinel error
}

func (e *sentinelError) Error() string { return e.msg }
func (e *sentinelError) Unwrap() error { return e.sentinel }

// errorf returns "stasis: <message>" matching sentinel with errors.Is.
func errorf(sentinel error, format string, args ...any) error {
	return &sentinelError{msg: "stasis: " + fmt.Sprintf(format, args...), sentinel: sentinel}
}

// timeoutError marks an error as both ErrTimeout and context.DeadlineExceeded.
func timeoutError(what string, cause error) error {
	return fmt.Errorf("%w: %s: %w", ErrTimeout, what, cause)
}
