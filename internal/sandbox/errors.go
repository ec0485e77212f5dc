package sandbox

import (
	"errors"
	"fmt"
	"net/http"

	"github.com/stasis-sandbox/stasis/internal/runtime"
	"github.com/stasis-sandbox/stasis/internal/store"
)

// Error kinds. The API layer maps them to HTTP statuses; Code is the stable
// machine-readable string clients see in the error envelope.
var (
	ErrInvalid      = errors.New("invalid request") // 400
	ErrUnauthorized = errors.New("unauthorized")    // 401
	ErrNotFound     = errors.New("not found")       // 404
	ErrConflict     = errors.New("conflict")        // 409
	ErrTooLarge     = errors.New("too large")       // 413
	ErrLimit        = errors.New("limit reached")   // 429
	ErrStorageFull  = errors.New("storage full")    // 507
	ErrUnavailable  = errors.New("unavailable")     // 503
	ErrNotOwner     = errors.New("not owner")       // 421: another node owns the sandbox
)

// Error is a user-facing error with a kind, a stable code and a message.
type Error struct {
	Kind    error
	Code    string
	Message string
}

// HTTPStatus is the status both API listeners (Superserve's and E2B's)
// answer an error of this kind with.
func HTTPStatus(kind error) int {
	switch kind {
	case ErrInvalid:
		return http.StatusBadRequest
	case ErrUnauthorized:
		return http.StatusUnauthorized
	case ErrNotFound:
		return http.StatusNotFound
	case ErrConflict:
		return http.StatusConflict
	case ErrTooLarge:
		return http.StatusRequestEntityTooLarge
	case ErrLimit:
		return http.StatusTooManyRequests
	case ErrStorageFull:
		return http.StatusInsufficientStorage
	case ErrUnavailable:
		return http.StatusServiceUnavailable
	case ErrNotOwner:
		return http.StatusMisdirectedRequest
	}
	return http.StatusInternalServerError
}

// AsError returns the user-facing error err is or wraps. A database that
// cannot be reached is a 503 store_unavailable: nothing was changed and
// the client may retry. A fenced update (another node took the sandbox
// over) is a 409 sandbox_moved. ok is false for internal errors.
func AsError(err error) (e *Error, ok bool) {
	if errors.As(err, &e) {
		return e, true
	}
	if errors.Is(err, store.ErrFenced) {
		return newErr(ErrConflict, "sandbox_moved", "the sandbox was taken over by another node meanwhile; retry"), true
	}
	if store.IsUnavailable(err) {
		return newErr(ErrUnavailable, "store_unavailable", "the state database is unavailable; retry shortly"), true
	}
	return nil, false
}

func (e *Error) Error() string { return e.Message }
func (e *Error) Unwrap() error { return e.Kind }

func newErr(kind error, code, format string, args ...any) *Error {
	return &Error{Kind: kind, Code: code, Message: fmt.Sprintf(format, args...)}
}

// versionConflict is the error for a restore that failed because the
// snapshot was taken by another runsc version (what names the snapshot's
// owner, e.g. "sandbox abc"), or nil for any other error. The snapshot is
// intact: a server running that version restores it.
func versionConflict(err error, what string) *Error {
	var vm *runtime.VersionMismatchError
	if !errors.As(err, &vm) {
		return nil
	}
	return newErr(ErrConflict, "runtime_version_mismatch", "%s cannot be restored by this server: %v. Resume it on a server still running that version, or delete it (docs/OPERATIONS.md, Upgrading)", what, vm)
}

func notFound(id string) *Error {
	return newErr(ErrNotFound, "not_found", "sandbox %s not found", Shorten(id))
}
