package sandbox

import (
	"regexp"
	"strings"
	"unicode/utf8"
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
)

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
	DeleteOnTimeout   bool // the timeout deletes the sandbox instead of pausing it
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
	DeleteOnTimeout   *bool // nil: unchanged
}

var envKeyRE = regexp.MustCompile(`^[A-Za-z_][A-Za-z0-9_]*$`)

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
			return invalid("metadata key %.32q… is %d bytes; the limit is %d", k, len(k), MaxMetadataKey)
		}
		if len(v) > MaxMetadataValue {
			return invalid("metadata value of %q is %d bytes; the limit is %d", k, len(v), MaxMetadataValue)
		}
	}
	return nil
}

func validateEnv(m map[string]string) error {
	if len(m) > MaxEnvKeys {
		return invalid("env_vars has %d keys; the limit is %d", len(m), MaxEnvKeys)
	}
	for k, v := range m {
		if !envKeyRE.MatchString(k) {
			return invalid("env var name %q is not valid (letters, digits and _; not starting with a digit)", k)
		}
		if strings.HasPrefix(k, "STASIS_") {
			return invalid("env var names starting with STASIS_ are reserved")
		}
		if len(v) > MaxEnvValue {
			return invalid("env var %s is %d bytes; the limit is %d", k, len(v), MaxEnvValue)
		}
		if strings.IndexByte(v, 0) >= 0 {
			return invalid("env var %s contains a NUL byte", k)
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
	if err := validateEnv(p.Env); err != nil {
		return err
	}
	if err := validateSeconds("timeout_seconds", p.TimeoutSeconds); err != nil {
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
	return validateSeconds("auto_delete_seconds", p.AutoDeleteSeconds.Value)
}
