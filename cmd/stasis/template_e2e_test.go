package main

// End-to-end tests of `stasis template`, `stasis fork` and `stasis
// snapshot`: the built binary against a real stasisd (internal/testenv).

import (
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/stasis-sandbox/stasis/internal/testenv"
)

const webTemplateYAML = `# a web server that is already running in every sandbox
name: cli-web
from: stasis/minimal
steps:
  - run: |
      mkdir -p /srv
      echo hello-from-cli-template > /srv/index.html
      echo step-output-visible
  - env: GREETING=hi
  - workdir: /srv
start_cmd: httpd -f -p 8080 -h /srv
ready_cmd: wget -q -O - http://127.0.0.1:8080/index.html
`

const brokenTemplateYAML = `name: cli-broken
from: stasis/minimal
steps:
  - run: echo fine
  - run: echo about-to-fail >&2; exit 7
`

func writeFile(t *testing.T, name, content string) string {
	t.Helper()
	p := filepath.Join(t.TempDir(), name)
	if err := os.WriteFile(p, []byte(content), 0o644); err != nil {
		t.Fatal(err)
	}
	return p
}

func TestCLITemplatesE2E(t *testing.T) {
	srv := testenv.StartServer(t)
	c := newCLI(t, srv)

	t.Run("Templates", func(t *testing.T) {
		// create -f follows the build log and prints the id once ready.
		r := c.run("template", "create", "-f", writeFile(t, "template.yaml", webTemplateYAML))
		t.Cleanup(func() { c.run("template", "rm", "cli-web") })
		if r.code != 0 {
			t.Fatalf("template create: %+v", r)
		}
		tplID := strings.TrimSpace(r.stdout)
		if tplID == "" || strings.ContainsAny(tplID, " \n") {
			t.Fatalf("template create printed %q", r.stdout)
		}
		for _, want := range []string{"step-output-visible", "==> build ", "template cli-web is ready"} {
			if !strings.Contains(r.stderr, want) {
				t.Errorf("build output lacks %q:\n%s", want, r.stderr)
			}
		}

		// Sandboxes from it have the server running.
		id := strings.TrimSpace(c.ok("create", "--template", "cli-web"))
		t.Cleanup(func() { c.run("kill", id) })
		if out := c.ok("exec", id, "--", "wget -q -O - http://127.0.0.1:8080/index.html; echo $GREETING; pwd"); out != "hello-from-cli-template\nhi\n/srv\n" {
			t.Fatalf("sandbox from template: %q", out)
		}

		// ls, info, logs, rebuild.
		if out := c.ok("template", "ls"); !strings.Contains(out, "cli-web") || !strings.Contains(out, tplID) || !strings.Contains(out, "ready") {
			t.Errorf("template ls:\n%s", out)
		}
		var list []map[string]any
		if err := json.Unmarshal([]byte(c.ok("template", "ls", "--json", "--prefix", "cli-w")), &list); err != nil || len(list) != 1 || list[0]["id"] != tplID {
			t.Errorf("template ls --json: %v %v", list, err)
		}
		if out := c.ok("template", "info", "cli-web"); !strings.Contains(out, "Status:") || !strings.Contains(out, "ready") || !strings.Contains(out, "Builds") {
			t.Errorf("template info:\n%s", out)
		}
		var info map[string]any
		if err := json.Unmarshal([]byte(c.ok("template", "info", "cli-web", "--json")), &info); err != nil || info["status"] != "ready" {
			t.Errorf("template info --json: %v %v", info, err)
		} else if builds, _ := info["builds"].([]any); len(builds) != 1 {
			t.Errorf("template info --json builds: %v", info["builds"])
		}
		if out := c.ok("template", "logs", "cli-web"); !strings.Contains(out, "step-output-visible") || !strings.Contains(out, "==> build ready") {
			t.Errorf("template logs:\n%s", out)
		}
		if r := c.run("template", "rebuild", "cli-web"); r.code != 0 || !strings.Contains(r.stderr, "unchanged") {
			t.Errorf("template rebuild: %+v", r)
		}
		// The name is taken.
		if r := c.run("template", "create", "-f", writeFile(t, "again.yaml", webTemplateYAML), "--no-wait"); r.code != 1 || !strings.Contains(r.stderr, "template rebuild cli-web") {
			t.Errorf("create again: %+v", r)
		}

		// A failing step: the log shows it and the command exits 1 with the code.
		r = c.run("template", "create", "-f", writeFile(t, "broken.yaml", brokenTemplateYAML))
		t.Cleanup(func() { c.run("template", "rm", "cli-broken") })
		if r.code != 1 || r.stdout != "" || !strings.Contains(r.stderr, "about-to-fail") || !strings.Contains(r.stderr, "failed: step_failed:") {
			t.Fatalf("broken template create: %+v", r)
		}
		if r := c.run("template", "logs", "cli-broken"); r.code != 1 || !strings.Contains(r.stdout, "about-to-fail") || !strings.Contains(r.stderr, "step_failed") {
			t.Errorf("broken template logs: %+v", r)
		}
		if r := c.run("create", "--template", "cli-broken"); r.code != 1 {
			t.Errorf("create from a failed template: %+v", r)
		}

		// --no-wait returns at once; logs follows the build to its end.
		t.Cleanup(func() { c.run("template", "rm", "cli-web-2") })
		r = c.runIn(strings.NewReader(webTemplateYAML), "template", "create", "-f", "-", "--name", "cli-web-2", "--no-wait")
		if r.code != 0 || strings.TrimSpace(r.stdout) == "" {
			t.Fatalf("create --no-wait: %+v", r)
		}
		if r := c.run("template", "logs", "cli-web-2"); r.code != 0 || !strings.Contains(r.stdout, "step-output-visible") {
			t.Errorf("logs of a build in progress: %+v", r)
		}

		// rm; a second rm is fine.
		if out := c.ok("template", "rm", "cli-web", "cli-web-2"); !strings.Contains(out, "cli-web deleted") || !strings.Contains(out, "cli-web-2 deleted") {
			t.Errorf("template rm: %q", out)
		}
		c.ok("template", "rm", "cli-web")
		if r := c.run("template", "info", "cli-web"); r.code != 1 || !strings.Contains(r.stderr, "template cli-web not found") {
			t.Errorf("info after rm: %+v", r)
		}
	})

	t.Run("Fork", func(t *testing.T) {
		id := c.create("cli-fork")
		c.ok("exec", id, "--", "echo prepared-once > /home/user/state.txt")
		if r := c.run("fork", id, "-n", "2"); r.code != 1 || !strings.Contains(r.stderr, "pause it") {
			t.Fatalf("fork of an active sandbox: %+v", r)
		}
		c.ok("pause", id)
		out := c.ok("fork", id, "-n", "2")
		forks := strings.Fields(out)
		for _, f := range forks {
			t.Cleanup(func() { c.run("kill", f) })
		}
		if len(forks) != 2 || forks[0] == forks[1] || forks[0] == id {
			t.Fatalf("fork printed %q", out)
		}
		for i, f := range forks {
			if got := c.ok("exec", f, "--", "cat /home/user/state.txt"); got != "prepared-once\n" {
				t.Fatalf("fork %d: %q", i, got)
			}
		}
		// --json, and --pause on an active sandbox.
		c.ok("resume", id)
		var list []map[string]any
		if err := json.Unmarshal([]byte(c.ok("fork", id, "--pause", "--json")), &list); err != nil || len(list) != 1 || list[0]["status"] != "active" {
			t.Fatalf("fork --pause --json: %v %v", list, err)
		}
		t.Cleanup(func() { c.run("kill", list[0]["id"].(string)) })
		if r := c.run("fork", "no-such-sandbox"); r.code != 1 || !strings.Contains(r.stderr, "sandbox no-such-sandbox not found") {
			t.Errorf("fork missing: %+v", r)
		}
	})

	t.Run("Snapshots", func(t *testing.T) {
		if r := c.run("snapshot", "ls"); r.code != 0 {
			t.Fatalf("snapshot ls: %+v", r) // the route must be there
		}
		id := c.create("cli-snap")
		c.ok("exec", id, "--", "echo before > /home/user/saved.txt")
		snap := strings.TrimSpace(c.ok("snapshot", "save", id, "--name", "cli-before"))
		t.Cleanup(func() { c.run("snapshot", "rm", snap) })
		if out := c.ok("snapshot", "ls"); !strings.Contains(out, snap) || !strings.Contains(out, "cli-before") {
			t.Errorf("snapshot ls:\n%s", out)
		}
		c.ok("exec", id, "--", "echo after > /home/user/saved.txt")
		clone := strings.TrimSpace(c.ok("create", "--snapshot", snap))
		t.Cleanup(func() { c.run("kill", clone) })
		if got := c.ok("exec", clone, "--", "cat /home/user/saved.txt"); got != "before\n" {
			t.Fatalf("clone sees %q", got)
		}
		if out := c.ok("snapshot", "rm", snap); !strings.Contains(out, snap+" deleted") {
			t.Errorf("snapshot rm: %q", out)
		}
		c.ok("snapshot", "rm", snap)
	})
}
