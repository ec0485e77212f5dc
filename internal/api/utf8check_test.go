package api

import (
	"bytes"
	"encoding/json"
	"errors"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"unicode/utf8"

	"github.com/stasis-sandbox/stasis/internal/sandbox"
)

// TestDecodeRejectsInvalidUTF8: a string encoding/json would silently
// rewrite to U+FFFD is a 400 invalid_request that names its field; valid
// text, including escaped surrogate pairs and a literal U+FFFD, passes.
func TestDecodeRejectsInvalidUTF8(t *testing.T) {
	for _, tc := range []struct {
		body, wantMsg string // wantMsg "" = accepted
	}{
		{`{"name":"caf` + "\xff" + `"}`, `field name is not valid UTF-8`},
		{`{"name":"ok","metadata":{"env":"` + "\xc3" + `"}}`, `field metadata.env is not valid UTF-8`},
		{`{"metadata":{"k` + "\xfe" + `":"v"}}`, `field metadata has a key that is not valid UTF-8`},
		{`{"name":"\udc80"}`, `field name is not valid UTF-8`},   // lone low surrogate
		{`{"name":"a\ud83dz"}`, `field name is not valid UTF-8`}, // high surrogate without its pair
		{`{"build_spec":{"from":"x","steps":[{"run":"true"},{"run":"` + "\x80" + `"}]}}`, `field build_spec.steps[1].run is not valid UTF-8`},
		{`{"` + "\xff" + `":"x"}`, `a field name is not valid UTF-8`},
		{`{"name":"caf\u00e9 \ud83d\ude00 ` + "\xef\xbf\xbd" + `","metadata":{"a":"b\"\\"}}`, ""},
	} {
		r := httptest.NewRequest(http.MethodPost, "/", strings.NewReader(tc.body))
		var v map[string]any
		err := decodeJSON(httptest.NewRecorder(), r, &v, false)
		if tc.wantMsg == "" {
			if err != nil {
				t.Errorf("%q rejected: %v", tc.body, err)
			}
			continue
		}
		var e *sandbox.Error
		if !errors.As(err, &e) || e.Code != "invalid_request" || sandbox.HTTPStatus(e.Kind) != http.StatusBadRequest || !strings.Contains(e.Message, tc.wantMsg) {
			t.Errorf("%q: got %v, want 400 invalid_request saying %q", tc.body, err, tc.wantMsg)
		}
	}
}

// FuzzBadUTF8: on any body encoding/json accepts, raw bytes that are not
// UTF-8 (which can only be inside strings) are always found, and a body of
// valid UTF-8 without \u escapes never is.
func FuzzBadUTF8(f *testing.F) {
	for _, s := range []string{`{"a":"b"}`, `{"a":["\ud800","x"]}`, "{\"a\xff\":1}", `"\udbff\udfff"`, `[1,{"b":null}]`} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, body []byte) {
		var v any
		if json.Unmarshal(body, &v) != nil {
			return
		}
		_, _, bad := badUTF8(body)
		switch {
		case !utf8.Valid(body) && !bad:
			t.Fatalf("invalid UTF-8 in %q not found", body)
		case utf8.Valid(body) && !bytes.Contains(body, []byte(`\u`)) && bad:
			t.Fatalf("valid %q reported", body)
		}
	})
}

// TestQuoteShort: error messages echo at most the first 64 bytes of a
// client's string, cut at a character boundary.
func TestQuoteShort(t *testing.T) {
	long := "/" + strings.Repeat("é", 5000)
	q := sandbox.QuoteShort(long)
	if len(q) > 80 || !strings.HasSuffix(q, `"…`) || !utf8.ValidString(q) {
		t.Fatalf("QuoteShort(5 KB path) = %q", q)
	}
	if got := sandbox.QuoteShort("/tmp/x"); got != `"/tmp/x"` {
		t.Fatalf("QuoteShort(short) = %q", got)
	}
	if err := validatePath(strings.Repeat("x", 10000)); err == nil || len(err.Error()) > 200 {
		t.Fatalf("validatePath of a 10 KB relative path: %v", err)
	}
}

// TestUnknownFieldShortened: a huge unknown field name is not echoed whole.
func TestUnknownFieldShortened(t *testing.T) {
	body := `{"` + strings.Repeat("f", 100000) + `":1}`
	var req createRequest
	err := decodeJSON(httptest.NewRecorder(), httptest.NewRequest(http.MethodPost, "/", strings.NewReader(body)), &req, false)
	if err == nil || !strings.Contains(err.Error(), `unknown field "ffff`) || len(err.Error()) > 200 {
		t.Fatalf("got %.300v", err)
	}
}
