package sandbox

import (
	"context"
	"fmt"
	"maps"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/stasis-sandbox/stasis/internal/agentclient"
	"github.com/stasis-sandbox/stasis/internal/objstore"
	"github.com/stasis-sandbox/stasis/internal/snapshot"
	"github.com/stasis-sandbox/stasis/internal/store"
)

// MaxForks bounds one fork request.
const MaxForks = 100

// Created is a new sandbox with its first access token.
type Created struct {
	Sandbox *store.Sandbox
	Token   string
}

// origin is a committed snapshot that new sandboxes can start from: a
// paused sandbox's, or a template's.
type origin struct {
	dir        string // committed snapshot
	agentToken string // the agent secret inside the snapshot's memory
}

// Fork creates count independent sandboxes from a paused sandbox's snapshot,
// all on this node. Each continues the same process state with its own ID,
// network link, tokens and writable filesystem; from then on they diverge.
func (s *Service) Fork(ctx context.Context, teamID, id string, count int) ([]Created, error) {
	return s.ForkAcross(ctx, teamID, id, count, nil)
}

// ForkPeers reaches the other nodes of a cluster on behalf of one fork
// request, as its client: they check its credentials and team themselves.
type ForkPeers interface {
	// Place picks a node, by name, for each of count new sandboxes of
	// memMiB, as placement does for creates.
	Place(ctx context.Context, memMiB int64, count int) ([]string, error)
	// Fork asks node to make children of paused sandbox id there, from its
	// snapshot in the object store, and returns the access tokens of those
	// it made by ID, with an error if it did not make them all. The tokens
	// are nil when node's answer was lost (it may have made some).
	Fork(ctx context.Context, node, id string, children []ForkChild) (map[string]string, error)
	// Delete deletes sandbox id through node (one whose Fork answer was
	// lost, so that no child of an unknown fate stays behind).
	Delete(ctx context.Context, node, id string) error
}

// ForkChild is a child of a fork that another node is asked to make: the
// node that places it chooses its ID, so it can find it again, and its
// position, which names it.
type ForkChild struct {
	ID    string `json:"id"`
	Index int    `json:"index"`
}

// ForkAcross is Fork with each child placed by peers, as creates are
// (nil: all here). Children placed here restore the source's snapshot
// locally; the others are made by their nodes from its portable copy in
// the object store. Without an object store every child is made here.
func (s *Service) ForkAcross(ctx context.Context, teamID, id string, count int, peers ForkPeers) ([]Created, error) {
	if count < 1 || count > MaxForks {
		return nil, invalid("count must be between 1 and %d", MaxForks)
	}
	children := make([]ForkChild, count)
	for i := range children {
		children[i] = ForkChild{ID: store.NewID(), Index: i + 1}
	}
	return s.fork(ctx, teamID, id, children, peers)
}

// ForkHere makes the given children of paused sandbox id on this node: a
// fork request's share that another node placed here.
func (s *Service) ForkHere(ctx context.Context, teamID, id string, children []ForkChild) ([]Created, error) {
	if len(children) < 1 || len(children) > MaxForks {
		return nil, invalid("children: between 1 and %d", MaxForks)
	}
	for _, c := range children {
		if !store.IsID(c.ID) || c.Index < 1 || c.Index > MaxForks {
			return nil, invalid("children: bad child %q (index %d)", Shorten(c.ID), c.Index)
		}
	}
	return s.fork(ctx, teamID, id, children, nil)
}

func (s *Service) fork(ctx context.Context, teamID, id string, children []ForkChild, peers ForkPeers) ([]Created, error) {
	if err := s.checkRoom(); err != nil {
		return nil, err
	}
	if _, err := s.Get(ctx, teamID, id); err != nil {
		return nil, err
	}
	b := s.box(id)
	b.mu.Lock()
	defer b.mu.Unlock() // the source's snapshot must not go away meanwhile
	src, err := s.Get(ctx, teamID, id)
	if err != nil {
		return nil, err
	}
	if src.Status != store.StatusPaused {
		return nil, newErr(ErrConflict, "invalid_state", "sandbox %s is %s; pause it first, forks start from its snapshot", id, src.Status)
	}
	here, elsewhere := s.placeForks(ctx, src, children, peers)
	var notPortable error // why the children placed elsewhere cannot be made
	if len(elsewhere) > 0 {
		if src, notPortable = s.awaitPortable(ctx, b, src); src == nil {
			return nil, notPortable
		}
	}
	var out []Created
	if len(here) > 0 {
		o, done, err := s.forkOrigin(ctx, b, src)
		if err != nil {
			return nil, err
		}
		defer done()
		for _, child := range here {
			sb := like(src, forkName(src, child.Index))
			sb.ID = child.ID
			if !s.owns(src) { // the agent path is the owner's
				sb.AgentPath = s.localAgentPath(sb.AgentPath)
			}
			c, err := s.createFrom(ctx, sb, o)
			if err != nil {
				return out, err
			}
			if err := s.inheritSecrets(ctx, src.ID, c.Sandbox.ID); err != nil {
				return out, fmt.Errorf("fork %s: secret bindings: %w", c.Sandbox.ID, err)
			}
			out = append(out, c)
		}
	}
	if len(elsewhere) == 0 {
		return out, nil
	}
	if notPortable != nil {
		e, _ := AsError(notPortable)
		if e == nil {
			return out, notPortable
		}
		return out, newErr(e.Kind, e.Code, "%d of the %d forks were placed on other nodes and not made: %s", countChildren(elsewhere), len(children), e.Message)
	}
	var failed []string // one node failing does not stop the others
	for _, node := range slices.Sorted(maps.Keys(elsewhere)) {
		made, err := s.forkOn(ctx, peers, node, src, elsewhere[node])
		out = append(out, made...)
		if err != nil {
			failed = append(failed, err.Error())
		}
	}
	if len(failed) > 0 {
		return inOrder(out, children), newErr(ErrUnavailable, "fork_incomplete", "%s", strings.Join(failed, "; "))
	}
	return inOrder(out, children), nil
}

// inOrder sorts made children in the order of the request's (their names').
func inOrder(made []Created, children []ForkChild) []Created {
	pos := make(map[string]int, len(children))
	for i, c := range children {
		pos[c.ID] = i
	}
	slices.SortStableFunc(made, func(a, b Created) int { return pos[a.Sandbox.ID] - pos[b.Sandbox.ID] })
	return made
}

// placeForks splits children between this node and the others, by
// placement. Without peers or an object store, or when placement finds no
// node, they are all made here, as on a single node.
func (s *Service) placeForks(ctx context.Context, src *store.Sandbox, children []ForkChild, peers ForkPeers) (here []ForkChild, elsewhere map[string][]ForkChild) {
	if peers == nil || s.cfg.Uploads == nil || s.cfg.SnapshotCache == nil {
		return children, nil
	}
	nodes, err := peers.Place(ctx, int64(src.MemoryMiB), len(children))
	if err != nil || len(nodes) != len(children) {
		s.log.Warn("fork placement failed; making the forks here", "sandbox", src.ID, "err", err)
		return children, nil
	}
	elsewhere = map[string][]ForkChild{}
	for i, node := range nodes {
		if node == s.cfg.NodeName {
			here = append(here, children[i])
		} else {
			elsewhere[node] = append(elsewhere[node], children[i])
		}
	}
	return here, elsewhere
}

// forkOrigin is the source's snapshot as a local origin: its own sealed
// copy on the node that owns it, else (a node that the owner placed
// children on, or any node when the owner is lost) a download of its
// portable copy, removed by done once the children are restored.
func (s *Service) forkOrigin(ctx context.Context, b *box, src *store.Sandbox) (o origin, done func(), err error) {
	o = origin{dir: src.SnapshotDir, agentToken: s.agentToken(src.ID)}
	if s.owns(src) {
		b.awaitSeal()
		if err := snapshot.Verify(src.SnapshotDir); err != nil {
			return origin{}, nil, newErr(ErrConflict, "snapshot_corrupt", "cannot fork %s: %v", src.ID, err)
		}
		return o, func() {}, nil
	}
	if s.cfg.SnapshotCache == nil || src.SnapshotUpload != store.UploadPortable {
		return origin{}, nil, newErr(ErrConflict, "snapshot_not_portable",
			"cannot fork %s here: it is paused on node %s and its snapshot is not in the object store", src.ID, src.Node)
	}
	dir, err := s.FetchSnapshot(ctx, objstore.KindSandbox, src.ID, filepath.Base(src.SnapshotDir))
	if err != nil {
		return origin{}, nil, fmt.Errorf("fork %s: fetch its snapshot: %w", src.ID, err)
	}
	o.dir = dir
	// Restored children no longer read the snapshot (a resume removes its
	// own at once); the object store and the download cache keep it.
	return o, func() {
		os.RemoveAll(dir)
		os.Remove(filepath.Dir(dir)) // the source's dir here, unless in use
	}, nil
}

// awaitPortable waits until paused src's snapshot is in the object store,
// so that other nodes can restore it: a pause a moment ago may still be
// sealing or uploading. Called with b.mu held, it lets go of it meanwhile
// (the sealer takes it to start the upload), then reads src again: it
// returns src as it is now, with an error if the snapshot did not become
// portable; nil if src is no longer paused on the same snapshot.
func (s *Service) awaitPortable(ctx context.Context, b *box, src *store.Sandbox) (*store.Sandbox, error) {
	if p := s.Portability(src); p != nil && p.Portable {
		return src, nil
	}
	b.mu.Unlock()
	waitErr := s.pollPortable(ctx, src)
	b.mu.Lock()
	cur, err := s.Get(ctx, src.TeamID, src.ID)
	if err != nil {
		return nil, err
	}
	if cur.Status != store.StatusPaused || cur.SnapshotDir != src.SnapshotDir || cur.Node != src.Node {
		return nil, newErr(ErrConflict, "invalid_state", "sandbox %s was %s while its fork waited for the snapshot's upload; pause it and fork again", src.ID, cur.Status)
	}
	return cur, waitErr
}

// pollPortable polls src's upload state until it is portable, for up to 2
// minutes.
func (s *Service) pollPortable(ctx context.Context, src *store.Sandbox) error {
	deadline := time.Now().Add(2 * time.Minute)
	for {
		cur, err := s.Get(ctx, src.TeamID, src.ID)
		if err != nil {
			return err
		}
		p := s.Portability(cur)
		if p != nil && p.Portable {
			return nil
		}
		if p == nil || time.Now().After(deadline) {
			state := "not uploaded"
			if p != nil && p.State != "" {
				state = p.State + " " + p.Detail
			}
			return newErr(ErrConflict, "snapshot_not_portable",
				"the snapshot of %s is not in the object store yet (%s); retry once its upload completes", src.ID, strings.TrimSpace(state))
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(500 * time.Millisecond):
		}
	}
}

// forkOn has node make children of src and returns them as the store
// records them. When the answer is lost, the children it may have made are
// deleted: none of an unknown fate stays behind.
func (s *Service) forkOn(ctx context.Context, peers ForkPeers, node string, src *store.Sandbox, children []ForkChild) ([]Created, error) {
	// Like a create here, making them goes on if the client goes away;
	// node restores them one after another.
	ctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), time.Duration(len(children)+4)*time.Minute)
	defer cancel()
	tokens, err := peers.Fork(ctx, node, src.ID, children)
	var out []Created
	for _, child := range children {
		tok, ok := tokens[child.ID]
		if !ok {
			if tokens == nil { // no answer: whether node made it is unknown
				if derr := peers.Delete(ctx, node, child.ID); derr != nil {
					s.log.Warn("fork: could not delete a child whose node did not answer", "sandbox", child.ID, "node", node, "err", derr)
				}
			}
			continue
		}
		sb, gerr := s.Get(ctx, src.TeamID, child.ID)
		if gerr != nil {
			return out, fmt.Errorf("fork %s on node %s: %w", child.ID, node, gerr)
		}
		out = append(out, Created{Sandbox: sb, Token: tok})
	}
	if err != nil {
		return out, fmt.Errorf("%d of the %d forks placed on node %s were not made: %w", len(children)-len(out), len(children), node, err)
	}
	return out, nil
}

func forkName(src *store.Sandbox, index int) string { return src.Name + "-fork-" + strconv.Itoa(index) }

func countChildren(m map[string][]ForkChild) int {
	n := 0
	for _, c := range m {
		n += len(c)
	}
	return n
}

// like returns a new sandbox record configured as src.
func like(src *store.Sandbox, name string) *store.Sandbox {
	return &store.Sandbox{
		ID: store.NewID(), TeamID: src.TeamID, Name: name, Status: store.StatusStarting,
		Template: src.Template, VCPU: src.VCPU, MemoryMiB: src.MemoryMiB, DiskMiB: src.DiskMiB,
		Metadata: copyMap(src.Metadata), Env: copyMap(src.Env), AgentPath: src.AgentPath,
		BaseImage: src.BaseImage, Defaults: src.Defaults,
		TimeoutSeconds: src.TimeoutSeconds, AutoDeleteSeconds: src.AutoDeleteSeconds,
		DeleteOnTimeout: src.DeleteOnTimeout, NoAutoResume: src.NoAutoResume,
		Network: src.Network.Clone(), PreviewPrivate: src.PreviewPrivate,
	}
}

// createFrom starts the new sandbox sb by restoring origin's snapshot under
// sb's ID, then gives the restored agent sb's own secret. It returns once runsc
// has restored it and it is recorded active; the secret is handed over
// right after (rotateAgent), with the sandbox's lock held until then, so
// every request to the new sandbox waits for it and none is ever served with
// the origin's secret.
func (s *Service) createFrom(ctx context.Context, sb *store.Sandbox, o origin) (Created, error) {
	ctx, cancel := lifecycleCtx(ctx)
	defer cancel()
	start := time.Now()
	img, err := s.image(ctx, baseOf(sb))
	if err != nil {
		return Created{}, err
	}
	if err := s.admit(ctx, sb.TeamID, func() error { return s.insertSandbox(ctx, sb) }); err != nil {
		s.undoCreateLater(ctx, s.box(sb.ID), sb.ID, err) // the insert may have committed
		return Created{}, err
	}
	b := s.box(sb.ID)
	b.mu.Lock()
	handedOver := false // to rotateAgent, which unlocks
	defer func() {
		if !handedOver {
			b.mu.Unlock()
		}
	}()
	spec := s.spec(sb, img)
	spec.LazyFiles = s.lazyFiles(o.dir)
	var steps resumeSteps
	steps.last = start
	steps.mark(&steps.record)
	token := s.issueTokenAhead(ctx, sb)
	inst, err := s.cfg.Driver.Restore(ctx, spec, o.dir)
	steps.mark(&steps.driver)
	if err != nil {
		token() // no token is left being written for a failed sandbox
		s.metrics.Fail("create", "restore")
		s.cfg.Driver.Destroy(ctx, sb.ID)
		if serr := s.setStatus(ctx, sb, store.StatusFailed, "could not start from snapshot: "+err.Error()); serr != nil {
			s.undoCreateLater(ctx, b, sb.ID, serr)
		}
		if verr := versionConflict(err, "the snapshot it starts from"); verr != nil {
			return Created{}, verr
		}
		return Created{}, fmt.Errorf("start %s from snapshot: %w", sb.ID, err)
	}
	steps.setup = inst.Setup
	// The restored agent still holds the origin's secret; rotateAgent hands
	// it ours.
	b.agent = agentclient.New(inst.AgentAddr(), o.agentToken)
	if err := s.setStatus(ctx, sb, store.StatusActive, ""); err != nil {
		s.undoCreateLater(ctx, b, sb.ID, err)
		return Created{}, err
	}
	tok, err := s.tokenOrUndo(ctx, b, sb.ID, token)
	if err != nil {
		return Created{}, err
	}
	handedOver = true
	s.background.Add(1)
	go s.rotateAgent(b, sb.ID, b.agent)
	s.metrics.Observe("create_from_snapshot", time.Since(start))
	s.log.Info("sandbox created from snapshot", "sandbox", sb.ID, "snapshot", o.dir, "ms", time.Since(start).Milliseconds(),
		"before_ms", ms(steps.record), "link_bundle_ms", ms(steps.setup), "runsc_ms", ms(steps.driver-steps.setup),
		"after_ms", ms(time.Since(steps.last)))
	return Created{Sandbox: sb, Token: tok}, nil
}

// tokenOrUndo waits for the access token issued ahead; if that failed, the
// new sandbox is undone.
func (s *Service) tokenOrUndo(ctx context.Context, b *box, id string, token func() (string, error)) (string, error) {
	tok, err := token()
	if err != nil {
		s.undoCreateLater(ctx, b, id, err)
	}
	return tok, err
}

// rotateAgent gives the agent of sandbox id, restored from another
// sandbox's snapshot and reached through c (which holds that sandbox's
// secret), id's own secret, then unlocks b.mu, which the caller handed over
// locked: until then no request reaches the sandbox. Its agent answered when
// the snapshot was taken, so waiting for its socket is enough before the
// rotation, its first request. If the agent cannot take the secret the
// sandbox is stopped and failed. (The kernel hostname stays the origin's:
// gVisor refuses sethostname without CAP_SYS_ADMIN, which sandboxes don't
// get.)
func (s *Service) rotateAgent(b *box, id string, c *agentclient.Client) {
	defer s.background.Done()
	defer b.mu.Unlock()
	ctx, cancel := lifecycleCtx(context.Background())
	defer cancel()
	start := time.Now()
	err := s.waitListening(ctx, c)
	if err == nil {
		err = c.RotateToken(ctx, s.agentToken(id))
	}
	if err == nil {
		s.log.Info("agent secret handed over", "sandbox", id, "ms", ms(time.Since(start)))
		return
	}
	s.metrics.Fail("create", "agent_secret")
	s.log.Error("sandbox started from a snapshot, but its agent did not take its secret", "sandbox", id, "err", err)
	s.cfg.Driver.Destroy(ctx, id)
	b.agent = nil
	sb, gerr := s.Get(ctx, "", id)
	if gerr != nil || sb.Status != store.StatusActive {
		return
	}
	s.setStatus(ctx, sb, store.StatusFailed, "could not start from snapshot: agent: "+err.Error())
}

func copyMap(m map[string]string) map[string]string {
	out := make(map[string]string, len(m))
	for k, v := range m {
		out[k] = v
	}
	return out
}

// createFromTemplate starts a sandbox from a template's snapshot: the
// template's start_cmd processes are already running in it.
func (s *Service) createFromTemplate(ctx context.Context, teamID string, p CreateParams, t *store.Template) (*store.Sandbox, string, error) {
	if t.SnapshotDir == "" {
		return nil, "", newErr(ErrConflict, "template_not_ready", "template %s is %s; wait for its build to be ready", t.Name, t.Status)
	}
	d := t.Defaults
	d.Env = copyMap(d.Env)
	for k, v := range p.Env { // env_vars of the create apply to every command
		d.Env[k] = v
	}
	sb := &store.Sandbox{
		ID: store.NewID(), TeamID: teamID, Name: p.Name, Status: store.StatusStarting,
		Template: t.Name, BaseImage: t.BaseImage, VCPU: t.VCPU, MemoryMiB: t.MemoryMiB, DiskMiB: t.DiskMiB,
		Metadata: p.Metadata, AgentPath: t.AgentPath, Defaults: d,
		TimeoutSeconds: p.TimeoutSeconds, AutoDeleteSeconds: p.AutoDeleteSeconds,
		DeleteOnTimeout: p.DeleteOnTimeout, NoAutoResume: p.NoAutoResume,
	}
	p.applyNetwork(sb)
	dir, err := s.localCopy(ctx, objstore.KindTemplate, t.ID, t.SnapshotDir)
	if err != nil {
		return nil, "", err
	}
	c, err := s.createFrom(ctx, sb, origin{dir: dir, agentToken: s.agentToken(t.OriginID)})
	return c.Sandbox, c.Token, err
}
