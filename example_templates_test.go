package stasis_test

// Examples for templates, forks and snapshots. Like those in
// example_test.go, the ones that need a running stasisd have no "Output:"
// comment: `go test` compiles them without running them. They are
// exercised for real in e2e_templates_test.go.

import (
	"context"
	"errors"
	"fmt"
	"log"
	"os"
	"time"

	stasis "github.com/stasis-sandbox/stasis"
)

func ExampleClient_CreateTemplate() {
	ctx := context.Background()
	client, err := stasis.NewClient()
	if err != nil {
		log.Fatal(err)
	}
	tpl, err := client.CreateTemplate(ctx, stasis.TemplateSpec{
		Name: "web",
		From: "stasis/minimal", // or an OCI image, e.g. "docker.io/library/python:3.12-slim"
		Steps: []stasis.BuildStep{
			stasis.RunStep("mkdir -p /srv && echo hello > /srv/index.html"),
			stasis.EnvStep("GREETING", "hi"),
			stasis.WorkdirStep("/srv"),
		},
		// Running in every sandbox made from the template, already started.
		StartCmd: "httpd -f -p 8080 -h /srv",
		ReadyCmd: "wget -q -O - http://127.0.0.1:8080/index.html",
	})
	if err != nil {
		log.Fatal(err)
	}
	// Wait for the build, printing its log as it goes.
	ready, err := tpl.WaitUntilReady(ctx, &stasis.WaitOptions{
		OnLog: func(ev stasis.BuildLogEvent) { fmt.Fprint(os.Stderr, ev.Text) },
	})
	var buildErr *stasis.BuildError
	if errors.As(err, &buildErr) {
		log.Fatalf("build %s failed (%s): %s", buildErr.BuildID, buildErr.Code, buildErr.Message)
	} else if err != nil {
		log.Fatal(err)
	}
	fmt.Println(ready.Name, ready.Status, ready.SizeBytes)

	// Sandboxes from the template start with the web server running.
	sb, err := client.Create(ctx, stasis.CreateOptions{Template: "web"})
	if err != nil {
		log.Fatal(err)
	}
	defer sb.Kill(ctx)
	res, err := sb.Commands.Run(ctx, "wget -q -O - http://127.0.0.1:8080/index.html", nil)
	if err != nil {
		log.Fatal(err)
	}
	fmt.Print(res.Stdout) // hello
}

func ExampleTemplate_FollowLogs() {
	ctx := context.Background()
	client, err := stasis.NewClient()
	if err != nil {
		log.Fatal(err)
	}
	tpl, err := client.GetTemplate(ctx, "web")
	if err != nil {
		log.Fatal(err)
	}
	// Rebuild: an unchanged spec returns the existing build.
	b, err := tpl.Rebuild(ctx)
	if err != nil {
		log.Fatal(err)
	}
	err = tpl.FollowLogs(ctx, b.ID, func(ev stasis.BuildLogEvent) {
		if ev.Finished {
			fmt.Println("build", ev.Status)
			return
		}
		fmt.Printf("[%s] %s", ev.Stream, ev.Text)
	})
	if err != nil {
		log.Fatal(err)
	}
}

func ExampleClient_ListTemplates() {
	ctx := context.Background()
	client, err := stasis.NewClient()
	if err != nil {
		log.Fatal(err)
	}
	list, err := client.ListTemplates(ctx, "web") // names starting with "web"
	if err != nil {
		log.Fatal(err)
	}
	for _, t := range list {
		fmt.Println(t.Name, t.Status)
		builds, err := t.Builds(ctx, 3) // newest first
		if err != nil {
			log.Fatal(err)
		}
		for _, b := range builds {
			fmt.Println("  ", b.ID, b.Status, b.ErrorMessage)
		}
	}
	// Idempotent: deleting a missing template succeeds.
	if err := client.DeleteTemplate(ctx, "web-old"); err != nil {
		log.Fatal(err)
	}
}

func ExampleBuildError() {
	// A failed build's error message starts with a code; WaitUntilReady
	// returns it as a *BuildError.
	code, msg := stasis.ParseBuildError("step_failed: step 2 exited with status 7")
	var err error = &stasis.BuildError{Code: code, Message: msg, BuildID: "b1", TemplateID: "t1"}

	var be *stasis.BuildError
	if errors.As(err, &be) && be.Code == stasis.BuildCodeStepFailed {
		fmt.Println(be.Message)
	}
	fmt.Println(errors.Is(err, stasis.ErrBuildFailed))
	// Output:
	// step 2 exited with status 7
	// true
}

func ExampleSandbox_Fork() {
	ctx := context.Background()
	client, err := stasis.NewClient()
	if err != nil {
		log.Fatal(err)
	}
	sb, err := client.Create(ctx, stasis.CreateOptions{Template: "stasis/minimal"})
	if err != nil {
		log.Fatal(err)
	}
	defer sb.Kill(ctx)
	if err := sb.Files.Write(ctx, "/tmp/state", []byte("prepared once")); err != nil {
		log.Fatal(err)
	}
	// Forking needs a paused sandbox; the original stays paused.
	if err := sb.Pause(ctx); err != nil {
		log.Fatal(err)
	}
	forks, err := sb.Fork(ctx, 3)
	for _, f := range forks { // with a *ForkError, some forks may still exist
		defer f.Kill(ctx)
	}
	if err != nil {
		log.Fatal(err)
	}
	for i, f := range forks {
		res, err := f.Commands.Run(ctx, fmt.Sprintf("cat /tmp/state; echo ' -> fork %d'", i), nil)
		if err != nil {
			log.Fatal(err)
		}
		fmt.Print(res.Stdout)
	}
}

func ExampleSandbox_SaveSnapshot() {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	client, err := stasis.NewClient()
	if err != nil {
		log.Fatal(err)
	}
	sb, err := client.Connect(ctx, "7a3f2b8c-1234-4c5d-9e8f-000000000000")
	if err != nil {
		log.Fatal(err)
	}
	snap, err := sb.SaveSnapshot(ctx, "after-setup")
	if err != nil {
		log.Fatal(err)
	}
	// New sandboxes start from the saved state.
	clone, err := client.Create(ctx, stasis.CreateOptions{Snapshot: snap.ID})
	if err != nil {
		log.Fatal(err)
	}
	defer clone.Kill(ctx)

	list, err := client.ListSnapshots(ctx)
	if err != nil {
		log.Fatal(err)
	}
	for _, s := range list {
		fmt.Println(s.ID, s.Name, s.SizeBytes)
	}
	if err := client.DeleteSnapshot(ctx, snap.ID); err != nil {
		log.Fatal(err)
	}
}
