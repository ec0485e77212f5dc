package cluster

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	stasis "github.com/stasis-sandbox/stasis"
	"github.com/stasis-sandbox/stasis/internal/testenv"
)

// TestClusterFailures: the object store and PostgreSQL fail under a real
// three-node cluster, and the cluster loses nothing and recovers by itself.
func TestClusterFailures(t *testing.T) {
	tc := startCluster(t, 3)
	a, b, c := tc.node("a"), tc.node("b"), tc.node("c")
	ctx, cancel := context.WithTimeout(context.Background(), 15*time.Minute)
	defer cancel()

	t.Run("an upload interrupted halfway: resumable on its owner, not elsewhere until the upload completes", func(t *testing.T) {
		id := tc.createOn(t, ctx, "a", b)
		defer b.srv.Do("DELETE", "/sandboxes/"+id, nil, nil)
		sb, err := b.c.Connect(ctx, id)
		if err != nil {
			t.Fatal(err)
		}
		pid := startCounter(t, sb)
		// Ballast, so that the snapshot takes a while to upload.
		run(t, sb, "dd if=/dev/urandom of=/tmp/ballast bs=1M count=256 2>/dev/null && echo ok")
		if err := a.srv.Do("POST", "/sandboxes/"+id+"/pause", nil, nil); err != nil {
			t.Fatalf("pause on a: %v", err)
		}
		var last uploadJSON
		waitForFast(t, "the upload to start", func() (bool, string) {
			last = getUpload(t, c, id)
			if last.portable() {
				t.Fatalf("the upload completed before it could be interrupted: %+v", last.Pause)
			}
			return last.uploadState() == "uploading", last.String()
		})
		tc.s3.Stop()
		if m := manifestsOf(t, tc.s3, id); len(m) != 0 {
			t.Fatalf("the store holds a manifest of the interrupted upload: %v", m)
		}
		waitFor(t, "the interrupted upload to say it retries", func() (bool, string) {
			last = getUpload(t, c, id)
			return last.uploadState() == "failed" && strings.Contains(last.Pause.Upload.Detail, "retrying in"), last.String()
		})
		if last.Status != "paused" || last.Node != "a" || !last.Pause.Durable || last.portable() {
			t.Fatalf("while the store is down: %s; want paused on a, durable, not portable", last)
		}

		// Its owner drained, a resume would have to restore it elsewhere:
		// refused, and nothing changes.
		if _, err := b.c.DrainNode(ctx, "a"); err != nil {
			t.Fatalf("drain a: %v", err)
		}
		defer b.c.ActivateNode(context.Background(), "a")
		err = c.srv.Do("POST", "/sandboxes/"+id+"/resume", nil, nil)
		wantAPIError(t, "resume elsewhere while not portable", err, 409, "snapshot_not_portable", "not in the object store yet (upload failed: attempt")
		if got := getUpload(t, b, id); got.Status != "paused" || got.Node != "a" {
			t.Fatalf("after the refused resume: %s; want still paused on a", got)
		}
		for _, n := range tc.nodes {
			if contains(runningOn(t, n), id) {
				t.Fatalf("the refused resume left the sandbox running on %s", n.name)
			}
		}

		// On its owner it resumes meanwhile, from its local snapshot.
		if _, err := b.c.ActivateNode(ctx, "a"); err != nil {
			t.Fatalf("activate a: %v", err)
		}
		if err := c.srv.Do("POST", "/sandboxes/"+id+"/resume", nil, nil); err != nil {
			t.Fatalf("resume on the owner while not portable: %v", err)
		}
		if got := getUpload(t, b, id); got.Status != "active" || got.Node != "a" {
			t.Fatalf("after the resume on the owner: %s; want active on a", got)
		}
		counterGoesOn(t, b, id, pid)

		// Once the store is back, the next pause's upload completes, and
		// the sandbox resumes elsewhere with its processes.
		tc.s3.Start()
		if err := b.srv.Do("POST", "/sandboxes/"+id+"/pause", nil, nil); err != nil {
			t.Fatalf("pause via b: %v", err)
		}
		waitFor(t, "the snapshot to be portable", func() (bool, string) {
			last = getUpload(t, c, id)
			return last.portable() && last.uploadState() == "portable", last.String()
		})
		resumeAway(t, tc, ctx, id, "a", pid)
	})

	t.Run("the object store stopped during a pause, then started again", func(t *testing.T) {
		id := tc.createOn(t, ctx, "b", c)
		defer c.srv.Do("DELETE", "/sandboxes/"+id, nil, nil)
		sb, err := c.c.Connect(ctx, id)
		if err != nil {
			t.Fatal(err)
		}
		pid := startCounter(t, sb)
		tc.s3.Stop()
		if err := a.srv.Do("POST", "/sandboxes/"+id+"/pause", nil, nil); err != nil {
			t.Fatalf("pause with the object store down: %v", err)
		}
		var last uploadJSON
		waitFor(t, "the status to say the upload retries", func() (bool, string) {
			last = getUpload(t, c, id)
			return last.uploadState() == "failed" && strings.Contains(last.Pause.Upload.Detail, "retrying in"), last.String()
		})
		if last.Status != "paused" || last.Node != "b" || !last.Pause.Durable || last.portable() {
			t.Fatalf("pause with the store down: %s; want paused on b, durable (complete locally), not portable", last)
		}
		// Nothing but the store coming back makes it portable.
		tc.s3.Start()
		waitFor(t, "the upload to complete by itself", func() (bool, string) {
			last = getUpload(t, a, id)
			return last.portable() && last.uploadState() == "portable", last.String()
		})
		if m := manifestsOf(t, tc.s3, id); len(m) != 1 {
			t.Fatalf("portable, but the store holds manifests %v; want one", m)
		}
		resumeAway(t, tc, ctx, id, "b", pid)
	})

	t.Run("PostgreSQL restarted under load: no lost or duplicated sandboxes, nodes recover by themselves", func(t *testing.T) {
		load := startLoad(t, tc)
		defer load.cleanup(t, tc)
		load.waitIterations(t, 3) // the load runs on every node before the outage
		tc.pg.Stop()
		// Longer than the nodes' lease: no node can heartbeat meanwhile.
		time.Sleep(lease + 2*time.Second)
		tc.pg.Start()
		restarted := load.iterations()
		load.waitIterations(t, restarted+3) // and goes on after it
		load.stop()
		load.check(t, tc)

		for _, n := range tc.nodes {
			nodes, err := n.c.Nodes(ctx)
			if err != nil {
				t.Fatalf("GET /nodes via %s after the restart: %v", n.name, err)
			}
			var states []string
			for _, x := range nodes {
				states = append(states, x.Name+"="+x.State)
			}
			if strings.Join(states, " ") != "a=active b=active c=active" {
				t.Errorf("nodes via %s after PostgreSQL's restart: %v; want all active", n.name, states)
			}
		}
	})
}

// uploadJSON is the part of GET /sandboxes/{id} about the snapshot's upload.
type uploadJSON struct {
	Status string `json:"status"`
	Node   string `json:"node"`
	Pause  *struct {
		Durable  bool  `json:"durable"`
		Portable *bool `json:"portable"`
		Upload   *struct {
			State  string `json:"state"`
			Detail string `json:"detail"`
		} `json:"upload"`
	} `json:"pause"`
}

func (u uploadJSON) portable() bool {
	return u.Pause != nil && u.Pause.Portable != nil && *u.Pause.Portable
}

func (u uploadJSON) uploadState() string {
	if u.Pause == nil || u.Pause.Upload == nil {
		return "(none)"
	}
	return u.Pause.Upload.State
}

func (u uploadJSON) String() string {
	if u.Pause == nil || u.Pause.Upload == nil {
		return fmt.Sprintf("%s on %s, no pause.upload", u.Status, u.Node)
	}
	return fmt.Sprintf("%s on %s, durable %v portable %v upload %q (%s)", u.Status, u.Node,
		u.Pause.Durable, u.portable(), u.Pause.Upload.State, u.Pause.Upload.Detail)
}

func getUpload(t *testing.T, via *node, id string) uploadJSON {
	t.Helper()
	return getAs[uploadJSON](t, via, id)
}

// waitForFast is waitFor polling as fast as the API answers, to see a
// state that lasts a moment.
func waitForFast(t *testing.T, what string, cond func() (bool, string)) {
	t.Helper()
	pollUntil(t, what, 0, cond)
}

// wantAPIError fails unless err is an HTTP answer with status, error code
// and a message containing msg.
func wantAPIError(t *testing.T, what string, err error, status int, code, msg string) {
	t.Helper()
	var he *testenv.HTTPError
	if !errors.As(err, &he) || he.Status != status || !strings.Contains(he.Body, `"code":"`+code+`"`) || !strings.Contains(he.Body, msg) {
		t.Fatalf("%s: %v; want %d %s saying %q", what, err, status, code, msg)
	}
}

// manifestsOf lists the manifests of sandbox id's snapshots in the S3
// server's directory.
func manifestsOf(t *testing.T, s3 *testenv.S3, id string) []string {
	t.Helper()
	var found []string
	err := filepath.WalkDir(s3.Dir(), func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		if !d.IsDir() && d.Name() == "manifest.json" && strings.Contains(p, "/"+id+"/") {
			found = append(found, p)
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	return found
}

// startCounter starts a process in sb counting into /tmp/count and returns
// its PID.
func startCounter(t *testing.T, sb *stasis.Sandbox) string {
	t.Helper()
	run(t, sb, `sh -c 'i=0; while true; do i=$((i+1)); echo $i > /tmp/count; sleep 0.2; done' >/dev/null 2>&1 & echo $! > /tmp/counter.pid`)
	waitFor(t, "the counter to count", func() (bool, string) {
		n, _ := strconv.Atoi(run(t, sb, "cat /tmp/count"))
		return n >= 2, strconv.Itoa(n)
	})
	return run(t, sb, "cat /tmp/counter.pid")
}

// counterGoesOn checks, through via, that the counter process pid still
// lives in sandbox id and counts on.
func counterGoesOn(t *testing.T, via *node, id, pid string) {
	t.Helper()
	sb, err := via.c.Connect(context.Background(), id)
	if err != nil {
		t.Fatal(err)
	}
	before, _ := strconv.Atoi(run(t, sb, "cat /tmp/count"))
	if got := run(t, sb, "kill -0 "+pid+" && echo alive"); got != "alive" {
		t.Fatalf("the counter process %s is gone: %q", pid, got)
	}
	waitFor(t, "the counter to go on counting", func() (bool, string) {
		n, _ := strconv.Atoi(run(t, sb, "cat /tmp/count"))
		return n > before, fmt.Sprintf("%d (was %d)", n, before)
	})
}

// resumeAway drains owner, resumes paused sandbox id through another node
// (so it must restore elsewhere from the object store), checks that its
// counter process goes on there and that owner runs no copy, and
// reactivates owner.
func resumeAway(t *testing.T, tc *testCluster, ctx context.Context, id, owner, pid string) {
	t.Helper()
	var via *node
	for _, n := range tc.nodes {
		if n.name != owner {
			via = n
		}
	}
	if _, err := via.c.DrainNode(ctx, owner); err != nil {
		t.Fatalf("drain %s: %v", owner, err)
	}
	defer via.c.ActivateNode(context.Background(), owner)
	if err := via.srv.Do("POST", "/sandboxes/"+id+"/resume", nil, nil); err != nil {
		t.Fatalf("resume via %s with %s drained: %v", via.name, owner, err)
	}
	got := getUpload(t, via, id)
	if got.Status != "active" || got.Node == owner || got.Node == "" {
		t.Fatalf("after the resume away from %s: %s", owner, got)
	}
	counterGoesOn(t, via, id, pid)
	if contains(runningOn(t, tc.node(owner)), id) {
		t.Errorf("%s still runs sandbox %s, which moved to %s", owner, id, got.Node)
	}
}

// load creates, execs in, pauses and resumes sandboxes through every node
// at once, recording what each create was answered.
type load struct {
	done chan struct{}
	wg   sync.WaitGroup

	mu         sync.Mutex
	iters      int
	created    map[string]string // name → ID, for creates answered 201
	refused    []string          // names of creates answered with an error
	unexpected []string          // answers other than success or 503 store_unavailable
}

const loadWorkers = 3

func startLoad(t *testing.T, tc *testCluster) *load {
	l := &load{done: make(chan struct{}), created: map[string]string{}}
	tag := fmt.Sprintf("%d", time.Now().UnixNano()%1e6)
	for w := range loadWorkers {
		l.wg.Add(1)
		go func() {
			defer l.wg.Done()
			for i := 0; ; i++ {
				select {
				case <-l.done:
					return
				default:
				}
				if !l.iteration(tc, fmt.Sprintf("pgload-%s-%d-%d", tag, w, i), w+i) {
					time.Sleep(500 * time.Millisecond) // the store is down: retry soon
					continue
				}
				l.mu.Lock()
				l.iters++
				l.mu.Unlock()
			}
		}()
	}
	return l
}

// iteration creates sandbox name through one node, then runs a command in
// it, pauses it and resumes it through the others. It reports whether the
// create succeeded.
func (l *load) iteration(tc *testCluster, name string, k int) bool {
	via := func(j int) *node { return tc.nodes[(k+j)%len(tc.nodes)] }
	var sb struct {
		ID string `json:"id"`
	}
	err := via(0).srv.Do("POST", "/sandboxes", map[string]any{"name": name, "from_template": "stasis/minimal",
		"metadata": map[string]string{"pgload": name}}, &sb)
	l.mu.Lock()
	if err == nil {
		l.created[name] = sb.ID
	} else {
		l.refused = append(l.refused, name)
	}
	l.mu.Unlock()
	l.note("create "+name+" via "+via(0).name, err)
	if err != nil {
		return false
	}
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	if s, err := via(1).c.Connect(ctx, sb.ID); err == nil {
		_, err = s.Commands.Run(ctx, "echo "+name+" > /tmp/name", nil)
		l.note("exec in "+name+" via "+via(1).name, err)
	}
	l.note("pause "+name+" via "+via(2).name, via(2).srv.Do("POST", "/sandboxes/"+sb.ID+"/pause", nil, nil))
	l.note("resume "+name+" via "+via(0).name, via(0).srv.Do("POST", "/sandboxes/"+sb.ID+"/resume", nil, nil))
	return true
}

// note records an answer that is neither a success nor the outage's 503
// store_unavailable.
func (l *load) note(what string, err error) {
	if err == nil {
		return
	}
	var he *testenv.HTTPError
	if errors.As(err, &he) && he.Status == 503 && strings.Contains(he.Body, `"store_unavailable"`) {
		return
	}
	var ae *stasis.APIError
	if errors.As(err, &ae) && ae.StatusCode == 503 {
		return
	}
	l.mu.Lock()
	l.unexpected = append(l.unexpected, fmt.Sprintf("%s: %v", what, err))
	l.mu.Unlock()
}

func (l *load) iterations() int {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.iters
}

func (l *load) waitIterations(t *testing.T, n int) {
	t.Helper()
	deadline := time.Now().Add(5 * time.Minute)
	for l.iterations() < n {
		if time.Now().After(deadline) {
			t.Fatalf("the load made %d iterations, want %d", l.iterations(), n)
		}
		time.Sleep(100 * time.Millisecond)
	}
}

func (l *load) stop() {
	close(l.done)
	l.wg.Wait()
}

// listed is a sandbox as GET /sandboxes lists it.
type listed struct {
	ID       string            `json:"id"`
	Name     string            `json:"name"`
	Status   string            `json:"status"`
	Node     string            `json:"node"`
	Error    string            `json:"error"`
	Metadata map[string]string `json:"metadata"`
}

// loadSandboxes lists the load's sandboxes through via.
func loadSandboxes(t *testing.T, via *node) []listed {
	t.Helper()
	var all, mine []listed
	if err := via.srv.Do("GET", "/sandboxes", nil, &all); err != nil {
		t.Fatalf("list via %s: %v", via.name, err)
	}
	for _, s := range all {
		if s.Metadata["pgload"] != "" {
			mine = append(mine, s)
		}
	}
	return mine
}

// check asserts what the product guarantees after the outage (see
// docs/CLUSTER.md, "What is and is not guaranteed"): every sandbox whose
// create was answered 201 exists exactly once, settles as active or paused
// on one node, and runs commands; a create answered with an error left
// no sandbox behind.
func (l *load) check(t *testing.T, tc *testCluster) {
	t.Helper()
	t.Logf("creates answered 201: %d, refused: %d", len(l.created), len(l.refused))
	if len(l.refused) == 0 {
		t.Errorf("no create was refused: the outage did not happen under load")
	}
	for _, u := range l.unexpected {
		t.Errorf("unexpected answer under the outage: %s", u)
	}
	var final []listed
	waitFor(t, "every sandbox to settle as active or paused", func() (bool, string) {
		final = loadSandboxes(t, tc.nodes[0])
		for _, s := range final {
			if s.Status != "active" && s.Status != "paused" {
				return false, fmt.Sprintf("%s (%s) is %s: %s", s.Name, s.ID, s.Status, s.Error)
			}
		}
		return true, ""
	})
	for _, n := range tc.nodes[1:] {
		if got := loadSandboxes(t, n); !sameListing(got, final) {
			t.Errorf("node %s lists %v, node a %v", n.name, got, final)
		}
	}
	byName := map[string][]listed{}
	for _, s := range final {
		byName[s.Metadata["pgload"]] = append(byName[s.Metadata["pgload"]], s)
	}
	for name, id := range l.created {
		got := byName[name]
		if len(got) != 1 || got[0].ID != id {
			t.Errorf("create %s answered 201 with %s; the cluster has %v", name, id, got)
		}
	}
	for _, name := range l.refused {
		if got := byName[name]; len(got) != 0 {
			t.Errorf("create %s was refused, yet the cluster has %v", name, got)
		}
	}
	running := map[string][]string{}
	for _, n := range tc.nodes {
		for _, id := range runningOn(t, n) {
			running[id] = append(running[id], n.name)
		}
	}
	for _, s := range final {
		switch nodes := running[s.ID]; {
		case len(nodes) > 1:
			t.Errorf("%s runs on %v", s.Name, nodes)
		case s.Status == "active" && (len(nodes) != 1 || nodes[0] != s.Node):
			t.Errorf("%s is active on %s but runs on %v", s.Name, s.Node, nodes)
		case s.Status == "paused" && len(nodes) == 1 && nodes[0] != s.Node:
			t.Errorf("%s is paused on %s but runs on %v", s.Name, s.Node, nodes)
		}
	}
	// And each one works: a command runs (resuming the paused ones).
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	for i, s := range final {
		via := tc.nodes[i%len(tc.nodes)]
		sb, err := via.c.Connect(ctx, s.ID)
		if err != nil {
			t.Errorf("connect to %s via %s: %v", s.Name, via.name, err)
			continue
		}
		res, err := sb.Commands.Run(ctx, "echo alive", nil)
		if err != nil || strings.TrimSpace(res.Stdout) != "alive" {
			t.Errorf("exec in %s via %s after the outage: %+v, %v", s.Name, via.name, res, err)
		}
	}
}

func sameListing(x, y []listed) bool {
	key := func(l []listed) string {
		var s []string
		for _, v := range l {
			s = append(s, v.ID+"/"+v.Status+"/"+v.Node)
		}
		sort.Strings(s)
		return strings.Join(s, " ")
	}
	return key(x) == key(y)
}

func (l *load) cleanup(t *testing.T, tc *testCluster) {
	select {
	case <-l.done:
	default:
		l.stop()
	}
	var all []listed
	if err := tc.nodes[0].srv.Do("GET", "/sandboxes", nil, &all); err != nil {
		return
	}
	for _, s := range all {
		if s.Metadata["pgload"] != "" {
			tc.nodes[0].srv.Do("DELETE", "/sandboxes/"+s.ID, nil, nil)
		}
	}
}
