package api

import (
	"bytes"
	"encoding/json"
	"math/rand"
	"strings"
	"testing"
)

// encodingJSON is what encoding/json writes for v with HTML escaping off.
func encodingJSON(t *testing.T, v any) []byte {
	t.Helper()
	var b bytes.Buffer
	enc := json.NewEncoder(&b)
	enc.SetEscapeHTML(false)
	if err := enc.Encode(v); err != nil {
		t.Fatal(err)
	}
	return b.Bytes()
}

// The exec response's hand-built JSON is byte for byte what encoding/json
// writes, for every kind of output a command can print.
func TestExecResponseJSONMatchesEncodingJSON(t *testing.T) {
	texts := []string{
		"", "plain", "y\n" + strings.Repeat("y\n", 100), "tab\there \"quoted\" back\\slash",
		"ctl \x00\x01\x1f\x7f \b\f\r", "<html> & </html>", "héllo wörld ✓ 😀",
		"bad \xff\xfe utf8 \xc3", "cut rune \xe2\x9c", "line sep \u2028 para sep \u2029",
	}
	// Longer than appendJSONString's 4096-byte block, with a multi-byte
	// rune, a cut one, an escape and a U+2028 across each block boundary.
	for _, edge := range []string{"✓", "\xe2\x9c", "\n", "\x01", "\u2028", "😀"} {
		for shift := range 4 {
			pad := strings.Repeat("a", 4096-shift)
			texts = append(texts, pad+edge+pad+edge+pad)
		}
	}
	rng := rand.New(rand.NewSource(1))
	for i := 0; i < 200; i++ {
		b := make([]byte, rng.Intn(64))
		rng.Read(b)
		texts = append(texts, string(b))
	}
	for i, s := range texts {
		resp := execResponse{Stdout: s, Stderr: texts[(i+1)%len(texts)], ExitCode: i - 3}
		if i%3 == 0 {
			resp.Error = s
		}
		if i%4 == 0 {
			resp.OutputEncoding, resp.StdoutTruncatedBytes, resp.StderrTruncatedBytes = encodingBase64, int64(i), int64(i/2)
		}
		got, want := resp.appendJSON(nil), encodingJSON(t, resp)
		if !bytes.Equal(got, want) {
			t.Fatalf("text %d %q:\n got %s\nwant %s", i, s, got, want)
		}
	}
}

// The buffered response of `yes | head -c 1048576`, through encoding/json
// and hand-built.
func BenchmarkExecResponse1MB(b *testing.B) {
	resp := execResponse{Stdout: strings.Repeat("y\n", 1<<19)}
	b.Run("encoding-json", func(b *testing.B) {
		for i := 0; i < b.N; i++ {
			json.NewEncoder(&bytes.Buffer{}).Encode(resp)
		}
	})
	b.Run("appendJSON", func(b *testing.B) {
		for i := 0; i < b.N; i++ {
			resp.appendJSON(make([]byte, 0, 64+len(resp.Stdout)))
		}
	})
}

// Output whose escapes jsonSizeHint counts (newlines) is built in the
// buffer allocated at the hinted size, with no second allocation and copy.
func TestExecResponseJSONFitsItsSizeHint(t *testing.T) {
	for _, out := range []string{strings.Repeat("y\n", 1<<16), strings.Repeat("héllo wörld ✓\n", 1<<12), "no newline"} {
		resp := execResponse{Stdout: out, Stderr: "err\n", ExitCode: 1}
		buf := make([]byte, 0, resp.jsonSizeHint())
		if allocs := testing.AllocsPerRun(10, func() { resp.appendJSON(buf[:0]) }); allocs != 0 {
			t.Errorf("%.20q...: %v allocations, want 0", out, allocs)
		}
	}
}
