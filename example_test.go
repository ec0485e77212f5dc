package stasis_test

// Examples. Those that talk to a sandbox need a running stasisd (`make
// run`), so they have no "Output:" comment: `go test` compiles them but
// does not run them. ExampleNewClient and ExampleAPIError need no server
// and run. The same calls are exercised for real in e2e_test.go.

import (
	"archive/zip"
	"bytes"
	"context"
	"errors"
	"fmt"
	"log"
	"os"
	"time"

	stasis "github.com/stasis-sandbox/stasis"
)

func ExampleNewClient() {
	// Options win over STASIS_URL / STASIS_API_KEY, which win over
	// ~/.config/stasis/credentials.
	client, err := stasis.NewClient(
		stasis.WithBaseURL("http://127.0.0.1:8080"),
		stasis.WithAPIKey("ss_example_key"),
		stasis.WithMaxOutputBytes(1<<20), // cap buffered command output at 1 MiB
	)
	if err != nil {
		log.Fatal(err)
	}
	fmt.Println(client.BaseURL())
	// Output: http://127.0.0.1:8080
}

func ExampleAPIError() {
	// Errors from stasisd are *APIError values that also match the
	// package's sentinel errors.
	var err error = fmt.Errorf("connecting: %w", &stasis.APIError{StatusCode: 404, Code: "not_found", Message: "sandbox abc not found"})

	fmt.Println(errors.Is(err, stasis.ErrNotFound), errors.Is(err, stasis.ErrConflict))
	var apiErr *stasis.APIError
	if errors.As(err, &apiErr) {
		fmt.Println(apiErr.StatusCode, apiErr.Code)
	}
	// Output:
	// true false
	// 404 not_found
}

func ExampleClient_Create() {
	ctx := context.Background()
	client, err := stasis.NewClient() // configured from the environment
	if err != nil {
		log.Fatal(err)
	}
	sb, err := client.Create(ctx, stasis.CreateOptions{
		Name:       "data-job",
		Template:   "stasis/minimal",
		Timeout:    10 * time.Minute, // pause after 10 minutes of active time
		AutoDelete: 24 * time.Hour,   // delete a day after pausing
		Metadata:   map[string]string{"team": "research"},
		EnvVars:    map[string]string{"MODE": "batch"},
	})
	if err != nil {
		log.Fatal(err)
	}
	defer sb.Kill(ctx)

	res, err := sb.Commands.Run(ctx, `echo "mode=$MODE"`, nil)
	if err != nil {
		log.Fatal(err)
	}
	fmt.Print(res.Stdout)
}

func ExampleClient_Connect() {
	ctx := context.Background()
	client, err := stasis.NewClient()
	if err != nil {
		log.Fatal(err)
	}
	// Connect activates the sandbox: a paused one is resumed.
	sb, err := client.Connect(ctx, "7a3f2b8c-1234-4c5d-9e8f-000000000000")
	if errors.Is(err, stasis.ErrNotFound) {
		log.Fatal("no such sandbox")
	} else if err != nil {
		log.Fatal(err)
	}
	fmt.Println(sb.ID, sb.Snapshot().Status)
}

func ExampleClient_List() {
	ctx := context.Background()
	client, err := stasis.NewClient()
	if err != nil {
		log.Fatal(err)
	}
	list, err := client.List(ctx, &stasis.ListOptions{Metadata: map[string]string{"team": "research"}})
	if err != nil {
		log.Fatal(err)
	}
	for _, info := range list {
		fmt.Println(info.ID, info.Name, info.Status)
	}
}

func ExampleClient_KillByID() {
	ctx := context.Background()
	client, err := stasis.NewClient()
	if err != nil {
		log.Fatal(err)
	}
	// Idempotent: killing an already-deleted sandbox succeeds.
	if err := client.KillByID(ctx, "7a3f2b8c-1234-4c5d-9e8f-000000000000"); err != nil {
		log.Fatal(err)
	}
}

func ExampleClient_UpdateByID() {
	ctx := context.Background()
	client, err := stasis.NewClient()
	if err != nil {
		log.Fatal(err)
	}
	// Does not activate the sandbox: a paused one stays paused.
	err = client.UpdateByID(ctx, "7a3f2b8c-1234-4c5d-9e8f-000000000000", stasis.UpdateOptions{
		Metadata:     map[string]string{"stage": "archived"},
		ClearTimeout: true,
		AutoDelete:   time.Hour,
	})
	if err != nil {
		log.Fatal(err)
	}
}

func ExampleSandbox_Pause() {
	ctx := context.Background()
	client, err := stasis.NewClient()
	if err != nil {
		log.Fatal(err)
	}
	sb, err := client.Create(ctx, stasis.CreateOptions{Name: "long-job", Template: "stasis/minimal"})
	if err != nil {
		log.Fatal(err)
	}
	defer sb.Kill(ctx)

	// Start a background process, then checkpoint everything to disk.
	if _, err := sb.Commands.Run(ctx, "sh -c 'i=0; while true; do i=$((i+1)); echo $i > /tmp/n; sleep 1; done' >/dev/null 2>&1 &", nil); err != nil {
		log.Fatal(err)
	}
	if err := sb.Pause(ctx); err != nil {
		log.Fatal(err)
	}
	info, err := sb.Info(ctx)
	if err != nil {
		log.Fatal(err)
	}
	fmt.Println(info.Status) // paused

	// Resume explicitly (Commands and Files would also resume it).
	if err := sb.Resume(ctx); err != nil {
		log.Fatal(err)
	}
	n, err := sb.Files.ReadText(ctx, "/tmp/n")
	if err != nil {
		log.Fatal(err)
	}
	fmt.Print("the counter kept its value: ", n)
}

func ExampleSandbox_Update() {
	ctx := context.Background()
	client, err := stasis.NewClient()
	if err != nil {
		log.Fatal(err)
	}
	sb, err := client.Connect(ctx, "7a3f2b8c-1234-4c5d-9e8f-000000000000")
	if err != nil {
		log.Fatal(err)
	}
	if err := sb.Update(ctx, stasis.UpdateOptions{Timeout: time.Hour}); err != nil {
		log.Fatal(err)
	}
	if err := sb.Kill(ctx); err != nil {
		log.Fatal(err)
	}
}

func ExampleCommands_Run() {
	ctx := context.Background()
	client, err := stasis.NewClient()
	if err != nil {
		log.Fatal(err)
	}
	sb, err := client.Create(ctx, stasis.CreateOptions{Name: "run", Template: "stasis/minimal"})
	if err != nil {
		log.Fatal(err)
	}
	defer sb.Kill(ctx)

	res, err := sb.Commands.Run(ctx, "ls /; exit 3", &stasis.RunOptions{
		Dir:     "/tmp",
		Env:     map[string]string{"LC_ALL": "C"},
		Timeout: 30 * time.Second,
	})
	if err != nil {
		log.Fatal(err) // transport trouble, not a failing command
	}
	fmt.Println(res.ExitCode) // 3
	fmt.Print(res.Stdout)
}

func ExampleCommands_Run_streaming() {
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	client, err := stasis.NewClient()
	if err != nil {
		log.Fatal(err)
	}
	sb, err := client.Create(ctx, stasis.CreateOptions{Name: "stream", Template: "stasis/minimal"})
	if err != nil {
		log.Fatal(err)
	}
	defer sb.Kill(context.Background())

	// Output arrives while the command runs. Cancelling ctx abandons it.
	res, err := sb.Commands.Run(ctx, "for i in 1 2 3; do echo $i; sleep 1; done; echo done >&2", &stasis.RunOptions{
		Timeout:  time.Minute,
		OnStdout: func(p []byte) { os.Stdout.Write(p) },
		OnStderr: func(p []byte) { os.Stderr.Write(p) },
	})
	switch {
	case errors.Is(err, stasis.ErrTimeout):
		log.Fatal("gave up waiting")
	case errors.Is(err, context.Canceled):
		log.Fatal("cancelled")
	case err != nil:
		log.Fatal(err)
	}
	fmt.Println("exit", res.ExitCode)
}

func ExampleCommands_Spawn() {
	ctx := context.Background()
	client, err := stasis.NewClient()
	if err != nil {
		log.Fatal(err)
	}
	sb, err := client.Create(ctx, stasis.CreateOptions{Name: "spawn", Template: "stasis/minimal"})
	if err != nil {
		log.Fatal(err)
	}
	defer sb.Kill(ctx)

	sess, err := sb.Commands.Spawn(ctx, "tr a-z A-Z", &stasis.SpawnOptions{
		OnStdout: func(p []byte) { os.Stdout.Write(p) },
	})
	if err != nil {
		log.Fatal(err)
	}
	defer sess.Close()
	fmt.Fprintln(sess.Stdin, "hello")
	sess.Stdin.Close() // end of file
	res, err := sess.Wait(ctx)
	if err != nil {
		log.Fatal(err)
	}
	fmt.Println("exit", res.ExitCode)
}

func ExampleSession_Signal() {
	ctx := context.Background()
	client, err := stasis.NewClient()
	if err != nil {
		log.Fatal(err)
	}
	sb, err := client.Connect(ctx, "7a3f2b8c-1234-4c5d-9e8f-000000000000")
	if err != nil {
		log.Fatal(err)
	}
	sess, err := sb.Commands.Spawn(ctx, "sleep 600", nil)
	if err != nil {
		log.Fatal(err)
	}
	defer sess.Close()
	if err := sess.Signal(ctx, "SIGTERM"); err != nil {
		log.Fatal(err)
	}
	res, err := sess.Wait(ctx)
	if err != nil {
		log.Fatal(err)
	}
	fmt.Println("exit", res.ExitCode)
}

func ExampleSpawnOptions_pty() {
	ctx := context.Background()
	client, err := stasis.NewClient()
	if err != nil {
		log.Fatal(err)
	}
	sb, err := client.Connect(ctx, "7a3f2b8c-1234-4c5d-9e8f-000000000000")
	if err != nil {
		log.Fatal(err)
	}
	// An interactive shell on a pseudo-terminal.
	sess, err := sb.Commands.Spawn(ctx, "/bin/sh", &stasis.SpawnOptions{
		PTY:      &stasis.PTYSize{Cols: 80, Rows: 24},
		OnStdout: func(p []byte) { os.Stdout.Write(p) },
	})
	if err != nil {
		log.Fatal(err)
	}
	defer sess.Close()
	sess.Resize(ctx, 120, 40) // follow the local window
	fmt.Fprintln(sess.Stdin, "stty size; exit")
	if _, err := sess.Wait(ctx); err != nil {
		log.Fatal(err)
	}
}

func ExampleFiles() {
	ctx := context.Background()
	client, err := stasis.NewClient()
	if err != nil {
		log.Fatal(err)
	}
	sb, err := client.Create(ctx, stasis.CreateOptions{Name: "files", Template: "stasis/minimal"})
	if err != nil {
		log.Fatal(err)
	}
	defer sb.Kill(ctx)

	// Parent directories are created.
	if err := sb.Files.Write(ctx, "/home/user/app/config.json", []byte(`{"debug":true}`)); err != nil {
		log.Fatal(err)
	}
	raw, err := sb.Files.Read(ctx, "/home/user/app/config.json")
	if err != nil {
		log.Fatal(err)
	}
	text, err := sb.Files.ReadText(ctx, "/home/user/app/config.json")
	if err != nil {
		log.Fatal(err)
	}
	fmt.Println(len(raw), text)

	// A directory comes down as a zip whose entries start with "app/".
	z, err := sb.Files.DownloadDir(ctx, "/home/user/app")
	if err != nil {
		log.Fatal(err)
	}
	zr, err := zip.NewReader(bytes.NewReader(z), int64(len(z)))
	if err != nil {
		log.Fatal(err)
	}
	for _, f := range zr.File {
		fmt.Println(f.Name)
	}
}
