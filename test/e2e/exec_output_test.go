package e2e

import (
	"fmt"
	"strings"
	"testing"

	"github.com/stasis-sandbox/stasis/internal/api"
	"github.com/stasis-sandbox/stasis/internal/testenv"
)

// TestExecBufferedOutputEdges: a buffered /exec's output beyond its cap,
// cut by a timeout, and held open by a background job, each larger than the
// command's stdout pipe (the agent gathers a buffered run's output; the
// answer must not change).
func TestExecBufferedOutputEdges(t *testing.T) {
	srv := testenv.StartServer(t)
	c, _ := createMinimal(t, srv, "output-edges")
	const limit = api.MaxBufferedOutput

	// Beyond the cap: the first MaxBufferedOutput bytes, then a note of
	// how many more were dropped (text), or their count (base64).
	const total = limit + 805696
	r := c.execJSON(map[string]any{"command": fmt.Sprintf("yes | head -c %d", total)})
	want := strings.Repeat("y\n", limit/2) + fmt.Sprintf("\n[stasis: output truncated: %d more bytes not shown;", total-limit)
	if out := r["stdout"].(string); !strings.HasPrefix(out, want) || r["exit_code"] != 0.0 {
		t.Fatalf("over the cap: %d bytes of stdout (ends %q), exit %v; want %d bytes of y's and the truncation note",
			len(out), out[max(0, len(out)-120):], r["exit_code"], limit)
	}
	r = c.execJSON(map[string]any{"command": fmt.Sprintf("yes | head -c %d >&2", total), "output_encoding": "base64"})
	if r["stderr_truncated_bytes"] != float64(total-limit) {
		t.Fatalf("over the cap, base64: stderr_truncated_bytes %v, want %d", r["stderr_truncated_bytes"], total-limit)
	}

	// Cut by the timeout: everything printed before the kill arrives.
	const printed = 2_500_000
	r = c.execJSON(map[string]any{"command": fmt.Sprintf("yes | head -c %d; sleep 30", printed), "timeout_s": 2})
	if out := r["stdout"].(string); len(out) != printed || strings.Trim(out, "y\n") != "" || r["exit_code"] != 137.0 ||
		!strings.Contains(fmt.Sprint(r["error"]), "timed out") {
		t.Fatalf("timed out: %d bytes of stdout, exit %v, error %v; want %d bytes, 137, a timeout error",
			len(out), r["exit_code"], r["error"], printed)
	}

	// A background job keeps stdout open: the exec still ends, with the
	// shell's output and exit code, and the job keeps running.
	r = c.execJSON(map[string]any{"command": "yes | head -c 1500000; (sleep 60; echo late) & echo shell-done; exit 5"})
	if out := r["stdout"].(string); len(out) != 1500000+len("shell-done\n") || !strings.HasSuffix(out, "y\nshell-done\n") || r["exit_code"] != 5.0 {
		t.Fatalf("background job: %d bytes of stdout (ends %q), exit %v", len(out), out[max(0, len(out)-40):], r["exit_code"])
	}
	if got := c.sh("ps -o args | grep -c '[s]leep 60'"); got != "1" {
		t.Fatalf("the background job is not running: %q", got)
	}
}
