package agent_test

import (
	"bufio"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/stasis-sandbox/stasis/internal/agent"
	"github.com/stasis-sandbox/stasis/internal/agentproto"
)

// TestCutUploadKeepsOldFile: an upload whose connection ends before its
// Content-Length (stasisd or its client went away) is refused and leaves
// the file as it was, instead of replacing it with the part that arrived.
func TestCutUploadKeepsOldFile(t *testing.T) {
	c, addr := startAgent(t, agent.Config{})
	ctx := testCtx(t)
	dir := t.TempDir()
	p := filepath.Join(dir, "f.txt")
	if err := c.WriteFile(ctx, p, strings.NewReader("original"), 8); err != nil {
		t.Fatal(err)
	}
	conn, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	fmt.Fprintf(conn, "POST %s?path=%s HTTP/1.1\r\nHost: agent\r\nAuthorization: Bearer %s\r\nContent-Length: 1000\r\n\r\ncut short",
		agentproto.PathFiles, url.QueryEscape(p), testToken)
	conn.(*net.TCPConn).CloseWrite()
	resp, err := http.ReadResponse(bufio.NewReader(conn), nil)
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(resp.Body)
	if resp.StatusCode != http.StatusBadRequest {
		t.Errorf("cut upload: %d %s, want 400", resp.StatusCode, body)
	}
	if got, err := os.ReadFile(p); err != nil || string(got) != "original" {
		t.Errorf("file after a cut upload: %q, %v; want it unchanged", got, err)
	}
	if left, _ := filepath.Glob(filepath.Join(dir, ".stasis-upload-*")); len(left) != 0 {
		t.Errorf("temporary files left: %v", left)
	}
}
