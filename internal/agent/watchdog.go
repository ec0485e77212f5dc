package agent

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"runtime"
	"slices"
	"strconv"
	"sync"
	"syscall"
	"time"

	"golang.org/x/sys/unix"
)

// The watchdog is the sandbox's OOM killer and task limiter.
//
// gVisor has no OOM killer of its own: when a sandbox outgrows its host
// cgroup, the host kernel's OOM killer SIGKILLs the sentry and with it every
// process of the sandbox, agent included. So the host cgroup is given
// headroom above the sandbox's budget (see the gvisor driver) and the agent
// enforces the budget itself, from inside: it samples /proc/meminfo (gVisor
// reports its memory file usage there, exactly) and, once the budget is used
// up, SIGKILLs the biggest process, the way Linux's OOM killer would. If that
// process belongs to a command the agent is running, the command's whole
// process group goes and the exec reports why.
//
// Every process also costs the host memory that /proc/meminfo does not show
// (its systrap stub process, page tables, the sentry's task state: ~0.5 MiB
// measured); the watchdog counts that against the budget too, so a fork bomb
// runs out of budget before the host cgroup runs out of memory.
//
// Processes are limited as well: commands get an RLIMIT_NPROC
// (Config.MaxProcs), so a fork bomb's forks fail; and when the sandbox nears
// MaxProcesses processes, the process group most of the newest processes
// belong to is killed, so the bomb does not spin at the limit forever (its
// shell has usually exited, so no exec timeout ends it), starving
// everything else in the sandbox, the agent included.
//
// What the watchdog cannot stop is a single system call that commits more
// memory than the host headroom at once (read(2) of a huge file into one
// buffer): a kill takes effect only when the call returns.

// Defaults of WatchdogConfig.
const (
	DefaultMinInterval = 10 * time.Millisecond
	DefaultMaxInterval = 500 * time.Millisecond
	// DefaultGrowthRatePerCPU is the fastest a process was measured to
	// commit memory in a sandbox (~0.9 GB/s per vCPU, faulting in a Python
	// bytearray), rounded up.
	DefaultGrowthRatePerCPU = 1 << 30
	// DefaultProcessCost is the host memory a process costs beyond what
	// /proc/meminfo counts (measured: 400 idle processes, +215 MiB in the
	// host cgroup, +39 MiB in meminfo).
	DefaultProcessCost = 512 << 10
)

// TaskLimit is the process limit that goes with a memory budget of
// budgetMiB: the watchdog's MaxProcesses in cmd/stasis-agent (and, plus a
// quarter, the RLIMIT_NPROC of commands). One process per MiB, within [256,
// 4096]: a process costs the host ~0.5 MiB, so a sandbox full of processes
// holds at most half its budget in them.
func TaskLimit(budgetMiB int) int {
	return min(max(budgetMiB, 256), 4096)
}

// victimGrace is how long the watchdog waits for a process it killed to
// disappear before it picks another victim anyway; victimSettle how long,
// once it has gone, for gVisor to return its memory (measured: ~30 ms).
const (
	victimGrace  = 2 * time.Second
	victimSettle = 100 * time.Millisecond
)

// minVictimSize: a process group smaller than this (RSS plus process cost)
// is not worth killing for memory. When nothing is that big the memory is
// held elsewhere (files in tmpfs, say) and killing shells would not give it
// back.
const minVictimSize = 4 << 20

// maxLookDelay bounds how long the watchdog puts its look off after a
// command started (see RunWatchdog): a tight loop of short commands keeps a
// spare being started most of the time.
const maxLookDelay = 50 * time.Millisecond

// memOverhead is what the watchdog assumes gVisor itself (sentry, gofer)
// uses of the host cgroup beyond what it counts (measured: 10-30 MiB).
const memOverhead = 48 << 20

// WatchdogConfig configures Server.RunWatchdog.
type WatchdogConfig struct {
	// MemoryLimit is the memory budget in bytes: once the sandbox uses more,
	// the biggest process is killed. 0: MemTotal less a reserve of a tenth
	// of it (at least 32 MiB).
	MemoryLimit uint64
	// ProcessCost is counted against the budget for every process, on top
	// of the memory /proc/meminfo shows as used. 0: nothing.
	ProcessCost uint64
	// MaxProcesses, if positive, is the number of processes at which, less
	// a sixteenth, the process group of most of the newest processes is
	// killed. (Threads cost the host little, and RLIMIT_NPROC, which counts
	// them, stops thread bombs.)
	MaxProcesses int
	// Memory is sampled as often as the distance to the host cgroup's limit
	// (MemTotal) requires if memory grows at GrowthRate bytes/s (default
	// DefaultGrowthRatePerCPU per CPU), but every MinInterval at most and
	// every MaxInterval at least (defaults DefaultMinInterval,
	// DefaultMaxInterval). A sample is cheap (one pread, ~0.1 ms) but
	// waking up is not (~1.5 ms of host CPU with systrap, however the agent
	// sleeps), so while the agent is the only process it does not sample
	// at all. Processes are counted at every wakeup, which comes every
	// MaxInterval/10 once there are more than MaxProcesses/2.
	MinInterval time.Duration
	MaxInterval time.Duration
	GrowthRate  uint64
	// ProcDir is the proc filesystem to watch (default /proc).
	ProcDir string
	// MemInfo, if set, replaces reading ProcDir/meminfo: it returns the
	// memory total and the amount in use, in bytes.
	MemInfo func() (total, used uint64, err error)
}

// procInfo is one process as the watchdog sees it.
type procInfo struct {
	pid, ppid, pgid int
	state           byte
	comm            string
	threads         int
	rss             uint64 // bytes
}

// victim is a process killed for memory.
type victim struct {
	killed, gone time.Time
}

// watchdog is the state of one RunWatchdog.
type watchdog struct {
	s        *Server
	cfg      WatchdogConfig
	self     int
	pageSize uint64
	meminfo  int    // fd of ProcDir/meminfo, -1 if not open
	buf      []byte // meminfo read buffer
	// pending holds the victims killed for memory until their memory has
	// had time to be freed.
	pending map[int]*victim
	// lastUsed is the memory in use at the last sample; ready a victim
	// chosen (at readyAt, from readyProcs) while memory grew towards the
	// budget.
	lastUsed   uint64
	ready      *memGroup
	readyProcs map[int]*procInfo
	readyAt    time.Time

	mu      sync.Mutex
	killing map[int]bool // under mu: process groups killGroup is emptying
	emptied uint64       // under mu: how many groups killGroup has finished with

	// stuck is when memory ran short with nothing to kill, zero when it
	// did not; stuckLogged whether that has been logged (once an episode,
	// and only if it lasts: right after a kill, processes counted may have
	// gone before the scan sees them).
	stuck       time.Time
	stuckLogged bool
}

// RunWatchdog watches the sandbox's memory and tasks until ctx is done; see
// WatchdogConfig. Only processes descending from the agent are ever killed,
// never the agent itself: as PID 1 that is every process of the sandbox.
func (s *Server) RunWatchdog(ctx context.Context, cfg WatchdogConfig) {
	if cfg.MinInterval <= 0 {
		cfg.MinInterval = DefaultMinInterval
	}
	if cfg.MaxInterval < cfg.MinInterval {
		cfg.MaxInterval = max(DefaultMaxInterval, cfg.MinInterval)
	}
	if cfg.GrowthRate == 0 {
		cfg.GrowthRate = uint64(runtime.NumCPU()) * DefaultGrowthRatePerCPU
	}
	if cfg.ProcDir == "" {
		cfg.ProcDir = "/proc"
	}
	w := &watchdog{
		s:        s,
		cfg:      cfg,
		self:     os.Getpid(),
		pageSize: uint64(os.Getpagesize()),
		meminfo:  -1,
		pending:  make(map[int]*victim),
		killing:  make(map[int]bool),
	}
	if w.cfg.MemInfo == nil {
		w.cfg.MemInfo = w.readMeminfo
		defer func() {
			if w.meminfo >= 0 {
				unix.Close(w.meminfo)
			}
		}()
	}
	timer := time.NewTimer(0)
	defer timer.Stop()
	due := time.Now() // when timer fires
	wakeIn := func(d time.Duration) {
		timer.Reset(d)
		due = time.Now().Add(d)
	}
	var deferredTo time.Time // with a look put off after a command started: the latest it may come
	var lastErr string
	for {
		select {
		case <-ctx.Done():
			return
		case <-timer.C:
			if left := time.Until(deferredTo); left > 0 && s.spareStarting() {
				// The command is over (the spare is replaced only
				// after a command's exit) and the sandbox is busy
				// starting the next spare, which would look like
				// a process to watch: look once it is ready.
				wakeIn(min(cfg.MinInterval, left))
				continue
			}
		case <-s.watchdogKick:
			// A command has started: look once it has run for
			// MinInterval, the shortest interval between looks
			// anyway, not at once. Most commands are over by then,
			// and a look at once took the sandbox's one vCPU from
			// the command (about 1 ms of CPU of an exec of `true`,
			// measured).
			if due.IsZero() || time.Until(due) > cfg.MinInterval {
				wakeIn(cfg.MinInterval)
				deferredTo = time.Now().Add(maxLookDelay)
			}
			continue
		}
		deferredTo = time.Time{}
		// While the agent is alone (or with its spare) nothing can grow or
		// fork: every process descends from one the agent started, and the
		// agent kicks the watchdog once a command's process exists (a fork,
		// or the spare taken, which then no longer counts as idle). So an
		// idle watchdog sleeps until kicked: a 10 s look cost an idle
		// sandbox ~0.03 % of a core, waking its sentry.
		_, killGen := w.groupKills()
		pids, listErr := w.processes()
		n := len(pids)
		if listErr == nil && w.idle(pids) {
			timer.Stop()
			due = time.Time{} // asleep: a kick arms the timer
			continue
		}
		wait, err := w.checkMemory(n)
		if err == nil {
			err = listErr
		}
		if err != nil && err.Error() != lastErr {
			s.log.Printf("watchdog: %v", err)
			lastErr = err.Error()
		}
		if cfg.MaxProcesses > 0 && listErr == nil {
			wait = min(wait, w.checkProcesses(pids, killGen))
		}
		wakeIn(wait)
	}
}

// idle reports whether nothing in the sandbox can grow: the agent is alone,
// or with only its spare shell, which blocks reading its script until a
// command takes it (and that command kicks the watchdog). Sampling an idle
// sandbox every MaxInterval cost ~0.3 % of a core per sandbox (measured
// with 5 idle sandboxes: 0.30-0.50 % with the spare counted, see
// docs/BENCHMARKS.md's density section).
func (w *watchdog) idle(pids []int) bool {
	switch len(pids) {
	case 0, 1:
		return true
	case 2:
		other := pids[0]
		if other == w.self {
			other = pids[1]
		}
		return other == w.s.sparePid()
	}
	return false
}

// spareStarting reports whether the next spare shell is being started.
func (s *Server) spareStarting() bool {
	s.spareMu.Lock()
	defer s.spareMu.Unlock()
	return s.spareFilling != nil
}

// sparePid is the pid of the spare shell waiting for a command, 0 if none.
func (s *Server) sparePid() int {
	s.spareMu.Lock()
	defer s.spareMu.Unlock()
	if s.spare == nil {
		return 0
	}
	return s.spare.pid
}

// kickWatchdog makes the watchdog look now (a command has started).
func (s *Server) kickWatchdog() {
	select {
	case s.watchdogKick <- struct{}{}:
	default:
	}
}

// memGroup is a process group as a candidate victim for memory: its size
// is its processes' RSS plus their process cost, so that a fork bomb (many
// small processes) is found as well as a hog.
type memGroup struct {
	n    int
	rss  uint64
	big  *procInfo
	size uint64
}

// growthNoise: memory that grew less than this since the last sample is not
// growing.
const growthNoise = 1 << 20

// readyFor is how long a victim chosen ahead of need (see checkMemory) stays
// good; maxReadyScan the most processes for which one is chosen.
const (
	readyFor     = 100 * time.Millisecond
	maxReadyScan = 64
)

// checkMemory kills the biggest process if the sandbox is over its budget;
// nprocs is the number of processes, or 0 if unknown. It returns how long to
// wait for the next sample.
func (w *watchdog) checkMemory(nprocs int) (time.Duration, error) {
	total, used, err := w.cfg.MemInfo()
	if err != nil {
		return w.cfg.MaxInterval, err
	}
	used += uint64(nprocs) * w.cfg.ProcessCost
	budget, reserve := w.cfg.MemoryLimit, uint64(0)
	if budget == 0 {
		budget = total
		reserve = max(total/10, 32<<20)
	}
	budget -= min(budget, reserve)
	now := time.Now()
	growing := used > w.lastUsed+growthNoise
	w.lastUsed = used
	if used <= budget {
		w.stuck, w.stuckLogged = time.Time{}, false
		if len(w.pending) > 0 {
			clear(w.pending)
		}
		w.ready = nil
		if !growing || used < budget/2 {
			return w.memInterval(total, budget, used), nil
		}
		// Memory is growing towards the budget. On a busy host every step
		// of the watchdog can take long (wakeups, system calls: each is a
		// round trip through the sentry) while a hog keeps growing at
		// ~1 GB/s: so look often now, and choose the victim ahead of need,
		// to kill at once when the budget runs out.
		// (Not with many processes: that scan would take long, and a fork
		// bomb is checkProcesses' business.)
		if nprocs <= maxReadyScan {
			if procs, err := w.scan(); err == nil {
				if g := w.worstGroup(procs); g != nil {
					w.ready, w.readyProcs, w.readyAt = g, procs, now
				}
			}
		}
		return w.cfg.MinInterval, nil
	}

	var procs map[int]*procInfo
	var worst *memGroup
	if w.ready != nil && len(w.pending) == 0 && now.Sub(w.readyAt) < readyFor {
		worst, procs = w.ready, w.readyProcs
	} else {
		if procs, err = w.scan(); err != nil {
			return w.cfg.MinInterval, err
		}
		waiting := false
		for pid, v := range w.pending {
			p, ok := procs[pid]
			if v.gone.IsZero() && (!ok || p.state == 'Z' || p.state == 'X') {
				v.gone = now
			}
			switch {
			case !v.gone.IsZero() && now.Sub(v.gone) >= victimSettle:
				delete(w.pending, pid)
			case !v.gone.IsZero() || now.Sub(v.killed) < victimGrace:
				waiting = true // dying or freeing its memory
			}
		}
		if waiting {
			return w.cfg.MinInterval, nil
		}
		worst = w.worstGroup(procs)
	}
	w.ready = nil
	if worst == nil || worst.size < minVictimSize {
		if w.stuck.IsZero() {
			w.stuck = now
		}
		if now.Sub(w.stuck) < time.Second {
			return w.cfg.MinInterval, nil
		}
		if !w.stuckLogged {
			w.s.log.Printf("watchdog: out of memory (%d of %d MiB in use) but no process holds much of it; files in tmpfs (/tmp, /dev/shm) may",
				used>>20, budget>>20)
			w.stuckLogged = true
		}
		// Looking often would not help, and would cost.
		return w.cfg.MaxInterval, nil
	}
	w.stuck = time.Time{}
	reason := fmt.Sprintf("killed: out of memory (sandbox limit %d MiB)", budget>>20)
	// Like Linux, kill one process; but all of a running command (so that
	// the exec ends and says why), and all of a group whose processes
	// rather than their memory are the problem.
	big := worst.big
	bomb := worst.n > 1 && uint64(worst.n)*w.cfg.ProcessCost > worst.rss && w.groupKillable(big.pgid, procs)
	what := fmt.Sprintf("pid %d (%s, rss %d MiB)", big.pid, big.comm, big.rss>>20)
	switch {
	case w.s.killExec(big.pgid, reason):
		what += fmt.Sprintf(" and the rest of its command's process group %d (%d processes)", big.pgid, worst.n)
		if bomb {
			w.killGroup(big.pgid) // what forked as the first kill landed
		}
	case bomb:
		w.killGroup(big.pgid)
		what += fmt.Sprintf(" and the rest of its process group %d (%d processes)", big.pgid, worst.n)
	default:
		syscall.Kill(big.pid, syscall.SIGKILL)
	}
	w.pending[big.pid] = &victim{killed: now}
	w.s.log.Printf("watchdog: out of memory (%d of %d MiB in use): killed %s", used>>20, budget>>20, what)
	return w.cfg.MinInterval, nil
}

// worstGroup returns the biggest process group that may be killed, or nil.
func (w *watchdog) worstGroup(procs map[int]*procInfo) *memGroup {
	groups := make(map[int]*memGroup)
	var worst *memGroup
	for _, p := range procs {
		if _, dying := w.pending[p.pid]; dying || p.state == 'Z' || !w.killable(p, procs) {
			continue
		}
		g := groups[p.pgid]
		if g == nil {
			g = &memGroup{}
			groups[p.pgid] = g
		}
		g.n++
		g.rss += p.rss
		g.size = g.rss + uint64(g.n)*w.cfg.ProcessCost
		if g.big == nil || p.rss > g.big.rss {
			g.big = p
		}
		if worst == nil || g.size > worst.size {
			worst = g
		}
	}
	return worst
}

// killLatency is what memInterval allows for a kill to take effect (more
// than it takes on an idle host, ~20 ms, less than the worst seen on a busy
// one).
const killLatency = 100 * time.Millisecond

// memInterval is how long the watchdog may wait before the next memory
// sample: long enough to cost little, short enough that memory growing at
// GrowthRate cannot reach the host cgroup's limit (MemTotal, which has
// headroom above the budget) before the next sample and a kill after it.
func (w *watchdog) memInterval(total, budget, used uint64) time.Duration {
	ceiling := budget
	if total > budget+memOverhead {
		ceiling = total - memOverhead
	}
	if grow := uint64(float64(w.cfg.GrowthRate) * killLatency.Seconds()); ceiling > budget+grow {
		ceiling -= grow
	} else {
		ceiling = budget
	}
	if used >= ceiling {
		return w.cfg.MinInterval
	}
	d := time.Duration(float64(ceiling-used) / float64(w.cfg.GrowthRate) * float64(time.Second))
	return min(max(d, w.cfg.MinInterval), w.cfg.MaxInterval)
}

// newestSample is how many of the newest processes checkProcesses reads to
// find a fork bomb: under one, a full scan takes ages (the agent gets a few
// hundredth of the CPU) and finds mostly zombies (the bomb's processes live
// for less than the scan takes: it found 44 of 237, 43 of them zombies).
const newestSample = 64

// checkProcesses kills the process group most of the newest processes
// belong to if the sandbox holds nearly MaxProcesses processes; pids are
// its processes, listed when groupKills returned killGen. It returns how
// long to wait for the next check.
func (w *watchdog) checkProcesses(pids []int, killGen uint64) time.Duration {
	n := len(pids)
	if d, atLimit := w.procInterval(n); !atLimit {
		return d
	}
	// A group killed before holds processes until they are reaped, and
	// they were counted: judged by that count, the newest processes, those
	// of the next command, would be killed in its place. So wait until no
	// group is being emptied and none was while pids were listed.
	if busy, gen := w.groupKills(); busy || gen != killGen {
		return w.cfg.MinInterval
	}
	var procs map[int]*procInfo
	if w.self == 1 {
		// PIDs are allocated in increasing order: the newest are the
		// bomb's.
		slices.Sort(pids)
		procs = w.read(pids[max(0, n-newestSample):])
	} else {
		var err error
		if procs, err = w.scan(); err != nil {
			return w.cfg.MinInterval
		}
		// Count again what this scan holds, so the count and the groups
		// it judges are of the same moment.
		n = 1 // the agent
		for _, p := range procs {
			if w.killable(p, procs) {
				n++
			}
		}
		if d, atLimit := w.procInterval(n); !atLimit {
			return d
		}
	}
	groups := make(map[int]int)
	for _, p := range procs {
		if w.killable(p, procs) && w.groupKillable(p.pgid, procs) {
			groups[p.pgid]++
		}
	}
	pgid, most := 0, 0
	for g, c := range groups {
		if c > most || c == most && g > pgid {
			pgid, most = g, c
		}
	}
	if pgid == 0 {
		return w.cfg.MinInterval
	}
	reason := fmt.Sprintf("killed: too many processes (sandbox limit %d)", w.cfg.MaxProcesses)
	what := fmt.Sprintf("process group %d", pgid)
	if w.s.killExec(pgid, reason) {
		what += " of a running command"
	}
	w.killGroup(pgid)
	w.s.log.Printf("watchdog: %d processes, at the limit of %d: killed %s (%d of %d processes looked at)",
		n, w.cfg.MaxProcesses, what, most, len(procs))
	return w.cfg.MinInterval
}

// procInterval is how long to wait for the next process count with n
// processes in the sandbox, and whether n is at the limit.
func (w *watchdog) procInterval(n int) (time.Duration, bool) {
	// At the limit forks fail, and the count hovers just below it while
	// the processes that could not fork exit and others try; so act within
	// a sixteenth of it.
	switch {
	case n <= w.cfg.MaxProcesses/2:
		return w.cfg.MaxInterval, false
	case n < w.cfg.MaxProcesses-w.cfg.MaxProcesses/16:
		// Many processes: a bomb would hit the limit within a few tenths
		// of a second; a busy sandbox should not pay for many wakeups.
		return max(w.cfg.MaxInterval/10, w.cfg.MinInterval), false
	}
	return w.cfg.MinInterval, true
}

// groupKills reports whether killGroup is emptying a group, and how many
// groups it has finished with.
func (w *watchdog) groupKills() (busy bool, emptied uint64) {
	w.mu.Lock()
	defer w.mu.Unlock()
	return len(w.killing) > 0, w.emptied
}

// groupKillTime bounds killGroup.
const groupKillTime = 5 * time.Second

// killGroup SIGKILLs process group pgid until it is empty, in the
// background. One kill is not enough for a fork bomb: in gVisor a process
// that is forking when the signal arrives still creates its child, which the
// signal missed (measured: a single kill(-pgid) left the bomb at full size).
func (w *watchdog) killGroup(pgid int) {
	w.mu.Lock()
	defer w.mu.Unlock()
	if w.killing[pgid] {
		return
	}
	w.killing[pgid] = true
	go func() {
		deadline := time.Now().Add(groupKillTime)
		for time.Now().Before(deadline) {
			if err := syscall.Kill(-pgid, syscall.SIGKILL); err == syscall.ESRCH {
				break
			}
			time.Sleep(time.Millisecond)
		}
		w.mu.Lock()
		delete(w.killing, pgid)
		w.emptied++
		w.mu.Unlock()
	}()
}

// killable reports whether p descends from the agent (and is not the agent).
func (w *watchdog) killable(p *procInfo, procs map[int]*procInfo) bool {
	if p.pid == w.self || p.pid <= 1 {
		return false
	}
	if w.self == 1 {
		// Everything descends from init; and under churn a scan misses
		// parents.
		return true
	}
	cur := p
	for range 64 { // bounded: the process tree may change under the scan
		if cur.ppid == w.self {
			return true
		}
		next, ok := procs[cur.ppid]
		if !ok {
			return false
		}
		cur = next
	}
	return false
}

// groupKillable reports whether process group pgid may be killed as a whole:
// it is not the agent's own.
func (w *watchdog) groupKillable(pgid int, procs map[int]*procInfo) bool {
	if pgid <= 1 {
		return false
	}
	me, ok := procs[w.self]
	return !ok || me.pgid != pgid
}

// listProcs lists the PIDs in ProcDir.
func (w *watchdog) listProcs() ([]int, error) {
	d, err := os.Open(w.cfg.ProcDir)
	if err != nil {
		return nil, err
	}
	defer d.Close()
	names, err := d.Readdirnames(-1)
	if err != nil {
		return nil, err
	}
	pids := make([]int, 0, len(names))
	for _, name := range names {
		if pid, err := strconv.Atoi(name); err == nil && pid > 0 {
			pids = append(pids, pid)
		}
	}
	return pids, nil
}

// processes lists the PIDs of the sandbox's processes, the agent's
// included: as init, every process in ProcDir; otherwise (tests, an agent
// that is not init) the agent and its descendants.
func (w *watchdog) processes() ([]int, error) {
	if w.self == 1 {
		return w.listProcs()
	}
	procs, err := w.scan()
	if err != nil {
		return nil, err
	}
	pids := []int{w.self}
	for _, p := range procs {
		if w.killable(p, procs) {
			pids = append(pids, p.pid)
		}
	}
	return pids, nil
}

// scan reads every process of ProcDir.
func (w *watchdog) scan() (map[int]*procInfo, error) {
	pids, err := w.listProcs()
	if err != nil {
		return nil, err
	}
	return w.read(pids), nil
}

// read reads the given processes; those that are gone are left out.
func (w *watchdog) read(pids []int) map[int]*procInfo {
	procs := make(map[int]*procInfo, len(pids))
	for _, pid := range pids {
		b, err := os.ReadFile(filepath.Join(w.cfg.ProcDir, strconv.Itoa(pid), "stat"))
		if err != nil {
			continue // gone meanwhile
		}
		if p, ok := parseStat(b, w.pageSize); ok && p.pid == pid {
			procs[pid] = p
		}
	}
	return procs
}

// parseStat parses /proc/<pid>/stat.
func parseStat(b []byte, pageSize uint64) (*procInfo, bool) {
	open := bytes.IndexByte(b, '(')
	closing := bytes.LastIndexByte(b, ')')
	if open < 0 || closing < open {
		return nil, false
	}
	pid, err := strconv.Atoi(string(bytes.TrimSpace(b[:open])))
	if err != nil {
		return nil, false
	}
	// Fields after the command, numbered as in proc(5) from 3 (state).
	f := bytes.Fields(b[closing+1:])
	if len(f) < 22 {
		return nil, false
	}
	num := func(i int) int64 {
		n, _ := strconv.ParseInt(string(f[i-3]), 10, 64)
		return n
	}
	p := &procInfo{
		pid:     pid,
		comm:    string(b[open+1 : closing]),
		ppid:    int(num(4)),
		pgid:    int(num(5)),
		threads: int(num(20)),
	}
	if len(f[0]) > 0 {
		p.state = f[0][0]
	}
	if rss := num(24); rss > 0 {
		p.rss = uint64(rss) * pageSize
	}
	return p, true
}

// readMeminfo returns MemTotal and MemTotal - MemAvailable from
// ProcDir/meminfo. The file stays open: a pread at offset 0 regenerates it,
// in one system call.
func (w *watchdog) readMeminfo() (total, used uint64, err error) {
	if w.meminfo < 0 {
		fd, err := unix.Open(filepath.Join(w.cfg.ProcDir, "meminfo"), unix.O_RDONLY|unix.O_CLOEXEC, 0)
		if err != nil {
			return 0, 0, fmt.Errorf("meminfo: %w", err)
		}
		w.meminfo = fd
		w.buf = make([]byte, 16<<10)
	}
	n, err := unix.Pread(w.meminfo, w.buf, 0)
	for err == unix.EINTR {
		n, err = unix.Pread(w.meminfo, w.buf, 0)
	}
	if err != nil {
		return 0, 0, fmt.Errorf("meminfo: %w", err)
	}
	return parseMeminfo(w.buf[:n])
}

func parseMeminfo(b []byte) (total, used uint64, err error) {
	var avail uint64
	haveTotal, haveAvail := false, false
	sc := bufio.NewScanner(bytes.NewReader(b))
	for sc.Scan() && !(haveTotal && haveAvail) {
		k, v, ok := bytes.Cut(sc.Bytes(), []byte(":"))
		if !ok {
			continue
		}
		f := bytes.Fields(v)
		if len(f) == 0 {
			continue
		}
		n, err := strconv.ParseUint(string(f[0]), 10, 64)
		if err != nil {
			continue
		}
		switch string(k) {
		case "MemTotal":
			total, haveTotal = n<<10, true
		case "MemAvailable":
			avail, haveAvail = n<<10, true
		}
	}
	if !haveTotal || !haveAvail {
		return 0, 0, errors.New("meminfo: no MemTotal or MemAvailable")
	}
	if avail > total {
		avail = total
	}
	return total, total - avail, nil
}

// killExec kills the process group of the running command whose shell leads
// group pgid, on the watchdog's behalf. It reports false if there is none.
func (s *Server) killExec(pgid int, reason string) bool {
	var p *process
	s.mu.Lock()
	for e := range s.runs {
		e.mu.Lock()
		if e.proc != nil && e.proc.pid == pgid {
			p = e.proc
		}
		e.mu.Unlock()
	}
	s.mu.Unlock()
	return p != nil && p.killFor(reason)
}
