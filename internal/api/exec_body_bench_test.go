package api

import (
	"strings"
	"testing"

	"github.com/stasis-sandbox/stasis/internal/agentclient"
)

// The whole buffered answer of `yes | head -c 1048576` in stasisd: the
// agent's frames (64 KiB each) into the capped buffers, then the JSON body.
func BenchmarkExecBody1MB(b *testing.B) {
	chunk := []byte(strings.Repeat("y\n", 32<<10))
	b.SetBytes(1 << 20)
	for i := 0; i < b.N; i++ {
		stdout, stderr := &cappedBuffer{limit: MaxBufferedOutput}, &cappedBuffer{limit: MaxBufferedOutput}
		for range 16 {
			stdout.Write(chunk)
		}
		resp := execResult("", stdout, stderr, agentclient.ExitStatus{})
		resp.appendJSON(make([]byte, 0, resp.jsonSizeHint()))
	}
}
