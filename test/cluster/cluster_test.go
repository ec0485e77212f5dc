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
}

// startCluster starts PostgreSQL, versitygw and n stasisd nodes sharing
// them. All nodes share the node key (agent tokens must survive a move)
// and the secrets key.
func startCluster(t *testing.T, n int) *testCluster {
	t.Helper()
	testenv.RequireRoot(t)
	pg := testenv.StartPostgres(t)
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
	tc := &testCluster{}
	for i := range n {
		name := string(rune('a' + i))
		srv := testenv.StartServer(t,
			testenv.WithArgs("--database-url", pg, "--snapshot-url", s3.URL(prefix),
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
	Status string `json:"status"`
	Node   string `json:"node"`
	Error  string `json:"error"`
	Pause  *struct {
		Portable bool `json:"portable"`
	} `json:"pause"`
}

func get(t *testing.T, via *node, id string) sandboxJSON {
	t.Helper()
	var sb sandboxJSON
	if err := via.srv.Do("GET", "/sandboxes/"+id, nil, &sb); err != nil {
		t.Fatalf("GET /sandboxes/%s via %s: %v", id, via.name, err)
	}
	return sb
}

// waitFor polls cond until it holds or a generous deadline passes (the
// machine is shared and slow; nothing here is a timing assertion).
func waitFor(t *testing.T, what string, cond func() (bool, string)) {
	t.Helper()
	deadline := time.Now().Add(2 * time.Minute)
	var last string
	for time.Now().Before(deadline) {
		var ok bool
		if ok, last = cond(); ok {
			return
		}
		time.Sleep(200 * time.Millisecond)
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
	for range 20 {
		sb, err := via.c.Create(ctx, stasis.CreateOptions{Template: "stasis/minimal"})
		if err != nil {
			t.Fatalf("create via %s: %v", via.name, err)
		}
		if get(t, via, sb.ID).Node == want {
			return sb.ID
		}
		sb.Kill(ctx)
	}
	t.Fatalf("no create landed on node %s in 20 tries", want)
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
