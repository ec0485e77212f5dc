package main

import (
	"bufio"
	"encoding/json"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
)

// Report is everything one run measured; benchmarks.json is its JSON.
type Report struct {
	SchemaVersion   int                `json:"schema_version"`
	Date            string             `json:"date"`
	Mode            string             `json:"mode"` // "full" or "quick"
	Command         string             `json:"command"`
	DurationSeconds float64            `json:"duration_seconds"`
	Phases          map[string]float64 `json:"phase_seconds"`
	Machine         Machine            `json:"machine"`
	Versions        Versions           `json:"versions"`
	Rows            []Row              `json:"results"`
	Density         *Density           `json:"density,omitempty"`
	GoBenchmarks    []GoBenchmark      `json:"go_benchmarks"`
	Problems        []string           `json:"problems,omitempty"`
}

// Row is one measurement: stasis and the same work done by raw runsc.
type Row struct {
	Group    string         `json:"group"`
	Name     string         `json:"name"`
	Status   string         `json:"status"` // ok, not_available, stasis_not_available
	Stasis   *Stat          `json:"stasis,omitempty"`
	StasisOp string         `json:"stasis_op,omitempty"`
	Raw      *Stat          `json:"raw_runsc,omitempty"`
	RawOp    string         `json:"raw_runsc_op,omitempty"`
	Ratio    *float64       `json:"ratio,omitempty"` // stasis median / raw median
	Note     string         `json:"note,omitempty"`
	Extra    map[string]any `json:"extra,omitempty"`
}

// Density is how many idle sandboxes the machine holds.
type Density struct {
	ActiveBound                  int     `json:"active_bound"`
	ActiveHeld                   int     `json:"active_held"`
	ActiveReachedBound           bool    `json:"active_reached_bound"` // held is a lower bound ("≥")
	ActiveFailure                string  `json:"active_failure,omitempty"`
	ActiveStoppedByTime          bool    `json:"active_stopped_by_time_budget,omitempty"`
	ActiveStoppedByMemory        bool    `json:"active_stopped_by_memory_floor,omitempty"`
	ActiveStoppedBySlowdown      bool    `json:"active_stopped_by_create_slowdown,omitempty"` // last 5 creates' median over 2× the first 5's
	ActiveSeconds                float64 `json:"active_fill_seconds"`
	PausedBound                  int     `json:"paused_bound"`
	PausedHeld                   int     `json:"paused_held"`
	PausedReachedBound           bool    `json:"paused_reached_bound"`
	PausedFailure                string  `json:"paused_failure,omitempty"`
	PausedStoppedByTime          bool    `json:"paused_stopped_by_time_budget,omitempty"`
	PausedStoppedByMemory        bool    `json:"paused_stopped_by_memory_floor,omitempty"`
	FillWorkers                  int     `json:"paused_fill_workers,omitempty"`
	MemFloorMiB                  float64 `json:"mem_available_floor_mib,omitempty"`
	PausedSeconds                float64 `json:"paused_fill_seconds"`
	TimeBudgetSeconds            float64 `json:"time_budget_seconds"`
	CreateFirstMs                *Stat   `json:"create_first5_ms,omitempty"`
	CreateLastMs                 *Stat   `json:"create_last5_ms,omitempty"`
	MemAvailableDropPerActiveMiB float64 `json:"mem_available_drop_per_active_mib"`
	MemAvailableRecoveredMiB     float64 `json:"mem_available_recovered_by_pausing_mib"`
	IdleCPUPercentBefore         float64 `json:"host_cpu_percent_before"`
	IdleCPUPercentActive         float64 `json:"host_cpu_percent_with_active_idle"`
	StasisdRSSMiB                float64 `json:"stasisd_rss_mib"`
	StasisdCPUPercentActive      float64 `json:"stasisd_cpu_percent_with_active_idle"`
	SnapshotDiskMiB              float64 `json:"snapshot_dir_mib"`
	DeleteAllSeconds             float64 `json:"delete_all_seconds"`
	DeleteAllCount               int     `json:"delete_all_count"`
}

// GoBenchmark is an in-process Go benchmark found in the tree.
type GoBenchmark struct {
	Package string `json:"package"`
	Name    string `json:"name"`
	Doc     string `json:"doc,omitempty"`
}

var benchFuncRE = regexp.MustCompile(`^func (Benchmark\w*)\(\w+ \*testing\.B\)`)

// findGoBenchmarks lists every `func BenchmarkX(b *testing.B)` in the tree.
func findGoBenchmarks(root string) []GoBenchmark {
	var out []GoBenchmark
	filepath.WalkDir(root, func(path string, d fs.DirEntry, err error) error {
		if err != nil {
			return nil
		}
		if d.IsDir() {
			n := d.Name()
			if path != root && (strings.HasPrefix(n, ".") || n == "node_modules" || n == "bin" || n == "data" || n == "testdata") {
				return filepath.SkipDir
			}
			return nil
		}
		if !strings.HasSuffix(path, "_test.go") {
			return nil
		}
		f, err := os.Open(path)
		if err != nil {
			return nil
		}
		defer f.Close()
		rel, _ := filepath.Rel(root, filepath.Dir(path))
		var doc []string
		sc := bufio.NewScanner(f)
		sc.Buffer(make([]byte, 1<<20), 1<<20)
		for sc.Scan() {
			line := sc.Text()
			if c, ok := strings.CutPrefix(line, "// "); ok {
				doc = append(doc, c)
				continue
			}
			if m := benchFuncRE.FindStringSubmatch(line); m != nil {
				out = append(out, GoBenchmark{Package: "./" + filepath.ToSlash(rel), Name: m[1], Doc: strings.Join(doc, " ")})
			}
			doc = nil
		}
		return nil
	})
	slices.SortFunc(out, func(a, b GoBenchmark) int {
		return strings.Compare(a.Package+" "+a.Name, b.Package+" "+b.Name)
	})
	return out
}

// writeReport writes BENCHMARKS.md and benchmarks.json into dir.
func writeReport(dir string, r *Report) error {
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return err
	}
	js, err := json.MarshalIndent(r, "", "  ")
	if err != nil {
		return err
	}
	if err := os.WriteFile(filepath.Join(dir, "benchmarks.json"), append(js, '\n'), 0o644); err != nil {
		return err
	}
	return os.WriteFile(filepath.Join(dir, "BENCHMARKS.md"), []byte(markdown(r)), 0o644)
}

func num(v float64) string {
	switch {
	case v >= 100:
		return fmt.Sprintf("%.0f", v)
	case v >= 10:
		return fmt.Sprintf("%.1f", v)
	default:
		return fmt.Sprintf("%.2f", v)
	}
}

func cell(s *Stat, pick func(*Stat) float64) string {
	if s == nil {
		return "—"
	}
	u := s.Unit
	if u == "ms" {
		u = " ms"
	} else {
		u = " " + u
	}
	return num(pick(s)) + u
}

func median(s *Stat) float64 { return s.Median }
func p95(s *Stat) float64    { return s.P95 }

func markdown(r *Report) string {
	var b strings.Builder
	w := func(format string, args ...any) { fmt.Fprintf(&b, format, args...) }
	w("# stasis benchmarks\n\n")
	w("<!-- Generated by cmd/stasis-bench (`make bench`); do not edit by hand. -->\n\n")
	if r.Mode == "quick" {
		w("> **Quick mode**: tiny sizes and 2-3 repetitions; this only shows that the harness works. The timings mean nothing.\n\n")
	}
	w("Measured on %s in %s mode; the run took %.0f s. Every stasis figure sits next to the same work done by raw `runsc` ", r.Date, r.Mode, r.DurationSeconds)
	w("in the same run, and the ratio is stasis median ÷ runsc median (1.00 = no overhead). ")
	w("Medians and p95 (linear interpolation) over n repetitions; stasis and runsc repetitions alternate. Raw samples are in [benchmarks.json](benchmarks.json).\n\n")

	writeGoals(&b, r)
	w("## Machine and versions\n\n")
	w("| | |\n| --- | --- |\n")
	m, v := r.Machine, r.Versions
	w("| CPU | %s, %d cores (nproc) |\n", m.CPUModel, m.NProc)
	w("| memory | %d MiB |\n", m.MemTotalMiB)
	w("| kernel | %s |\n", m.Kernel)
	w("| OS | %s |\n", m.OS)
	w("| /dev/kvm | %s |\n", m.KVM)
	w("| gVisor platform | %s |\n", v.Platform)
	w("| load average | %s at start (host CPU busy %s %% of one core just before), %s at the end |\n", m.LoadStart, num(m.BusyStart), m.LoadEnd)
	w("| Go | %s |\n", v.Go)
	w("| runsc | %s |\n", v.Runsc)
	commit := v.GitCommit
	if commit == "" {
		commit = "(not a git checkout)"
	} else if v.GitDirty {
		commit += " (with uncommitted changes)"
	}
	w("| stasis commit | %s |\n", commit)
	w("| date | %s |\n\n", r.Date)

	if hostWasBusy(m) {
		w("> **Note:** the host was busy with other work during this run (see the load average), so figures are noisier and slower than on an idle machine; the stasis/runsc ratios, measured alternately in the same run, are the more reliable numbers.\n\n")
	}
	w("## What the baseline is\n\n")
	w("The raw runsc baseline uses the same runsc binary, `--platform=systrap`, `--network=sandbox` in its own netns/veth (with the same 65520-byte MTU as stasisd's links), ")
	w("`--overlay2=root:dir=…` (disk-backed upper layer), and a bundle equivalent to the one the gVisor driver writes ")
	w("(same mounts including the read-only agent bind mount, namespaces, capabilities, rlimits, 1 vCPU quota and memory limit), ")
	w("but its init is a trivial process (`sleep`, or the python memory holder for pause/resume) instead of stasis-agent, ")
	w("and nothing sits in between: no HTTP, store, tokens or agent. Building the baseline's netns and bundle is not timed; ")
	w("stasis's figures include everything a client waits for (its link is a spare built ahead, renamed after the sandbox: `--link-spares`; its bundle is written on the request).\n\n")
	w("Pause and resume have a second baseline, marked \"against runsc on the same sandbox\": a runsc container running what the stasis sandbox runs ")
	w("(stasis-agent as init, the memory holder started through it, so also the agent's spare shell), checkpointed and restored by runsc directly. ")
	w("Against it, the ratio is what stasis adds around the engine (API, store, network link, checksums, readiness); against the first, it includes what the agent costs.\n\n")
	w("%s\n\n", networkBaseline)

	groups := []struct{ id, title, intro string }{
		{"create", "Create and delete", "Cold create boots a new sandbox from the image directory. stasis boots (and restores) a sandbox with its 1-vCPU quota lifted to 2 cores, since the quota throttled the sentry's boot, and applies the quota once the agent answers (once the restore has returned, for a restore), before the first command; the raw runsc baseline keeps its quota throughout, as a user of raw runsc with a vCPU limit gets, and the rows \"against runsc with no CPU quota\" show raw runsc booting without one. A stasis create returns once the agent answers its health check, which it does before its boot set-up (resolv.conf, the egress CA in the trust store) is done: every other request waits for that set-up, so the first command finds both. Where the agent's part of a cold create goes (the agent's wall-clock timestamps inside gVisor against stasisd's, 12 creates of stasis/minimal on a loaded host, medians after `runsc run` returned): its main() starts at about 35 ms (Go's runtime start inside gVisor), it listens at about 45 ms and answers the health check at about 75 ms (it answered at about 92 ms while the answer waited for the set-up, the reaper's first signal.Notify, which costs a thread, and the first connection's netlink lookup of the sandbox's links); the set-up (resolv.conf; the CA is already in the trust store of the root stasisd gives the sandbox, a tree of hard links to the image with the trust files written once per image and server, so stasis/base's 217 KB system bundle is no longer rewritten in the sandbox) ends before the first command arrives (some 15 ms after the answer while it still rewrote the bundle). The first create of an image on a server builds that tree (stasis/base 0.29 s, stasis/code-interpreter 2.6 s, measured on a host at load average 11); later creates and restores find it on disk. The agent's start is some 155 system calls before it answers, each a trap into gVisor (40-100 µs on a loaded 2-core host), about 90 of them the Go runtime's before main(): the agent's runtime is patched (patches/go, applied by scripts/build-agent.sh for the Go release it was made for) to leave the signals the agent never uses (the real-time ones, SIGPROF, SIGWINCH) out of its start, 50 system calls for its signal handlers instead of 114; the agent listens without Go's Multipath TCP and IPv6 probes (12 fewer); stasis's runsc calibrates the sandbox's clocks during its boot (patches/gvisor 0003), so the time reads among them go through the vDSO instead, and the agent does not name its memory mappings (a prctl each). Raw runsc is the same binary. \"From a template snapshot\" builds a template from stasis/minimal first (stasis boots and snapshots it; not timed) and then creates sandboxes that restore that snapshot; stasis answers the create once the snapshot is restored and hands the restored agent its own secret right after (requests wait for that, so the \"→ first command\" row includes it). The baseline restores a checkpoint of an idle container into new containers; the row \"against runsc on the same sandbox\" restores a checkpoint of a container running what the stasis sandbox runs (stasis-agent as init, answering) instead."},
		{"exec", "Exec round trip", "On one idle sandbox (stasis/minimal) after three warm-up runs. stasis: HTTP on loopback to stasisd, then stasisd to the agent over the sandbox's veth. The agent keeps a spare `/bin/sh` started ahead of the next command and hands the command to it, so a command does not wait for a shell to be created (15-20 ms in gVisor); the spare is replaced after each command, so back-to-back commands wait for that instead. That is the floor of a tight loop that needs a new process per command: the sandbox has one vCPU, and two processes started at once inside it take as long as one after the other (measured), so more spares would only serve the first commands of a burst; starting the replacement as soon as the spare is taken made isolated commands slower (it competes with the command's own exit). Nor would a cheaper way to make the shell help: the cost is the new process, not exec or dynamic loading. Measured inside a sandbox on a loaded host (ms per process, 40 in a loop, three rounds): in stasis/minimal (static bash) a subshell `( : )`, which forks without exec, 14-32; `/bin/true` 28-32; `sh -c :` 35-41; a static busybox `true` 27-44; in stasis/base (dash, dynamic) 15-23, 13-16, 18-20 and 13-19. A new process costs in round trips between gVisor's sentry and the host stub process that runs the sandbox's code (each system call, page fault, and mmap or munmap the sentry makes in the stub: ~100 for a fork, ~150 for a fork and exec, measured; the stub processes come from a pool), a fork about half as much as a fork and exec; a zygote shell that forks ready spares instead of the agent starting /bin/sh was not built. The agent starts each shell with clone3 (CLONE_VFORK, CLONE_CLEAR_SIGHAND) and a child that makes only the system calls the start needs (process group, signal mask, user, directory, descriptors, process limit, exec), not Go's fork child, which reset each of the Go runtime's ~56 signal handlers with a system call of its own and reported through a pipe: 295-305 -> 198-207 system calls per back-to-back command, the agent's and the shell's (gVisor's strace, measured). The spare is started with SHELL set, so that bash does not look the login shell up in the account database (14 system calls) as it starts; its script gives SHELL back the value, not exported, that a new shell has. Where an isolated `true` goes (timestamps in stasisd and in the agent, 100 commands, load average 4.7; docs/density/NOTES.md): stasisd's token check and lookups 4%, the request reaching the agent's handler 14%, the agent preparing the command (account files, working directory) 5% and handing the script to the spare 4%, the spare shell waking, running the builtin and exiting until the agent has reaped it 54% (about half until the shell runs the command, half its exit, gVisor's teardown of the process and the SIGCHLD), the output pumps and the exit frame 7%; the agent answering without running anything takes 4 ms, the floor of the round trip through gVisor's network stack. The agent's watchdog looks at a new command 10 ms after its start, not at once (a look at once took about 1 ms of the sandbox's CPU from a `true`, measured), and a spare's output pipes are made ready for a buffered exec when the spare is started, not by each command. A reaper blocking in waitid instead of waiting for SIGCHLD did not shorten exit → reaped (about 1 ms either way, measured), so it was not kept. `true` is a shell builtin, `/bin/true` a program the shell forks and execs; runsc exec runs /bin/true directly. Every send through gVisor's network stack costs, so an exec keeps them few: stasisd sends the request with stdin already closed in one write, on a connection it dialed 30 ms after the previous command (so the handshake and the agent's accept are off the critical path; a command sent sooner dials its own, since a dial at once competed with the agent's start of its next spare shell), and the agent's 101 goes out with its first frame; for a buffered exec (POST /exec) the agent also holds its started frame until the command's first output or its exit, so a silent command's whole answer is one send (streams still get the started frame at once), and the output it still finds once the shell has exited (up to 64 KiB) goes out with the exit frame, one send instead of one more per output (for a command printing a line: 1.09-1.15 -> 0.62-0.87 ms from the shell's exit status to the exit frame sent, measured). Output: the command's stdout and stderr are 1 MiB pipes (F_SETPIPE_SZ; 64 KiB by default), and for a buffered exec (POST /exec, whose answer goes out at the exit anyway) the agent reads a pipe again only 10 ms after a read that found it less than a quarter full (up to 80 ms while the command is silent), or at once when the shell exits (sleeping until the pipe should be half full at the rate it filled, 7 reads per MB instead of ~30, did not lower the sandbox's CPU: measured); it reads a duplicate of the pipe that is in no poller, since with the pipe in Go's poller every write of the command woke the agent whether it read or not. `yes | head -c 1048576` writes 4 KiB at a time, and the agent used to wake, read and send for almost every write: about 210 reads and frames per MB, whose sends alone took 40-150 ms of the sandbox's one vCPU on a loaded host; gathered, it is 15-25 (measured). (Gathering for 2 ms with the default 64 KiB pipe had not helped: the pipe filled and `head` blocked instead.) Streams (/exec/stream, sessions) still send output as it comes. What remains over raw runsc, whose `head` writes straight into a host pipe (a CPU profile of the sentry puts the difference in systrap's switches to and wake-ups of the agent's threads, for the agent's system calls and its Go runtime's, about 400-600 per MB printed, and only 2-3 ms per MB in the network stack; docs/density/NOTES.md), and the client's decode of the JSON answer, part of stasis's figure (Go's `json.Unmarshal` of the 1 MB print's answer, an escape every other byte: 17-35 ms on a host at load 12, Python's `json.loads` 15 ms, measured; the baseline copies 1 MB from a pipe): the output crosses the sandbox's network stack to stasisd, which builds the JSON answer (about 1.3 ms of CPU per MB of `y\n`, written byte by byte into a body allocated at its size: 3.5-4 ms with a copy per run of plain bytes, measured). stasisd's token check and the sandbox's lookups are statements prepared once (SQLite parsed and planned them on every request: 0.2-0.35 ms -> 0.05-0.07 ms for the three, measured), and the agent learns of changes to /etc/passwd and /etc/group from an inotify watch instead of two stats per command."},
		{"files", "Files", "Random data into the overlay (disk-backed upper layer) at /home/user. A read's bytes are counted as they come, 32 KiB at a time on both sides (stasis: the HTTP body; runsc: the pipe from runsc exec)."},
		{"pause", "Pause and resume (cold: memory freed)", "A stasis/base sandbox in which python3 allocates and touches N MB (one non-zero byte per 4 KiB page, so checkpoint cannot skip pages) and sleeps. stasis pause = record the sandbox pausing in the store and, meanwhile, ask the agent to drop its spare shell and return its free heap (stasisd closes its idle connections to the agent first, sends the request on the one it dialed ahead for the next command if there is one, and ends those whose exchange the agent ends, a command's and the quiesce request's, with a reset: the agent's end of them would otherwise wait in TIME_WAIT in the sandbox's network stack and go into every snapshot, about 300 more kernel objects to save and restore per pause/resume cycle, measured), freeze (through the sandbox's control socket), checkpoint to disk (runsc checkpoint --leave-running, which used to save the sandbox's network interfaces too, for every restore to decode and discard, ~2,000 kernel objects: stasis's runsc leaves them out, patches/gvisor 0004; a checkpoint that stops the sandbox, the baseline's, never had them; nor does it save procfs's dentry cache, in which a /proc/<pid> directory that anything in the sandbox looked up stayed with its ~30 inodes, ~1,900 kernel objects: patches/gvisor 0005, for the baselines too, which run the same runsc), record the sandbox paused and return (the pause rows' stasis_* fields are these steps as stasisd logs them: quiesce, before = the wait for the pausing record beyond the quiesce, freeze, checkpoint, record); the snapshot is then sealed (checksummed and fsynced) in the background while the sandbox stays frozen in RAM, after which the sandbox is stopped and everything freed. \"Until durable\" polls the sandbox until its snapshot is sealed. Resume is measured once the sandbox is on disk only: restore (the snapshot's checksums are checked meanwhile; stasis restores with the sandbox's CPU quota lifted to 2 cores and applies it as soon as the restore has returned, before the first command, while the baseline keeps its quota throughout) and wait until the agent's socket accepts connections; the agent's first answer (measured here 7-15 ms after the connect succeeds, against about 2 ms for later ones: the restored agent's first run inside gVisor) falls in \"resume → first command\", as the same first run does in the baseline. The connection that proved the agent's socket accepting is kept for the first command (one handshake, and one accept, read and close in the restored agent's first run, fewer). The rows that end with a first command give stasis_command_ms, the command's part: after POST resume returned, or, for an exec on a paused sandbox, the exec less the steps stasisd logs for its resume (given on that row as stasis_*_ms too). The transparent rows come from a loop of their own in which each pause follows the previous resume at once (no 10 s settle), and their medians have come out 40 ms above or below resume → first command at 10 MB from one run to the next: compare their stasis_runsc_ms and stasis_command_ms with the other rows' before reading a difference of the totals as the command's. Host dirty pages are written back (untimed) before every pause, and both sandboxes have run at least 10 s since their last restore: right after a restore gVisor checkpoints memory much faster (1 GB in 0.6 s instead of 1.6 s here), which would favour whichever side was restored last. The \"cold resume\" rows first evict the snapshot's files from the page cache on both sides (fsync + posix_fadvise DONTNEED, untimed), as after a long pause on a busy host; stasis then restores the snapshot lazily, at every size: it checks the checksums of the small files (kernel state, pages metadata) while runsc restore --background starts (with --direct, O_DIRECT reads, for a pages file of 32 MiB or more), the sandbox runs once its kernel state is loaded, and its memory loads after (pages the sandbox touches first, each with the rest of its 1 MiB of memory, and the rest of the memory 300 ms after the sandbox last waited for a page: patches/gvisor 0007); once it is loaded stasis checks the pages file's checksums, with O_DIRECT reads for a large one (a mismatch stops the sandbox and fails it; a pause waits for that check). A snapshot still in the page cache is restored plainly (runsc copies its pages beside the kernel state's decode). The baseline runs a plain runsc restore, and in the row after it runsc restore --background --direct, the mode stasis uses for a large snapshot. A lazy restore goes on loading memory after the first command (stasis then checksums it); before the next sample, on either side (in the plain resume loop as well, where stasis's resume of a snapshot written with O_DIRECT, a large one, is lazy too and the baseline's checkpoint and restore follow it), the bench waits (untimed) until that has ended: stasis has removed the snapshot, runsc has closed the pages file. Without the wait, stasis's resume ran while the baseline's previous restore still loaded 1 GB (1.3-6 s of O_DIRECT reads and page filling on 2 cores), and the baseline's while stasis loaded and checked, so each sample paid for the one before."},
		{"warm", "Pause and resume (warm tier: frozen in RAM)", "The same kind of sandbox on a second stasisd started with `--warm-pause-window 1h`: pause still writes and seals the snapshot, but the sandbox stays frozen in RAM, so a resume within the window is a thaw (measured once the snapshot is durable). So is the exec on a warm-paused sandbox: before its pause the bench waits (untimed) until the cold-tier sandbox's transparent resume just before it has loaded and checked its memory, and after it until the snapshot is sealed, as the baseline's thaw comes after its fsync. Without those waits, at 1 GB the exec ran during the seal, which reads the whole image back from the disk (O_DIRECT) to checksum it and syncs it, and during the other sandbox's lazy memory load: 217-1088 ms in three runs instead of about a thaw plus an exec (docs/density/NOTES.md). The last two rows per size are a bare `runsc pause`/`resume` with no snapshot, which stasis does not offer."},
		{"network", "Network: egress and preview URLs", "How these are measured and what the baseline columns are: see \"What the baseline is\" above. Goals (issue 12): egress throughput at least 0.9× of plain NAT (`throughput_vs_raw`), connection setup and preview requests at most +1 ms at p50 (`p50_overhead_ms`)."},
		{"secrets", "Secrets: injection at egress", "From the network phase's stasis sandbox to its test internet's HTTPS site, with a bearer secret bound to the sandbox (`secret.test`): through the injecting proxy, against the same request to the same site under a name no secret names (`bench.test`), whose TLS the proxy passes through unread. Both columns are stasis. Goals (issue 13): at most +2 ms at p50 for small requests on a kept-alive connection (`p50_overhead_ms`), and at least 0.8× pass-through throughput for a large body (`throughput_vs_passthrough`)."},
		{"density", "Density", ""},
		{"snapshot-upload", "Snapshot upload to an object store", "A directory shaped like a checkpoint (one memory file of N MB of random bytes, a few small files) uploaded to a real S3 server (versitygw on loopback, same machine). stasis: its snapshot uploader (SHA-256 of every file, then multipart in 16 MiB parts, 4 at a time, manifest last), timed until the snapshot is portable. The \"runsc\" columns here are a bare aws-sdk-go-v2 client sending the same files (PutObject, or multipart with the same part size and concurrency), alternately with stasis; the ratio is what checksums and the manifest add."},
		{"cluster", "Cluster: resume on another node, and the forwarding hop", clusterIntro},
	}
	for _, g := range groups {
		var rows []Row
		for _, row := range r.Rows {
			if row.Group == g.id {
				rows = append(rows, row)
			}
		}
		if len(rows) == 0 && g.id != "density" {
			continue
		}
		w("## %s\n\n", g.title)
		if g.id == "density" {
			writeDensity(&b, r.Density)
		}
		if g.intro != "" {
			w("%s\n\n", g.intro)
		}
		if len(rows) == 0 {
			continue
		}
		w("| measurement | stasis median | stasis p95 | runsc median | runsc p95 | ratio | n |\n")
		w("| --- | ---: | ---: | ---: | ---: | ---: | ---: |\n")
		for _, row := range rows {
			ratio := "—"
			if row.Ratio != nil {
				ratio = fmt.Sprintf("%.2f×", *row.Ratio)
			}
			sm, sp := cell(row.Stasis, median), cell(row.Stasis, p95)
			switch row.Status {
			case "not_available":
				sm, sp = "not yet available", ""
			case "stasis_not_available":
				sm, sp = "no such tier", ""
			}
			n := 0
			if row.Stasis != nil {
				n = row.Stasis.N
			} else if row.Raw != nil {
				n = row.Raw.N
			}
			ns := "—"
			if n > 0 {
				ns = fmt.Sprint(n)
			}
			w("| %s | %s | %s | %s | %s | %s | %s |\n", row.Name, sm, sp, cell(row.Raw, median), cell(row.Raw, p95), ratio, ns)
		}
		w("\n")
		var notes []string
		for _, row := range rows {
			var parts []string
			if row.StasisOp != "" {
				parts = append(parts, "stasis: "+row.StasisOp)
			}
			if row.RawOp != "" {
				parts = append(parts, "runsc: "+row.RawOp)
			}
			if row.Note != "" {
				parts = append(parts, row.Note)
			}
			if x := extraText(row.Extra); x != "" {
				parts = append(parts, x)
			}
			if len(parts) > 0 {
				notes = append(notes, fmt.Sprintf("- *%s*: %s.", row.Name, strings.Join(parts, "; ")))
			}
		}
		if len(notes) > 0 {
			w("<details><summary>what exactly was timed</summary>\n\n%s\n\n</details>\n\n", strings.Join(notes, "\n"))
		}
	}

	// Where stasis adds the most over runsc.
	var ranked []Row
	for _, row := range r.Rows {
		// In these groups the second column is not runsc (a bare S3
		// client; stasis on the owner node).
		if row.Group == "snapshot-upload" || row.Group == "cluster" {
			continue
		}
		if row.Ratio != nil && row.Stasis != nil && row.Stasis.Unit == "ms" {
			ranked = append(ranked, row)
		}
	}
	slices.SortFunc(ranked, func(a, b Row) int {
		da, db := a.Stasis.Median-a.Raw.Median, b.Stasis.Median-b.Raw.Median
		switch {
		case da > db:
			return -1
		case da < db:
			return 1
		}
		return 0
	})
	if len(ranked) > 0 {
		w("## Where stasis adds the most time over runsc\n\n")
		w("By absolute difference of medians (stasis − runsc):\n\n")
		for i, row := range ranked {
			if i == 6 {
				break
			}
			w("%d. %s: +%s ms (%.2f×)\n", i+1, row.Name, num(row.Stasis.Median-row.Raw.Median), *row.Ratio)
		}
		w("\n")
	}

	w("## In-process Go benchmarks\n\n")
	w("These need no sandbox and show regressions in hot paths; run them with `go test -run '^$' -bench . PACKAGE`.\n\n")
	if len(r.GoBenchmarks) == 0 {
		w("None in the tree yet.\n\n")
	} else {
		w("| package | benchmark | what it measures |\n| --- | --- | --- |\n")
		for _, gb := range r.GoBenchmarks {
			w("| `%s` | `%s` | %s |\n", gb.Package, gb.Name, strings.ReplaceAll(gb.Doc, "|", "\\|"))
		}
		w("\n")
	}

	if len(r.Problems) > 0 {
		w("## Problems during this run\n\n")
		for _, p := range r.Problems {
			w("- %s\n", strings.ReplaceAll(p, "\n", " "))
		}
		w("\n")
	}

	w("## Reproduce\n\n")
	w("```sh\nmake bench         # full run (about 10 minutes), rewrites docs/BENCHMARKS.md and docs/benchmarks.json\n")
	w("make bench-quick   # harness check in under 2 minutes; writes to a temp dir\n")
	w("make bench-density # make bench with the density phase at scale (300 active, 2,000 paused; 20-40 minutes more)\n```\n\n")
	w("Both need root and `make setup` (runsc and the images). Phase durations of this run: ")
	var ph []string
	for _, k := range []string{"create", "exec", "files", "pause-resume", "network", "e2b", "density", "snapshot-upload", "cluster"} {
		if v, ok := r.Phases[k]; ok {
			ph = append(ph, fmt.Sprintf("%s %.0f s", k, v))
		}
	}
	w("%s.\n", strings.Join(ph, ", "))
	return b.String()
}

// hostWasBusy: other work competed with the run (CPU busy before it, or a
// 1-minute load average above the core count at its start or end).
func hostWasBusy(m Machine) bool {
	load1 := func(s string) float64 {
		var v float64
		fmt.Sscan(s, &v)
		return v
	}
	n := float64(max(1, m.NProc))
	return m.BusyStart > 25*n || load1(m.LoadStart) > n || load1(m.LoadEnd) > n
}

// renderFromJSON rewrites BENCHMARKS.md (and normalises benchmarks.json)
// in the directory of a benchmarks.json, without measuring again: for
// changes to the report's layout.
func renderFromJSON(path string) error {
	data, err := os.ReadFile(path)
	if err != nil {
		return err
	}
	var r Report
	if err := json.Unmarshal(data, &r); err != nil {
		return fmt.Errorf("%s: %w", path, err)
	}
	if f := strings.Fields(r.Command); len(f) > 0 && strings.Contains(f[0], "/") {
		r.Command = strings.Join(append([]string{"stasis-bench"}, f[1:]...), " ")
	}
	return writeReport(filepath.Dir(path), &r)
}

func writeDensity(b *strings.Builder, d *Density) {
	if d == nil {
		return
	}
	w := func(format string, args ...any) { fmt.Fprintf(b, format, args...) }
	bound := func(held int, reached, byTime, byMemory, bySlowdown bool, failure string, secs float64) string {
		switch {
		case reached:
			return fmt.Sprintf("**≥ %d** (the harness's bound; nothing failed; took %.0f s)", held, secs)
		case failure != "":
			return fmt.Sprintf("**%d**, then: %s", held, strings.ReplaceAll(failure, "\n", " "))
		case bySlowdown:
			return fmt.Sprintf("**%d** while creates stayed under 2× their first latency (the harness stopped there, after %.0f s)", held, secs)
		case byMemory:
			return fmt.Sprintf("**≥ %d** (the harness stopped when the host's MemAvailable fell under %.0f MiB, after %.0f s; nothing failed)", held, d.MemFloorMiB, secs)
		case byTime:
			return fmt.Sprintf("**≥ %d** (the harness stopped at its %.0f s time budget, nothing failed: filling up is slow)", held, d.TimeBudgetSeconds)
		}
		return fmt.Sprintf("**%d**", held)
	}
	w("Idle stasis/minimal sandboxes created one after the other (until the bound, a failure, the time budget, MemAvailable under a floor, or the last 5 creates' median over 2× the first 5's), then paused, then more created and paused %d at a time, up to the harness's bounds (%d active, %d paused; `make bench-density` raises them to 300 and 2,000).\n\n", max(d.FillWorkers, 1), d.ActiveBound, d.PausedBound)
	w("- Idle **active** sandboxes held at once: %s.\n", bound(d.ActiveHeld, d.ActiveReachedBound, d.ActiveStoppedByTime, d.ActiveStoppedByMemory, d.ActiveStoppedBySlowdown, d.ActiveFailure, d.ActiveSeconds))
	w("- **Paused** sandboxes held at once: %s.\n", bound(d.PausedHeld, d.PausedReachedBound, d.PausedStoppedByTime, d.PausedStoppedByMemory, false, d.PausedFailure, d.PausedSeconds))
	if d.CreateFirstMs != nil && d.CreateLastMs != nil {
		w("- Create latency, first 5 vs last 5 of the active ones: median %s ms vs %s ms", num(d.CreateFirstMs.Median), num(d.CreateLastMs.Median))
		if d.CreateFirstMs.Median > 0 {
			w(" (%.2f×)", d.CreateLastMs.Median/d.CreateFirstMs.Median)
		}
		w(".\n")
	}
	w("- Host MemAvailable dropped by %s MiB per idle active sandbox; pausing them gave back %s MiB in all (host-wide figures: other work on the host shows up in them).\n", num(d.MemAvailableDropPerActiveMiB), num(d.MemAvailableRecoveredMiB))
	w("- Host CPU (percent of one core) before creating: %s %%; with %d idle active sandboxes: %s %%.\n", num(d.IdleCPUPercentBefore), d.ActiveHeld, num(d.IdleCPUPercentActive))
	w("- stasisd with %d idle active sandboxes: RSS %s MiB, CPU %s %% of one core. Snapshot dir with %d paused: %s MiB.\n", d.ActiveHeld, num(d.StasisdRSSMiB), num(d.StasisdCPUPercentActive), d.PausedHeld, num(d.SnapshotDiskMiB))
	w("- Deleting all %d took %.1f s (4 at a time).\n\n", d.DeleteAllCount, d.DeleteAllSeconds)
}

func extraText(x map[string]any) string {
	if len(x) == 0 {
		return ""
	}
	keys := make([]string, 0, len(x))
	for k := range x {
		keys = append(keys, k)
	}
	slices.Sort(keys)
	var parts []string
	for _, k := range keys {
		switch v := x[k].(type) {
		case *Stat:
			if v != nil {
				parts = append(parts, fmt.Sprintf("%s median %s (p95 %s)", k, num(v.Median), num(v.P95)))
			}
		case map[string]any: // a *Stat read back from benchmarks.json
			md, _ := v["median"].(float64)
			pp, _ := v["p95"].(float64)
			parts = append(parts, fmt.Sprintf("%s median %s (p95 %s)", k, num(md), num(pp)))
		case float64:
			parts = append(parts, fmt.Sprintf("%s %s", k, num(v)))
		default:
			parts = append(parts, fmt.Sprintf("%s %v", k, v))
		}
	}
	return strings.Join(parts, ", ")
}

// networkBaseline explains the network phase's baselines.
const networkBaseline = "Network figures have their own baselines. Egress: the same raw runsc container (stasis/base) with its link plainly NATed (iptables MASQUERADE, forwarding enabled on its link and the test internet's only, anything else from its link dropped) to a test internet that the harness builds for itself (a network namespace with documentation-range addresses, a name server and a web server, from internal/testnet; no packet leaves the host); the stasis sandbox reaches the same site through stasisd's egress path (transparent proxy, rules, network log, stasisd's resolver). Both sides time curl inside the sandbox (its `time_total`): a download (100 MB; 8 MB in quick mode), small GETs by IP and by name, each with a new connection, and name lookups alone (python's `socket.gethostbyname` in a loop: stasisd's resolver against the test internet's name server asked through the NAT). The name server answers after 5 ms, as one across a network would, so the by-name rows include what stasisd's resolver cache saves (answers are cached for their TTL, 60 s here). Preview: a python HTTP/1.1 server in the stasis sandbox, fetched from the host through its preview URL on stasisd's API listener and straight at the sandbox's address, alternately, with a new connection per request and over one kept-alive connection; the server writes each response in one write (with python's default of headers and body in two writes on a socket without TCP_NODELAY, the host's delayed ACK adds about 40 ms to most responses on both paths). Waking: the first response byte of a preview request to a sandbox paused to disk, against stasis's own resume + exec of `true` (not raw runsc)."

// clusterIntro explains the cluster phase's rows.
const clusterIntro = "Two stasisd nodes (`bench-a`, `bench-b`) share a real PostgreSQL (Debian's, `initdb` + `pg_ctl` in a temp dir) and a real S3 server (versitygw serving a temp dir), all on loopback on this one machine, each node with its own port, data dir, netns prefix and subnet, and the same node key. " +
	"Both columns are stasis: the \"runsc\" columns of this table hold the figure the row is compared with, and the ratio is other node ÷ owner. " +
	"**Resume on the other node**: a stasis/base sandbox whose python holder touched N MB is paused and waited on until its snapshot is on disk only and in the object store (`pause.portable`); then, alternately in every repetition, it is resumed on the node that paused it (local: restore from its own disk) and, after another pause, resumed through the other node while the owner is drained (`POST /nodes/{name}/drain`, so it cannot take the resume; made active again right after): that node claims the sandbox, downloads the snapshot from S3 into its snapshot cache checking every file's SHA-256, and restores it. Each repetition moves the sandbox, so the two nodes swap roles. Both are timed from the resume call until a command checking the holder (`kill -0`) has answered; `download_ms` is the download and check alone, as the restoring node logs it, and `resume_call_*` the resume call alone. " +
	"Page cache: nothing is evicted, and both paths read what was written or read a moment before. The local resume restores the snapshot its pause wrote, which the upload has just read again; the other node downloads files the S3 server wrote a moment before, writes them through the page cache and restores from there. `pages_in_page_cache_local` and `pages_in_page_cache_s3_files` are the share of the memory file (the local one, and the S3 server's copy) in the page cache just before each resume (1 = all of it). So these rows compare warm against warm: a cold other-node resume (bucket on another machine, nothing cached) pays the network and the disk on top, and a cold local one the disk (see the cold rows of the pause section). " +
	"**Forwarding hop**: exec `true` on an idle stasis/minimal sandbox sent to the node that does not run it (which looks the owner up, in PostgreSQL or its 5 s owner cache, and proxies the request) against the same request sent to the owner, alternately, 40 ms apart so that the agent's spare shell is ready each time; `paired_difference_ms` is the per-pair difference. On a loaded host the hop costs more than its own work: each request wakes two more processes (the forwarding node's stasisd twice), and every wake-up waits for a CPU. The in-process Go benchmark `BenchmarkExecHop` (internal/cluster) times the hop alone over loopback HTTP."
