package sandbox

import (
	"errors"
	"fmt"
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
)

// Error is a user-facing error with a kind, a stable code and a message.
type Error struct {
	Kind    error
	Code    string
	Message string
}

func (e *Error) Error() string { return e.Message }
func (e *Error) Unwrap() error { return e.Kind }

func newErr(kind error, code, format string, args ...any) *Error {
	return &Error{Kind: kind, Code: code, Message: fmt.Sprintf(format, args...)}
}

func notFound(id string) *Error {
	return newErr(ErrNotFound, "not_found", "sandbox %s not found", Shorten(id))
}
