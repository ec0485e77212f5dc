package api

import (
	"bytes"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"unicode/utf8"

	"github.com/stasis-sandbox/stasis/internal/sandbox"
)

// FuzzDecodeRequests feeds arbitrary bodies to the strict JSON decoder used
// by every endpoint, for each request type: it must never panic, and
// whatever it accepts must then pass or fail validation cleanly.
func FuzzDecodeRequests(f *testing.F) {
	for _, s := range []string{
		`{"name":"a","from_template":"stasis/minimal","metadata":{"k":"v"},"env_vars":{"A":"1"}}`,
		`{"command":"ls","working_dir":"/tmp","env":{"X":"y"},"timeout_s":5}`,
		`{"name":"x","build_spec":{"from":"stasis/minimal","steps":[{"run":"true"},{"env":{"key":"K","value":"v"}}]}}`,
		`{"count":3}`, `{"name": 42}`, `{`, ``, `null`, `[]`, `{"a":1} {}`,
	} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, body []byte) {
		decode := func(v any) error {
			r := httptest.NewRequest(http.MethodPost, "/", bytes.NewReader(body))
			return decodeJSON(httptest.NewRecorder(), r, v, true)
		}
		var cr createRequest
		if decode(&cr) == nil && cr.Metadata != nil {
			_ = sandbox.ValidateMetadata(cr.Metadata) // must not panic on any map
		}
		var er execRequest
		if decode(&er) == nil {
			if err := er.validate(); err == nil {
				if strings.TrimSpace(er.Command) == "" {
					t.Fatalf("empty command accepted: %q", body)
				}
				if er.WorkingDir != "" && !strings.HasPrefix(er.WorkingDir, "/") {
					t.Fatalf("relative working_dir accepted: %q", er.WorkingDir)
				}
			}
		}
		var tr createTemplateRequest
		_ = decode(&tr)
		var m map[string]any
		_ = decode(&m)
	})
}

// FuzzValidatePath: the API accepts only absolute paths without "..".
func FuzzValidatePath(f *testing.F) {
	for _, s := range []string{"/tmp/x", "x", "/a/../b", "/..", "/a/..b", "", "/\x00"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, p string) {
		if validatePath(p) != nil {
			return
		}
		if !strings.HasPrefix(p, "/") || strings.ContainsRune(p, 0) {
			t.Fatalf("accepted %q", p)
		}
		for _, seg := range strings.Split(p, "/") {
			if seg == ".." {
				t.Fatalf("accepted %q with ..", p)
			}
		}
	})
}

// FuzzUTF8Joiner: streamed output split at any byte boundary comes out as
// valid UTF-8 chunks that add up to the input.
func FuzzUTF8Joiner(f *testing.F) {
	f.Add([]byte("héllo wörld ✓"), uint8(3))
	f.Add([]byte{0xe2, 0x9c, 0x93, 0xff, 'a'}, uint8(1))
	f.Fuzz(func(t *testing.T, data []byte, step uint8) {
		n := int(step%7) + 1
		var j utf8Joiner
		var out strings.Builder
		for i := 0; i < len(data); i += n {
			chunk := j.push(data[i:min(i+n, len(data))])
			if utf8.Valid(data) && !utf8.ValidString(chunk) {
				t.Fatalf("chunk %q of valid input is not valid UTF-8", chunk)
			}
			out.WriteString(chunk)
		}
		out.WriteString(j.flush())
		if out.String() != string(data) {
			t.Fatalf("joined %q, want %q", out.String(), data)
		}
	})
}
