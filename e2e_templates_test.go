package stasis_test

// End-to-end tests of templates, forks and saved snapshots: the SDK
// against a real stasisd with real gVisor sandboxes (internal/testenv).

import (
	"context"
	"errors"
	"strings"
	"sync"
	"testing"

	stasis "github.com/stasis-sandbox/stasis"
	"github.com/stasis-sandbox/stasis/internal/testenv"
)

func TestE2ETemplates(t *testing.T) {
	srv := testenv.StartServer(t)
	c := newClient(t, srv)

	t.Run("BuildAndUse", func(t *testing.T) {
		ctx, cancel := context.WithTimeout(context.Background(), 2*e2eTimeout)
		defer cancel()
		tpl, err := c.CreateTemplate(ctx, stasis.TemplateSpec{
			Name: "web",
			From: template,
			Steps: []stasis.BuildStep{
				stasis.RunStep("mkdir -p /srv && echo hello-from-template > /srv/index.html && echo step-output-visible"),
				stasis.EnvStep("GREETING", "hi"),
				stasis.WorkdirStep("/srv"),
			},
			StartCmd: "echo started >> /tmp/starts; httpd -f -p 8080 -h /srv",
			ReadyCmd: "wget -q -O - http://127.0.0.1:8080/index.html",
		})
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { c.DeleteTemplate(context.Background(), "web") })
		if tpl.Name != "web" || tpl.LatestBuildID == "" || tpl.Status == stasis.TemplateReady {
			t.Fatalf("created %+v", tpl)
		}
		var mu sync.Mutex
		var log strings.Builder
		var last stasis.BuildLogEvent
		ready, err := tpl.WaitUntilReady(ctx, &stasis.WaitOptions{OnLog: func(ev stasis.BuildLogEvent) {
			mu.Lock()
			defer mu.Unlock()
			log.WriteString(ev.Text)
			last = ev
		}})
		mu.Lock()
		logText, final := log.String(), last
		mu.Unlock()
		if err != nil {
			t.Fatalf("build: %v\nlog:\n%s", err, logText)
		}
		if ready.Status != stasis.TemplateReady || ready.SizeBytes <= 0 || ready.BuiltAt.IsZero() {
			t.Fatalf("ready template %+v", ready)
		}
		// Every event up to the final one was delivered before the return.
		if !strings.Contains(logText, "step-output-visible") || !final.Finished || final.Status != stasis.BuildReady {
			t.Fatalf("log (last event %+v):\n%s", final, logText)
		}

		// A sandbox from the template answers at once: start_cmd is running.
		sb, err := c.Create(ctx, stasis.CreateOptions{Name: "from-web", Template: "web"})
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { sb.Kill(context.Background()) })
		if got := mustRun(t, ctx, sb, "wget -q -O - http://127.0.0.1:8080/index.html").Stdout; got != "hello-from-template\n" {
			t.Fatalf("HTTP from the template's server: %q", got)
		}
		if got := mustRun(t, ctx, sb, "cat /tmp/starts; echo $GREETING; pwd").Stdout; got != "started\nhi\n/srv\n" {
			t.Fatalf("start_cmd/env/workdir: %q", got)
		}
		if info, _ := sb.Info(ctx); info == nil || info.Template != "web" {
			t.Fatalf("sandbox info %+v", info)
		}

		// Listing, builds, and an unchanged rebuild returning the same build.
		list, err := c.ListTemplates(ctx, "we")
		if err != nil || len(list) != 1 || list[0].ID != tpl.ID {
			t.Fatalf("list: %+v %v", list, err)
		}
		if none, err := c.ListTemplates(ctx, "zzz"); err != nil || len(none) != 0 {
			t.Fatalf("list zzz: %+v %v", none, err)
		}
		got, err := c.GetTemplate(ctx, "web")
		if err != nil || got.ID != tpl.ID || got.LatestBuildID != tpl.LatestBuildID {
			t.Fatalf("get: %+v %v", got, err)
		}
		b, err := got.Rebuild(ctx)
		if err != nil || b.ID != tpl.LatestBuildID || b.Status != stasis.BuildReady {
			t.Fatalf("unchanged rebuild: %+v %v", b, err)
		}
		builds, err := got.Builds(ctx, 0)
		if err != nil || len(builds) != 1 || builds[0].FinalizedAt.IsZero() || builds[0].SpecHash == "" {
			t.Fatalf("builds: %+v %v", builds, err)
		}
		// The finished build's log replays.
		var replay strings.Builder
		if err := got.FollowLogs(ctx, "", func(ev stasis.BuildLogEvent) { replay.WriteString(ev.Text) }); err != nil {
			t.Fatal(err)
		}
		if !strings.Contains(replay.String(), "step-output-visible") {
			t.Fatalf("replayed log:\n%s", replay.String())
		}

		// Delete: the running sandbox is unaffected; deleting again is fine.
		if err := got.Delete(ctx); err != nil {
			t.Fatal(err)
		}
		if _, err := c.GetTemplate(ctx, "web"); !errors.Is(err, stasis.ErrNotFound) {
			t.Fatalf("get deleted: %v", err)
		}
		if err := c.DeleteTemplate(ctx, "web"); err != nil {
			t.Fatalf("delete again: %v", err)
		}
		if got := mustRun(t, ctx, sb, "wget -q -O - http://127.0.0.1:8080/index.html").Stdout; got != "hello-from-template\n" {
			t.Fatalf("after delete: %q", got)
		}
	})

	t.Run("StepFails", func(t *testing.T) {
		ctx, cancel := context.WithTimeout(context.Background(), e2eTimeout)
		defer cancel()
		tpl, err := c.CreateTemplate(ctx, stasis.TemplateSpec{
			Name: "broken", From: template,
			Steps: []stasis.BuildStep{stasis.RunStep("echo fine"), stasis.RunStep("echo about-to-fail >&2; exit 7")},
		})
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { c.DeleteTemplate(context.Background(), "broken") })
		var log strings.Builder
		_, err = tpl.WaitUntilReady(ctx, &stasis.WaitOptions{OnLog: func(ev stasis.BuildLogEvent) { log.WriteString(ev.Text) }})
		var be *stasis.BuildError
		if !errors.As(err, &be) || !errors.Is(err, stasis.ErrBuildFailed) {
			t.Fatalf("err = %v", err)
		}
		if be.Code != stasis.BuildCodeStepFailed || be.BuildID != tpl.LatestBuildID || be.TemplateID != tpl.ID || be.Message == "" {
			t.Fatalf("build error %+v", be)
		}
		if !strings.Contains(log.String(), "about-to-fail") {
			t.Fatalf("log lacks the step's stderr:\n%s", log.String())
		}
		failed, err := c.GetTemplate(ctx, "broken")
		if err != nil || failed.Status != stasis.TemplateFailed || !strings.HasPrefix(failed.ErrorMessage, "step_failed:") {
			t.Fatalf("template %+v %v", failed, err)
		}
		// Waiting again reports the same failure at once.
		if _, err := failed.WaitUntilReady(ctx, nil); !errors.As(err, &be) || be.Code != stasis.BuildCodeStepFailed {
			t.Fatalf("second wait: %v", err)
		}
		if _, err := c.Create(ctx, stasis.CreateOptions{Template: "broken"}); !errors.Is(err, stasis.ErrConflict) {
			t.Fatalf("create from a failed template: %v", err)
		}
	})

	t.Run("Fork", func(t *testing.T) {
		ctx, cancel := context.WithTimeout(context.Background(), e2eTimeout)
		defer cancel()
		sb := createSandbox(t, ctx, c, "fork-origin")
		if err := sb.Files.Write(ctx, "/home/user/state.txt", []byte("prepared once")); err != nil {
			t.Fatal(err)
		}
		if _, err := sb.Fork(ctx, 2); !errors.Is(err, stasis.ErrConflict) {
			t.Fatalf("fork of an active sandbox: %v", err)
		}
		if err := sb.Pause(ctx); err != nil {
			t.Fatal(err)
		}
		forks, err := sb.Fork(ctx, 3)
		for _, f := range forks {
			t.Cleanup(func() { f.Kill(context.Background()) })
		}
		if err != nil || len(forks) != 3 {
			t.Fatalf("fork: %d sandboxes, %v", len(forks), err)
		}
		seen := map[string]bool{sb.ID: true}
		for i, f := range forks {
			if seen[f.ID] {
				t.Fatalf("fork %d reuses id %s", i, f.ID)
			}
			seen[f.ID] = true
			if got := mustRun(t, ctx, f, "cat /home/user/state.txt").Stdout; got != "prepared once" {
				t.Fatalf("fork %d: %q", i, got)
			}
			mustRun(t, ctx, f, "echo "+f.ID+" > /home/user/mine.txt")
		}
		for i, f := range forks {
			if got := mustRun(t, ctx, f, "cat /home/user/mine.txt").Stdout; got != f.ID+"\n" {
				t.Fatalf("fork %d sees %q", i, got)
			}
		}
		if info, err := sb.Info(ctx); err != nil || info.Status != stasis.StatusPaused {
			t.Fatalf("original after fork: %+v %v", info, err)
		}
		if _, err := c.ForkByID(ctx, "no-such-sandbox", 1); !errors.Is(err, stasis.ErrNotFound) {
			t.Fatalf("fork missing: %v", err)
		}
	})

	t.Run("Snapshots", func(t *testing.T) {
		ctx, cancel := context.WithTimeout(context.Background(), e2eTimeout)
		defer cancel()
		if _, err := c.ListSnapshots(ctx); err != nil {
			t.Fatalf("list snapshots: %v", err) // a 404 means the route was lost
		}
		sb := createSandbox(t, ctx, c, "snap-origin")
		if err := sb.Files.Write(ctx, "/home/user/saved.txt", []byte("before")); err != nil {
			t.Fatal(err)
		}
		snap, err := sb.SaveSnapshot(ctx, "before")
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { c.DeleteSnapshot(context.Background(), snap.ID) })
		if snap.SandboxID != sb.ID || snap.Name != "before" {
			t.Fatalf("snapshot %+v", snap)
		}
		mustRun(t, ctx, sb, "echo after > /home/user/saved.txt")
		clone, err := c.Create(ctx, stasis.CreateOptions{Name: "from-snap", Snapshot: snap.ID})
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { clone.Kill(context.Background()) })
		if got := mustRun(t, ctx, clone, "cat /home/user/saved.txt").Stdout; got != "before" {
			t.Fatalf("clone sees %q", got)
		}
		list, err := c.ListSnapshots(ctx)
		found := false
		for _, s := range list {
			found = found || s.ID == snap.ID
		}
		if err != nil || !found {
			t.Fatalf("list: %+v %v", list, err)
		}
		if err := c.DeleteSnapshot(ctx, snap.ID); err != nil {
			t.Fatal(err)
		}
		if err := c.DeleteSnapshot(ctx, snap.ID); err != nil {
			t.Fatalf("delete again: %v", err)
		}
	})
}
