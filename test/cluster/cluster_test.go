// Package cluster tests a real stasis cluster: three stasisd nodes on one
// PostgreSQL and one S3 server (versitygw), each node with its own port,
// data dir, netns prefix and subnet, driving real gVisor sandboxes.
package cluster

import (
	"context"
	"crypto/rand"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	stasis "github.com/stasis-sandbox/stasis"
	"github.com/stasis-sandbox/stasis/internal/runtime/faultinject"
	"github.com/stasis-sandbox/stasis/internal/testenv"
)

// lease is the nodes' heartbeat lease: short, so a killed node is declared
// lost within the test.
const lease = 6 * time.Second

type node struct {
	name string
	srv  *testenv.Server
	c    *stasis.Client
}

type testCluster struct {
	nodes []*node
	pg    *testenv.Postgres // to stop and start it (failure_test.go)
	s3    *testenv.S3
}

// startCluster starts PostgreSQL, versitygw and n stasisd nodes sharing
// them. All nodes share the node key (agent tokens must survive a move)
// and the secrets key.
func startCluster(t *testing.T, n int) *testCluster {
	t.Helper()
	testenv.RequireRoot(t)
	pg := testenv.StartPostgresServer(t)
	s3 := testenv.StartS3(t)
	keys := t.TempDir()
	nodeKey, secretsKey := filepath.Join(keys, "node.key"), filepath.Join(keys, "secrets.key")
	for _, p := range []string{nodeKey, secretsKey} {
		b := make([]byte, 32)
		rand.Read(b)
		if err := os.WriteFile(p, b, 0o600); err != nil {
			t.Fatal(err)
		}
	}
	prefix := fmt.Sprintf("cluster-%d", time.Now().UnixNano())
	tc := &testCluster{pg: pg, s3: s3}
	for i := range n {
		name := string(rune('a' + i))
		srv := testenv.StartServer(t, testenv.WithFaults(),
			testenv.WithArgs("--database-url", pg.URL, "--snapshot-url", s3.URL(prefix),
				"--node-name", name, "--node-lease", lease.String(),
				"--node-key-file", nodeKey, "--secrets-key-file", secretsKey),
			testenv.WithEnv(s3.Env()...),
			func(s *testenv.Server) { s.Args = append(s.Args, "--advertise-url", s.URL) })
		c, err := stasis.NewClient(stasis.WithBaseURL(srv.URL), stasis.WithAPIKey(srv.APIKey))
		if err != nil {
			t.Fatal(err)
		}
		tc.nodes = append(tc.nodes, &node{name: name, srv: srv, c: c})
	}
	return tc
}

func (tc *testCluster) node(name string) *node {
	for _, n := range tc.nodes {
		if n.name == name {
			return n
		}
	}
	panic("no node " + name)
}

// sandboxJSON is the part of GET /sandboxes/{id} these tests read.
type sandboxJSON struct {
	ID     string `json:"id"`
	Name   string `json:"name"`
	Status string `json:"status"`
	Node   string `json:"node"`
	Error  string `json:"error"`
	Pause  *struct {
		Portable bool `json:"portable"`
	} `json:"pause"`
}

func get(t *testing.T, via *node, id string) sandboxJSON {
	t.Helper()
	return getAs[sandboxJSON](t, via, id)
}

// getAs is GET /sandboxes/{id} through via, decoded into T.
func getAs[T any](t *testing.T, via *node, id string) T {
	t.Helper()
	var v T
	if err := via.srv.Do("GET", "/sandboxes/"+id, nil, &v); err != nil {
		t.Fatalf("GET /sandboxes/%s via %s: %v", id, via.name, err)
	}
	return v
}

// waitFor polls cond until it holds or a generous deadline passes (the
// machine is shared and slow; nothing here is a timing assertion).
func waitFor(t *testing.T, what string, cond func() (bool, string)) {
	t.Helper()
	pollUntil(t, what, 200*time.Millisecond, cond)
}

// pollUntil checks cond every interval (0: as fast as it answers) until it
// holds, for up to two minutes.
func pollUntil(t *testing.T, what string, interval time.Duration, cond func() (bool, string)) {
	t.Helper()
	deadline := time.Now().Add(2 * time.Minute)
	var last string
	for time.Now().Before(deadline) {
		var ok bool
		if ok, last = cond(); ok {
			return
		}
		time.Sleep(interval)
	}
	t.Fatalf("timed out waiting for %s (last: %s)", what, last)
}

func run(t *testing.T, sb *stasis.Sandbox, cmd string) string {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	res, err := sb.Commands.Run(ctx, cmd, nil)
	if err != nil {
		t.Fatalf("run %q: %v", cmd, err)
	}
	if res.ExitCode != 0 {
		t.Fatalf("run %q: exit %d, stderr %q", cmd, res.ExitCode, res.Stderr)
	}
	return strings.TrimSpace(res.Stdout)
}

func TestCluster(t *testing.T) {
	tc := startCluster(t, 3)
	a, b, c := tc.node("a"), tc.node("b"), tc.node("c")
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Minute)
	defer cancel()

	t.Run("every node lists every node as active", func(t *testing.T) {
		for _, n := range tc.nodes {
			nodes, err := n.c.Nodes(ctx)
			if err != nil {
				t.Fatalf("GET /nodes via %s: %v", n.name, err)
			}
			var states []string
			for _, x := range nodes {
				states = append(states, x.Name+"="+x.State)
			}
			if strings.Join(states, " ") != "a=active b=active c=active" {
				t.Errorf("nodes via %s: %v", n.name, states)
			}
		}
	})

	t.Run("create via A, exec and files via B, WebSocket via C", func(t *testing.T) {
		sbA, err := a.c.Create(ctx, stasis.CreateOptions{Template: "stasis/minimal"})
		if err != nil {
			t.Fatalf("create via a: %v", err)
		}
		defer sbA.Kill(context.Background())
		owner := get(t, a, sbA.ID).Node
		if owner != "a" && owner != "b" && owner != "c" {
			t.Fatalf("sandbox's node = %q, want one of the cluster's", owner)
		}
		// Every node answers for it, and names the same owner.
		for _, n := range tc.nodes {
			if got := get(t, n, sbA.ID); got.Node != owner || got.Status != "active" {
				t.Errorf("via %s: node %q status %q, want %q active", n.name, got.Node, got.Status, owner)
			}
		}
		sbB, err := b.c.Connect(ctx, sbA.ID)
		if err != nil {
			t.Fatalf("connect via b: %v", err)
		}
		if got := run(t, sbB, "echo exec-$((40+2)) via b"); got != "exec-42 via b" {
			t.Errorf("exec via b = %q", got)
		}
		if err := sbB.Files.Write(ctx, "/tmp/from-b.txt", []byte("written through b")); err != nil {
			t.Fatalf("write file via b: %v", err)
		}
		sbC, err := c.c.Connect(ctx, sbA.ID)
		if err != nil {
			t.Fatalf("connect via c: %v", err)
		}
		if got, err := sbC.Files.ReadText(ctx, "/tmp/from-b.txt"); err != nil || got != "written through b" {
			t.Errorf("read via c = %q, %v", got, err)
		}
		sess, err := sbC.Commands.Spawn(ctx, "cat /tmp/from-b.txt; echo; echo ws-$((6*7))", nil)
		if err != nil {
			t.Fatalf("WebSocket spawn via c: %v", err)
		}
		res, err := sess.Wait(ctx)
		if err != nil || res.ExitCode != 0 || res.Stdout != "written through b\nws-42\n" {
			t.Errorf("WebSocket session via c: %+v, %v", res, err)
		}
	})

	t.Run("E2B: create via A, envd and files via B and C, pause via C, connect via B", func(t *testing.T) {
		testE2BAcrossNodes(t, tc)
	})

	t.Run("a template built through A creates sandboxes on the other nodes", func(t *testing.T) {
		tmpl, err := a.c.CreateTemplate(ctx, stasis.TemplateSpec{
			Name: "cluster-tmpl", From: "stasis/minimal",
			Steps: []stasis.BuildStep{stasis.RunStep("echo built-once > /tmp/built")},
		})
		if err != nil {
			t.Fatalf("create template via a: %v", err)
		}
		defer tmpl.Delete(context.Background())
		if _, err := tmpl.WaitUntilReady(ctx, nil); err != nil {
			t.Fatalf("template build: %v", err)
		}
		// Creates are placed on any node; keep going until two nodes other
		// than the one that built it have made one (the first may wait for
		// the template's upload to the object store, inside the create).
		builtOn := map[string]bool{}
		deadline := time.Now().Add(3 * time.Minute)
		for len(builtOn) < 2 && time.Now().Before(deadline) {
			sb, err := a.c.Create(ctx, stasis.CreateOptions{Template: "cluster-tmpl"})
			if err != nil {
				t.Fatalf("create from the template via a: %v", err)
			}
			owner := get(t, a, sb.ID).Node
			if got := run(t, sb, "cat /tmp/built"); got != "built-once" {
				t.Errorf("sandbox from the template on %s: /tmp/built = %q", owner, got)
			}
			sb.Kill(ctx)
			if owner != "a" {
				builtOn[owner] = true
			}
		}
		if len(builtOn) < 2 {
			t.Fatalf("sandboxes from a template built on a landed on %v only; want b and c", builtOn)
		}
	})

	t.Run("draining a node moves nothing new onto it", func(t *testing.T) {
		if _, err := b.c.DrainNode(ctx, "c"); err != nil {
			t.Fatalf("drain c: %v", err)
		}
		defer b.c.ActivateNode(context.Background(), "c")
		for i := range 4 {
			sb, err := c.c.Create(ctx, stasis.CreateOptions{Template: "stasis/minimal"})
			if err != nil {
				t.Fatalf("create %d via c: %v", i, err)
			}
			owner := get(t, c, sb.ID).Node
			sb.Kill(ctx)
			if owner == "c" {
				t.Fatalf("create via the draining node c was placed on c")
			}
		}
		if _, err := a.c.DrainNode(ctx, "nope"); err == nil || !strings.Contains(err.Error(), "not found") {
			t.Errorf("draining an unknown node: %v, want not found", err)
		}
	})

	t.Run("a fork whose children land on other nodes continues the process and files", func(t *testing.T) {
		src, err := a.c.Create(ctx, stasis.CreateOptions{Template: "stasis/minimal"})
		if err != nil {
			t.Fatalf("create via a: %v", err)
		}
		defer a.srv.Do("DELETE", "/sandboxes/"+src.ID, nil, nil)
		owner := tc.node(get(t, a, src.ID).Node)
		via := a // a node other than the source's
		if owner == a {
			via = b
		}
		if err := src.Files.Write(ctx, "/tmp/note.txt", []byte("written before the fork")); err != nil {
			t.Fatalf("write file: %v", err)
		}
		// The count lives in the shell's memory; the file only shows it.
		run(t, src, `sh -c 'i=0; while true; do i=$((i+1)); echo $i > /tmp/count; sleep 0.2; done' >/dev/null 2>&1 & echo $! > /tmp/counter.pid`)
		waitFor(t, "the counter to count", func() (bool, string) {
			n, _ := strconv.Atoi(run(t, src, "cat /tmp/count"))
			return n >= 3, strconv.Itoa(n)
		})
		pid := run(t, src, "cat /tmp/counter.pid")
		if err := via.srv.Do("POST", "/sandboxes/"+src.ID+"/pause", nil, nil); err != nil {
			t.Fatalf("pause via %s: %v", via.name, err)
		}
		waitFor(t, "the snapshot to be portable", func() (bool, string) {
			got := get(t, via, src.ID)
			return got.Pause != nil && got.Pause.Portable, fmt.Sprintf("%+v", got.Pause)
		})
		// The source's node takes no new sandboxes: every child must be
		// made on another node, from the snapshot in the object store.
		if _, err := via.c.DrainNode(ctx, owner.name); err != nil {
			t.Fatalf("drain %s: %v", owner.name, err)
		}
		defer via.c.ActivateNode(context.Background(), owner.name)
		forks, err := via.c.ForkByID(ctx, src.ID, 2)
		for _, f := range forks {
			defer f.Kill(context.Background())
		}
		if err != nil || len(forks) != 2 {
			t.Fatalf("fork via %s: %d sandboxes, %v", via.name, len(forks), err)
		}
		if got := get(t, via, src.ID); got.Status != "paused" || got.Node != owner.name {
			t.Errorf("source after the fork: %s on %q, want paused on %s", got.Status, got.Node, owner.name)
		}
		for i, f := range forks {
			got := get(t, a, f.ID)
			if got.Status != "active" || got.Node == owner.name || got.Node == "" {
				t.Fatalf("fork %d: %s on node %q, want active on a node other than the drained %s", i, got.Status, got.Node, owner.name)
			}
			if !contains(runningOn(t, tc.node(got.Node)), f.ID) {
				t.Errorf("fork %d does not run on its node %s", i, got.Node)
			}
			if got := run(t, f, "cat /tmp/note.txt"); got != "written before the fork" {
				t.Errorf("fork %d: /tmp/note.txt = %q", i, got)
			}
			// The same counter process goes on from where it was paused.
			if got := run(t, f, "cat /tmp/counter.pid"); got != pid {
				t.Errorf("fork %d: counter pid %q, want %q", i, got, pid)
			}
			if got := run(t, f, "kill -0 "+pid+" && echo alive"); got != "alive" {
				t.Errorf("fork %d: the counter process %s is not running: %q", i, pid, got)
			}
			first, _ := strconv.Atoi(run(t, f, "cat /tmp/count"))
			if first < 3 {
				t.Errorf("fork %d: count %d, want it to go on from at least 3 (the memory of the paused process)", i, first)
			}
			waitFor(t, fmt.Sprintf("fork %d's counter to go on", i), func() (bool, string) {
				n, _ := strconv.Atoi(run(t, f, "cat /tmp/count"))
				return n > first, fmt.Sprintf("%d (was %d)", n, first)
			})
		}
		// The copy of the snapshot a node downloaded to make its children
		// is gone once they run (the object store keeps it).
		for _, n := range tc.nodes {
			if n == owner {
				continue
			}
			if left, _ := filepath.Glob(filepath.Join(n.srv.DataDir(), "snapshots", src.ID, "*")); len(left) > 0 {
				t.Errorf("node %s keeps the source's snapshot after the fork: %v", n.name, left)
			}
		}
		// Independent: what one writes, the other does not see.
		for i, f := range forks {
			if err := f.Files.Write(ctx, "/tmp/mine.txt", []byte("fork "+strconv.Itoa(i))); err != nil {
				t.Fatalf("write in fork %d: %v", i, err)
			}
		}
		for i, f := range forks {
			if got, err := f.Files.ReadText(ctx, "/tmp/mine.txt"); err != nil || got != "fork "+strconv.Itoa(i) {
				t.Errorf("fork %d reads /tmp/mine.txt = %q, %v; want its own write", i, got, err)
			}
		}
	})

	t.Run("a fork with every node active: each child runs where GET says, from here or from the object store", func(t *testing.T) {
		src, err := c.c.Create(ctx, stasis.CreateOptions{Template: "stasis/minimal"})
		if err != nil {
			t.Fatalf("create via c: %v", err)
		}
		defer c.srv.Do("DELETE", "/sandboxes/"+src.ID, nil, nil)
		if err := src.Files.Write(ctx, "/tmp/note.txt", []byte("spread")); err != nil {
			t.Fatal(err)
		}
		if err := c.srv.Do("POST", "/sandboxes/"+src.ID+"/pause", nil, nil); err != nil {
			t.Fatalf("pause: %v", err)
		}
		// Not waiting for the upload: children placed on other nodes wait
		// for it inside the fork.
		forks, err := c.c.ForkByID(ctx, src.ID, 4)
		for _, f := range forks {
			defer f.Kill(context.Background())
		}
		if err != nil || len(forks) != 4 {
			t.Fatalf("fork: %d sandboxes, %v", len(forks), err)
		}
		where := map[string]int{}
		for i, f := range forks {
			got := get(t, c, f.ID)
			where[got.Node]++
			if got.Status != "active" || !contains(runningOn(t, tc.node(got.Node)), f.ID) {
				t.Errorf("fork %d: %s, on node %q but not running there", i, got.Status, got.Node)
			}
			if got := run(t, f, "cat /tmp/note.txt"); got != "spread" {
				t.Errorf("fork %d on %s: /tmp/note.txt = %q", i, get(t, c, f.ID).Node, got)
			}
		}
		t.Logf("4 children placed on %v (source on %s)", where, get(t, c, src.ID).Node)
	})

	t.Run("a fork whose children's nodes cannot restore them says so and runs none of them", func(t *testing.T) {
		src, err := b.c.Create(ctx, stasis.CreateOptions{Name: "fork-fails", Template: "stasis/minimal"})
		if err != nil {
			t.Fatalf("create via b: %v", err)
		}
		defer b.srv.Do("DELETE", "/sandboxes/"+src.ID, nil, nil)
		owner := tc.node(get(t, b, src.ID).Node)
		if err := b.srv.Do("POST", "/sandboxes/"+src.ID+"/pause", nil, nil); err != nil {
			t.Fatalf("pause: %v", err)
		}
		waitFor(t, "the snapshot to be portable", func() (bool, string) {
			got := get(t, b, src.ID)
			return got.Pause != nil && got.Pause.Portable, fmt.Sprintf("%+v", got.Pause)
		})
		if _, err := b.c.DrainNode(ctx, owner.name); err != nil {
			t.Fatalf("drain %s: %v", owner.name, err)
		}
		defer b.c.ActivateNode(context.Background(), owner.name)
		var others []*node
		for _, n := range tc.nodes {
			if n != owner {
				n.srv.ArmFaults(faultinject.Rule{Op: faultinject.OpRestore, Action: faultinject.Fail})
				defer n.srv.ArmFaults()
				others = append(others, n)
			}
		}
		err = others[0].srv.Do("POST", "/sandboxes/"+src.ID+"/fork", map[string]int{"count": 2}, nil)
		var he *testenv.HTTPError
		if !errors.As(err, &he) || he.Status != 503 || !strings.Contains(he.Body, "fork_incomplete") ||
			!strings.Contains(he.Body, "were not made") || !strings.Contains(he.Body, "injected fault") {
			t.Fatalf("fork with every other node failing restores: %v; want 503 fork_incomplete naming the nodes' error", err)
		}
		// The children the nodes tried are failed records, like a create
		// that failed, and run nowhere.
		var list []sandboxJSON
		if err := a.srv.Do("GET", "/sandboxes", nil, &list); err != nil {
			t.Fatal(err)
		}
		tried := 0
		for _, sb := range list {
			if !strings.HasPrefix(sb.Name, "fork-fails-fork-") {
				continue
			}
			full := get(t, a, sb.ID)
			tried++
			if full.Status != "failed" || full.Node == owner.name {
				t.Errorf("child %s: %s on %s, want failed on a node other than %s", sb.ID, full.Status, full.Node, owner.name)
			}
			for _, n := range tc.nodes {
				if contains(runningOn(t, n), sb.ID) {
					t.Errorf("failed child %s runs on node %s", sb.ID, n.name)
				}
			}
			b.srv.Do("DELETE", "/sandboxes/"+sb.ID, nil, nil)
		}
		if tried == 0 {
			t.Errorf("no child of the failed fork was recorded: the fault cannot have been what failed it")
		}
		// Disarmed, the same source forks onto another node.
		for _, n := range others {
			n.srv.ArmFaults()
		}
		forks, err := others[0].c.ForkByID(ctx, src.ID, 1)
		for _, f := range forks {
			defer f.Kill(context.Background())
		}
		if err != nil || len(forks) != 1 {
			t.Fatalf("fork after the faults were cleared: %d, %v", len(forks), err)
		}
		if got := get(t, a, forks[0].ID); got.Status != "active" || got.Node == owner.name {
			t.Errorf("fork after the faults: %s on %s", got.Status, got.Node)
		}
	})

	t.Run("pause on A, kill -9 A, two resumes via B and C: restored once, processes continue, A's copy stays stopped", func(t *testing.T) {
		id := tc.createOn(t, ctx, "a", b)
		defer b.srv.Do("DELETE", "/sandboxes/"+id, nil, nil)
		sb, err := b.c.Connect(ctx, id)
		if err != nil {
			t.Fatal(err)
		}
		run(t, sb, `sh -c 'i=0; while true; do i=$((i+1)); echo $i > /tmp/count; sleep 0.2; done' >/dev/null 2>&1 & echo $! > /tmp/counter.pid`)
		waitFor(t, "the counter to count", func() (bool, string) {
			n, _ := strconv.Atoi(run(t, sb, "cat /tmp/count"))
			return n >= 3, strconv.Itoa(n)
		})
		pid := run(t, sb, "cat /tmp/counter.pid")
		if err := a.srv.Do("POST", "/sandboxes/"+id+"/pause", nil, nil); err != nil {
			t.Fatalf("pause on a: %v", err)
		}
		waitFor(t, "the snapshot to be portable", func() (bool, string) {
			got := get(t, b, id)
			return got.Pause != nil && got.Pause.Portable, fmt.Sprintf("%+v", got.Pause)
		})
		a.srv.Kill()
		waitFor(t, "node a to be declared lost", func() (bool, string) {
			nodes, err := b.c.Nodes(ctx)
			for _, n := range nodes {
				if n.Name == "a" {
					return n.State == stasis.NodeLost, n.State
				}
			}
			return false, fmt.Sprint(err)
		})
		// Two resumes at once, through two nodes.
		var wg sync.WaitGroup
		errs := make([]error, 2)
		for i, via := range []*node{b, c} {
			wg.Add(1)
			go func() {
				defer wg.Done()
				errs[i] = via.srv.Do("POST", "/sandboxes/"+id+"/resume", nil, nil)
			}()
		}
		wg.Wait()
		ok := 0
		for i, err := range errs {
			var he *testenv.HTTPError
			switch {
			case err == nil:
				ok++
			case errors.As(err, &he) && he.Status == 409 && strings.Contains(he.Body, "resumed_elsewhere"):
			default:
				t.Errorf("resume %d: %v", i, err)
			}
		}
		if ok == 0 {
			t.Fatalf("neither resume succeeded: %v", errs)
		}
		got := get(t, b, id)
		if got.Status != "active" || (got.Node != "b" && got.Node != "c") {
			t.Fatalf("after the resumes: status %q on node %q, want active on b or c", got.Status, got.Node)
		}
		other := c
		if got.Node == "c" {
			other = b
		}
		if contains(runningOn(t, other), id) {
			t.Errorf("sandbox %s runs on both b and c: restored twice", id)
		}
		if !contains(runningOn(t, tc.node(got.Node)), id) {
			t.Errorf("sandbox %s does not run on its owner %s", id, got.Node)
		}
		sb, err = b.c.Connect(ctx, id)
		if err != nil {
			t.Fatal(err)
		}
		before, _ := strconv.Atoi(run(t, sb, "cat /tmp/count"))
		if got := run(t, sb, "kill -0 "+pid+" && echo alive"); got != "alive" {
			t.Errorf("the counter process %s did not survive the move: %q", pid, got)
		}
		waitFor(t, "the counter to go on counting after the move", func() (bool, string) {
			n, _ := strconv.Atoi(run(t, sb, "cat /tmp/count"))
			return n > before, fmt.Sprintf("%d (was %d)", n, before)
		})
		// a comes back: its copy (a paused snapshot) is not run, and
		// requests via a go to the new owner.
		a.srv.Restart()
		if contains(runningOn(t, a), id) {
			t.Errorf("node a runs its stale copy of %s after coming back", id)
		}
		if via := get(t, a, id); via.Node != got.Node || via.Status != "active" {
			t.Errorf("via a after its return: node %q status %q, want %q active", via.Node, via.Status, got.Node)
		}
		sbA, err := a.c.Connect(ctx, id)
		if err != nil {
			t.Fatal(err)
		}
		if got := run(t, sbA, "kill -0 "+pid+" && echo alive"); got != "alive" {
			t.Errorf("exec via a after its return: %q", got)
		}
	})

	t.Run("a lost node's paused sandbox is auto-deleted on time, once, by another node", func(t *testing.T) {
		testLostNodesAutoDelete(t, tc)
	})

	t.Run("kill -9 the owner: its active sandbox fails with a reason", func(t *testing.T) {
		victim := tc.createOn(t, ctx, "c", a)
		defer a.srv.Do("DELETE", "/sandboxes/"+victim, nil, nil)
		c.srv.Kill()
		// Until c is declared lost, requests for its sandbox fail with 502
		// node_unreachable; then a answers itself.
		waitFor(t, "the killed node to be declared lost and its sandbox failed", func() (bool, string) {
			var sb sandboxJSON
			if err := a.srv.Do("GET", "/sandboxes/"+victim, nil, &sb); err != nil {
				return false, err.Error()
			}
			return sb.Status == "failed" && strings.Contains(sb.Error, "node c was lost"), sb.Status + ": " + sb.Error
		})
		nodes, _ := a.c.Nodes(ctx)
		for _, n := range nodes {
			if n.Name == "c" && n.State != stasis.NodeLost {
				t.Errorf("node c state %q after kill -9, want lost", n.State)
			}
		}
		c.srv.Restart()
		waitFor(t, "node c to rejoin", func() (bool, string) {
			nodes, err := a.c.Nodes(ctx)
			for _, n := range nodes {
				if n.Name == "c" {
					return n.State == stasis.NodeActive, n.State
				}
			}
			return false, fmt.Sprint(err)
		})
		// c had left the sandbox running (kill -9 does not stop runsc); the
		// sandbox failed meanwhile, so c stopped it when it came back.
		if ids := runningOn(t, c); contains(ids, victim) {
			t.Errorf("node c still runs failed sandbox %s after rejoining: %v", victim, ids)
		}
	})
}

// createOn creates sandboxes via `via` until one lands on node want
// (placement is random among the least loaded), deleting the others.
func (tc *testCluster) createOn(t *testing.T, ctx context.Context, want string, via *node) string {
	t.Helper()
	// Placement is by load as the nodes last reported it (heartbeats), so
	// a node can lose every draw until its next heartbeat: try for a while,
	// not a fixed number of times.
	start := time.Now()
	tries := 0
	for ; tries < 20 || time.Since(start) < time.Minute; tries++ {
		sb, err := via.c.Create(ctx, stasis.CreateOptions{Template: "stasis/minimal"})
		if err != nil {
			t.Fatalf("create via %s: %v", via.name, err)
		}
		if get(t, via, sb.ID).Node == want {
			return sb.ID
		}
		sb.Kill(ctx)
	}
	var nodes any
	via.srv.Do("GET", "/nodes", nil, &nodes)
	t.Fatalf("no create landed on node %s in %d tries (%s); the nodes: %v", want, tries, time.Since(start).Round(time.Second), nodes)
	return ""
}

// runningOn lists the sandbox IDs node n's runsc still runs (runsc list
// over the node's runsc root, keeping those whose process lives).
func runningOn(t *testing.T, n *node) []string {
	t.Helper()
	runsc := os.Getenv("STASIS_RUNSC")
	if runsc == "" {
		runsc = filepath.Join(testenv.RepoRoot(), ".cache", "runsc", "bin", "runsc")
	}
	out, err := exec.Command(runsc, "--root", filepath.Join(n.srv.DataDir(), "runsc"), "list", "-format=json").Output()
	if err != nil {
		t.Fatalf("runsc list on node %s: %v", n.name, err)
	}
	var list []struct {
		ID     string `json:"id"`
		Pid    int    `json:"pid"`
		Status string `json:"status"`
	}
	if err := json.Unmarshal(out, &list); err != nil {
		t.Fatalf("runsc list: %v: %s", err, out)
	}
	var ids []string
	for _, c := range list {
		if c.Status == "running" && c.Pid > 0 && syscall.Kill(c.Pid, 0) == nil {
			ids = append(ids, c.ID)
		}
	}
	return ids
}

func contains(list []string, s string) bool {
	for _, x := range list {
		if x == s {
			return true
		}
	}
	return false
}
