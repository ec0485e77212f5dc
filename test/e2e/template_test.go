package e2e

import (
	"archive/tar"
	"bufio"
	"bytes"
	"encoding/json"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/google/go-containerregistry/pkg/name"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/empty"
	"github.com/google/go-containerregistry/pkg/v1/mutate"
	"github.com/google/go-containerregistry/pkg/v1/remote"
	"github.com/google/go-containerregistry/pkg/v1/tarball"

	"github.com/stasis-sandbox/stasis/internal/testenv"
)

// pushBusyboxImage builds a one-layer image (the host's static busybox and
// its applets) and pushes it to the registry at host as app:1.
func pushBusyboxImage(t *testing.T, host string) string {
	t.Helper()
	bb, err := os.ReadFile("/bin/busybox")
	if err != nil {
		t.Fatalf("busybox-static is needed (make setup installs it): %v", err)
	}
	out, err := exec.Command("/bin/busybox", "--list").Output()
	if err != nil {
		t.Fatal(err)
	}
	var buf bytes.Buffer
	tw := tar.NewWriter(&buf)
	dir := func(name string, mode int64) {
		tw.WriteHeader(&tar.Header{Typeflag: tar.TypeDir, Name: name, Mode: mode})
	}
	dir("bin/", 0o755)
	dir("tmp/", 0o1777)
	dir("etc/", 0o755)
	tw.WriteHeader(&tar.Header{Typeflag: tar.TypeReg, Name: "bin/busybox", Mode: 0o755, Size: int64(len(bb))})
	tw.Write(bb)
	passwd := "root:x:0:0:root:/root:/bin/sh\n"
	tw.WriteHeader(&tar.Header{Typeflag: tar.TypeReg, Name: "etc/passwd", Mode: 0o644, Size: int64(len(passwd))})
	tw.Write([]byte(passwd))
	sc := bufio.NewScanner(bytes.NewReader(out))
	for sc.Scan() {
		if a := strings.TrimSpace(sc.Text()); a != "" && a != "busybox" {
			tw.WriteHeader(&tar.Header{Typeflag: tar.TypeSymlink, Name: "bin/" + a, Linkname: "busybox", Mode: 0o777})
		}
	}
	tw.Close()
	data := buf.Bytes()
	layer, err := tarball.LayerFromOpener(func() (io.ReadCloser, error) { return io.NopCloser(bytes.NewReader(data)), nil })
	if err != nil {
		t.Fatal(err)
	}
	img, err := mutate.AppendLayers(empty.Image, layer)
	if err != nil {
		t.Fatal(err)
	}
	img, err = mutate.Config(img, v1.Config{Env: []string{"PATH=/bin", "FROM_IMAGE=yes"}, WorkingDir: "/"})
	if err != nil {
		t.Fatal(err)
	}
	ref, err := name.ParseReference(host+"/app:1", name.Insecure)
	if err != nil {
		t.Fatal(err)
	}
	if err := remote.Write(ref, img); err != nil {
		t.Fatalf("push: %v", err)
	}
	return ref.String()
}

type buildInfo struct {
	ID           string `json:"id"`
	Status       string `json:"status"`
	ErrorMessage string `json:"error_message"`
}

// waitBuild polls a build until it finishes and returns it.
func waitBuild(t *testing.T, srv *testenv.Server, tpl, build string) buildInfo {
	t.Helper()
	deadline := time.Now().Add(5 * time.Minute)
	for {
		var b buildInfo
		if err := srv.Do("GET", "/templates/"+tpl+"/builds/"+build, nil, &b); err != nil {
			t.Fatal(err)
		}
		switch b.Status {
		case "ready", "failed", "cancelled":
			return b
		}
		if time.Now().After(deadline) {
			t.Fatalf("build %s still %s", build, b.Status)
		}
		time.Sleep(200 * time.Millisecond)
	}
}

// buildLogText reads a build's SSE log to its end.
func buildLogText(t *testing.T, srv *testenv.Server, tpl, build string) (string, string) {
	t.Helper()
	req, _ := http.NewRequest("GET", srv.URL+"/templates/"+tpl+"/builds/"+build+"/logs", nil)
	req.Header.Set("X-API-Key", srv.APIKey)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	var text strings.Builder
	final := ""
	sc := bufio.NewScanner(resp.Body)
	sc.Buffer(make([]byte, 1<<20), 1<<20)
	for sc.Scan() {
		line, ok := strings.CutPrefix(sc.Text(), "data: ")
		if !ok {
			continue
		}
		var ev struct {
			Stream, Text, Status string
			Finished             bool
		}
		if err := json.Unmarshal([]byte(line), &ev); err != nil {
			t.Fatalf("bad log event %q", line)
		}
		text.WriteString(ev.Text)
		if ev.Finished {
			final = ev.Status
		}
	}
	return text.String(), final
}

// TestTemplateFromImage: an image from a loopback registry with an HTTP
// server as start_cmd becomes a template; a sandbox created from it answers
// HTTP at once, without starting the server again.
func TestTemplateFromImage(t *testing.T) {
	host, _ := testenv.StartRegistry(t)
	ref := pushBusyboxImage(t, host)
	srv := testenv.StartServer(t)

	spec := map[string]any{
		"name": "web",
		"build_spec": map[string]any{
			"from": ref,
			"steps": []any{
				map[string]any{"run": "mkdir -p /srv && echo hello-from-template > /srv/index.html && echo step-output-visible"},
				map[string]any{"env": map[string]string{"key": "GREETING", "value": "hi"}},
				map[string]any{"workdir": "/srv"},
			},
			"start_cmd": "echo started >> /tmp/starts; httpd -f -p 8080 -h /srv",
			"ready_cmd": "wget -q -O - http://127.0.0.1:8080/index.html",
		},
	}
	var created struct {
		ID, Name, Status string
		BuildID          string `json:"build_id"`
	}
	if err := srv.Do("POST", "/templates", spec, &created); err != nil {
		t.Fatalf("create template: %v", err)
	}
	if created.BuildID == "" || created.Name != "web" {
		t.Fatalf("create template returned %+v", created)
	}
	logText, final := buildLogText(t, srv, "web", created.BuildID)
	if b := waitBuild(t, srv, created.ID, created.BuildID); b.Status != "ready" {
		t.Fatalf("build %s: %s\nlog:\n%s", b.Status, b.ErrorMessage, logText)
	}
	if final != "ready" || !strings.Contains(logText, "step-output-visible") {
		t.Fatalf("build log (final %q) lacks the step's output:\n%s", final, logText)
	}

	// A sandbox from the template answers HTTP at once; the server was not started again.
	c, sb := create(t, srv, map[string]any{"name": "from-tpl", "from_template": "web"})
	if sb.Template != "web" {
		t.Fatalf("sandbox template = %q", sb.Template)
	}
	if got := c.sh("wget -q -O - http://127.0.0.1:8080/index.html"); got != "hello-from-template" {
		t.Fatalf("HTTP from the template's server: %q", got)
	}
	if got := c.sh("cat /tmp/starts"); got != "started" {
		t.Fatalf("start_cmd ran again: /tmp/starts = %q", got)
	}
	if got := c.sh("echo $GREETING $FROM_IMAGE; pwd"); got != "hi yes\n/srv" {
		t.Fatalf("template env/workdir: %q", got)
	}
	// The image's trust store (busybox has none) holds the server's egress
	// CA, so TLS that secret injection terminates verifies in sandboxes
	// made from the template.
	ca, err := os.ReadFile(filepath.Join(srv.DataDir(), "egress-ca.pem"))
	if err != nil {
		t.Fatal(err)
	}
	if got := c.sh("cat /etc/ssl/certs/ca-certificates.crt"); !strings.Contains(got, strings.TrimSpace(string(ca))) {
		t.Fatalf("the template's trust bundle lacks the egress CA:\n%s", got)
	}
	if got := c.sh("cat /etc/ssl/certs/stasis-egress-ca.pem"); got != strings.TrimSpace(string(ca)) {
		t.Fatalf("the template's egress CA file: %q", got)
	}
	// Sandboxes from one template are independent.
	c2, _ := create(t, srv, map[string]any{"name": "from-tpl-2", "from_template": "web"})
	c.sh("echo mine > /srv/private.txt")
	if r := c2.exec("cat /srv/private.txt"); r.ExitCode == 0 {
		t.Fatalf("second sandbox sees the first one's write: %q", r.Stdout)
	}
	if got := c2.sh("wget -q -O - http://127.0.0.1:8080/index.html"); got != "hello-from-template" {
		t.Fatalf("second sandbox HTTP: %q", got)
	}

	// An unchanged rebuild is idempotent: the same build comes back.
	var rebuilt buildInfo
	if err := srv.Do("POST", "/templates/web/builds", nil, &rebuilt); err != nil {
		t.Fatal(err)
	}
	if rebuilt.ID != created.BuildID {
		t.Fatalf("unchanged rebuild started build %s, want %s", rebuilt.ID, created.BuildID)
	}
	var list []map[string]any
	if err := srv.Do("GET", "/templates?name_prefix=we", nil, &list); err != nil || len(list) != 1 {
		t.Fatalf("list templates: %v %v", list, err)
	}
}

// TestTemplateStepFails: a failing step fails the build with step_failed and its log.
func TestTemplateStepFails(t *testing.T) {
	srv := testenv.StartServer(t)
	var created struct {
		ID      string
		BuildID string `json:"build_id"`
	}
	err := srv.Do("POST", "/templates", map[string]any{
		"name": "broken",
		"build_spec": map[string]any{
			"from":  "stasis/minimal",
			"steps": []any{map[string]any{"run": "echo about-to-fail >&2; exit 7"}},
		},
	}, &created)
	if err != nil {
		t.Fatal(err)
	}
	b := waitBuild(t, srv, created.ID, created.BuildID)
	if b.Status != "failed" || !strings.HasPrefix(b.ErrorMessage, "step_failed:") {
		t.Fatalf("build = %+v, want failed with step_failed", b)
	}
	logText, final := buildLogText(t, srv, created.ID, created.BuildID)
	if final != "failed" || !strings.Contains(logText, "about-to-fail") {
		t.Fatalf("log (final %q) lacks the step's stderr:\n%s", final, logText)
	}
	var tpl struct {
		Status       string `json:"status"`
		ErrorMessage string `json:"error_message"`
	}
	srv.Do("GET", "/templates/broken", nil, &tpl)
	if tpl.Status != "failed" || !strings.HasPrefix(tpl.ErrorMessage, "step_failed:") {
		t.Fatalf("template = %+v", tpl)
	}
	if err := srv.Do("POST", "/sandboxes", map[string]any{"name": "x", "from_template": "broken"}, nil); statusOf(err) != http.StatusConflict {
		t.Fatalf("create from failed template: %v, want 409", err)
	}
	// No build sandbox is left behind.
	var list []sandboxInfo
	srv.Do("GET", "/sandboxes", nil, &list)
	if len(list) != 0 {
		t.Fatalf("sandboxes left: %+v", list)
	}
}
