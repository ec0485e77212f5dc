package sandbox

import (
	"errors"
	"regexp"
	"strconv"
	"strings"
	"unicode/utf8"

	"github.com/stasis-sandbox/stasis/internal/egress"
	"github.com/stasis-sandbox/stasis/internal/store"
)

// Limits on user-supplied fields, as in Superserve's API.
const (
	MaxNameLen       = 128
	MaxMetadataKeys  = 64
	MaxMetadataKey   = 256
	MaxMetadataValue = 2048
	MaxEnvKeys       = 64
	MaxEnvValue      = 8192
	MaxVCPU          = 8
	MaxMemoryMiB     = 16384
	MaxDiskMiB       = 1 << 20
	MaxTimeout       = 30 * 24 * 3600

	// Templates.
	MaxTemplateSteps = 100
	MaxCommandLen    = 64 << 10 // a step's run, start_cmd, ready_cmd
	MaxImageRefLen   = 1024
	MaxPathLen       = 4096 // PATH_MAX
	MaxUserNameLen   = 32
)

// quoteLimit is how much of a client's string an error message echoes.
const quoteLimit = 64

// Shorten cuts s after its first 64 bytes (at a character boundary) and
// marks the cut with "…", so that an error message does not echo a huge
// path or name sent by a client back whole.
func Shorten(s string) string {
	if len(s) <= quoteLimit {
		return s
	}
	cut := quoteLimit
	for cut > 0 && !utf8.RuneStart(s[cut]) {
		cut--
	}
	return s[:cut] + "…"
}

// QuoteShort is strconv.Quote of Shorten(s), with the "…" outside the quotes.
func QuoteShort(s string) string {
	if short := Shorten(s); short != s {
		return strconv.Quote(strings.TrimSuffix(short, "…")) + "…"
	}
	return strconv.Quote(s)
}

// CreateParams is what a client may choose about a new sandbox.
type CreateParams struct {
	Name              string
	Template          string // "" = default template
	Snapshot          string // start from this saved snapshot instead of a template
	VCPU              int    // 0 = default
	MemoryMiB         int    // 0 = default
	DiskMiB           int    // writable-layer quota (0 = default)
	Metadata          map[string]string
	Env               map[string]string
	TimeoutSeconds    *int
	AutoDeleteSeconds *int
	DeleteOnTimeout   bool           // the timeout deletes the sandbox instead of pausing it
	NoAutoResume      bool           // E2B traffic does not resume it while paused
	Network           *store.Network // egress rules (nil: defaults, or the snapshot's)
	PreviewPrivate    *bool          // preview URLs need the access token (nil: public, or the snapshot's)
}

// Optional is a PATCH field: absent, explicitly null, or a value.
type Optional[T any] struct {
	Set   bool // the field was present in the request
	Value *T   // nil when the client sent null
}

// UpdateParams is a partial update; unset fields are left alone.
type UpdateParams struct {
	Metadata          Optional[map[string]string]
	TimeoutSeconds    Optional[int]
	AutoDeleteSeconds Optional[int]
	DeleteOnTimeout   *bool                   // nil: unchanged
	Network           Optional[store.Network] // replaces both lists; null: defaults
	PreviewPrivate    Optional[bool]
}

var (
	envKeyRE = regexp.MustCompile(`^[A-Za-z_][A-Za-z0-9_]*$`)
	// A template name is a word, or team/word as in superserve/base: it
	// appears in URL paths, so nothing that looks like a file path.
	templateNameRE = regexp.MustCompile(`^[A-Za-z0-9][A-Za-z0-9._-]*(/[A-Za-z0-9][A-Za-z0-9._-]*)?$`)
	userNameRE     = regexp.MustCompile(`^[A-Za-z_][A-Za-z0-9_.-]*$`)
)

func invalid(format string, args ...any) *Error {
	return newErr(ErrInvalid, "invalid_request", format, args...)
}

func validateName(name string) error {
	switch {
	case name == "":
		return invalid("name must not be empty")
	case len(name) > MaxNameLen:
		return invalid("name is %d bytes long; the limit is %d", len(name), MaxNameLen)
	case !utf8.ValidString(name):
		return invalid("name must be valid UTF-8")
	case strings.IndexFunc(name, func(r rune) bool { return r < 0x20 || r == 0x7f }) >= 0:
		return invalid("name must not contain control characters")
	}
	return nil
}

// ValidateMetadata checks metadata against the size limits.
func ValidateMetadata(m map[string]string) error {
	if len(m) > MaxMetadataKeys {
		return invalid("metadata has %d keys; the limit is %d", len(m), MaxMetadataKeys)
	}
	for k, v := range m {
		if k == "" {
			return invalid("metadata keys must not be empty")
		}
		if len(k) > MaxMetadataKey {
			return invalid("metadata key %s is %d bytes; the limit is %d", QuoteShort(k), len(k), MaxMetadataKey)
		}
		if len(v) > MaxMetadataValue {
			return invalid("metadata value of %s is %d bytes; the limit is %d", QuoteShort(k), len(v), MaxMetadataValue)
		}
	}
	return nil
}

// validateEnv checks environment variables given as field: names a shell
// can export, values without NUL.
func validateEnv(field string, m map[string]string) error {
	if len(m) > MaxEnvKeys {
		return invalid("%s has %d keys; the limit is %d", field, len(m), MaxEnvKeys)
	}
	for k, v := range m {
		if !envKeyRE.MatchString(k) {
			return invalid("%s: name %s is not valid (letters, digits and _; not starting with a digit)", field, QuoteShort(k))
		}
		if strings.HasPrefix(k, "STASIS_") {
			return invalid("%s: names starting with STASIS_ are reserved", field)
		}
		if len(v) > MaxEnvValue {
			return invalid("%s: %s is %d bytes; the limit is %d", field, QuoteShort(k), len(v), MaxEnvValue)
		}
		if strings.IndexByte(v, 0) >= 0 {
			return invalid("%s: %s contains a NUL byte", field, QuoteShort(k))
		}
	}
	return nil
}

func validateSeconds(field string, v *int) error {
	if v != nil && (*v < 0 || *v > MaxTimeout) {
		return invalid("%s must be between 0 and %d", field, MaxTimeout)
	}
	return nil
}

func (p *CreateParams) validate() error {
	if err := validateName(p.Name); err != nil {
		return err
	}
	if p.VCPU < 0 || p.VCPU > MaxVCPU {
		return invalid("vcpu must be between 1 and %d", MaxVCPU)
	}
	if p.MemoryMiB != 0 && (p.MemoryMiB < 64 || p.MemoryMiB > MaxMemoryMiB) {
		return invalid("memory_mib must be between 64 and %d", MaxMemoryMiB)
	}
	if p.DiskMiB != 0 && (p.DiskMiB < 16 || p.DiskMiB > MaxDiskMiB) {
		return invalid("disk_mib must be between 16 and %d", MaxDiskMiB)
	}
	if err := ValidateMetadata(p.Metadata); err != nil {
		return err
	}
	if err := validateEnv("env_vars", p.Env); err != nil {
		return err
	}
	if err := validateSeconds("timeout_seconds", p.TimeoutSeconds); err != nil {
		return err
	}
	if err := validateNetwork(p.Network); err != nil {
		return err
	}
	return validateSeconds("auto_delete_seconds", p.AutoDeleteSeconds)
}

func (p *UpdateParams) validate() error {
	if p.Metadata.Set && p.Metadata.Value != nil {
		if err := ValidateMetadata(*p.Metadata.Value); err != nil {
			return err
		}
	}
	if err := validateSeconds("timeout_seconds", p.TimeoutSeconds.Value); err != nil {
		return err
	}
	if err := validateNetwork(p.Network.Value); err != nil {
		return err
	}
	return validateSeconds("auto_delete_seconds", p.AutoDeleteSeconds.Value)
}

// validateNetwork checks egress rules; the error names the bad entry.
func validateNetwork(n *store.Network) error {
	if n == nil {
		return nil
	}
	if _, err := egress.Compile(n.AllowOut, n.DenyOut); err != nil {
		var re *egress.RuleError
		if errors.As(err, &re) {
			return invalid("%s", re.Message)
		}
		return err
	}
	return nil
}
