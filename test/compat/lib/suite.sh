# Shared by the SDK compatibility suites (test/compat/run.sh for
# @superserve/sdk, test/compat-e2b/run.sh for e2b and @e2b/code-interpreter):
# a fresh stasisd on free loopback ports with its own data dir, network slot
# and random API key; the node test run with a results file; the check of a
# full run; and the cleanup of whatever is left. Source it, then call
# suite_init, suite_start_server, suite_run and suite_check.
#
# The caller sets before suite_init:
#   SUITE       its name, for messages ("compat", "compat-e2b")
#   NETNS_TAG   its netns name prefix, three letters ("stc", "ste")
#   NEEDS       node_modules/<dir> entries that `npm ci` must have made
#
# It builds nothing: bin/stasisd and bin/stasis-agent come from `make build`
# (`make test` builds them first), runsc and the images from `make setup`.
# Environment:
#   STASIS_IMAGES_DIR   built images      (default ../../.cache/images)
#   STASIS_RUNSC        runsc binary      (default ../../.cache/runsc/bin/runsc)
#   STASIS_AGENT        stasis-agent      (default ../../bin/stasis-agent)
#   STASIS_COMPAT_KEEP=1                  keep the data dir, server log and test results

set -euo pipefail

COMPAT="$(cd "$(dirname "${BASH_SOURCE[1]}")" && pwd)" # the suite's directory
ROOT="$(cd "$COMPAT/../.." && pwd)"
LIB="$ROOT/test/compat/lib"
cd "$COMPAT"

STASISD="$ROOT/bin/stasisd"
AGENT="${STASIS_AGENT:-$ROOT/bin/stasis-agent}"
IMAGES_DIR="${STASIS_IMAGES_DIR:-$ROOT/.cache/images}"
RUNSC="${STASIS_RUNSC:-$ROOT/.cache/runsc/bin/runsc}"
export PATH="$PATH:/usr/local/sbin:/usr/sbin:/sbin"

die() { printf '%s: %s\n' "$SUITE" "$*" >&2; exit 1; }

# A free loopback port: bind port 0 and take what the kernel gave.
free_port() { node -e 'const s = require("node:net").createServer(); s.listen(0, "127.0.0.1", () => { console.log(s.address().port); s.close() })'; }

suite_init() {
	[ -x "$STASISD" ] || die "$STASISD is missing: run \`make build\` first (\`make test\` does)"
	[ -x "$AGENT" ] || die "$AGENT is missing: run \`make build\` first (\`make test\` does)"
	[ -x "$RUNSC" ] || die "runsc $RUNSC is missing: run \`make setup\` first, or set STASIS_RUNSC"
	[ -d "$IMAGES_DIR" ] || die "images dir $IMAGES_DIR is missing: run \`make setup\` first, or set STASIS_IMAGES_DIR"
	local m
	for m in $NEEDS; do
		[ -d "node_modules/$m" ] || die "node_modules is missing: run \`npm ci\` in test/$SUITE first"
	done
	command -v flock >/dev/null || die "flock (util-linux) is missing: it guards this server's network slot"
	[ "$(id -u)" -eq 0 ] || die "stasisd runs gVisor sandboxes and needs root"
	node -e 'process.exit(Number(process.versions.node.split(".")[0]) >= 20 ? 0 : 1)' ||
		die "Node $(node --version) is too old: the suite needs Node 20 or later"

	PORT="$(free_port)"
	STASIS_URL="http://127.0.0.1:$PORT"
	STASIS_API_KEY="stasis_compat_$(od -An -N24 -tx1 /dev/urandom | tr -d ' \n')"
	export STASIS_URL STASIS_API_KEY

	# This server's network slot: its own /22 of link-local space and its
	# own netns name prefix, so it never collides with another stasisd on
	# the host (another suite run, `make run`, the Go tests). The slots and
	# their flocks are internal/testenv's (lockSlot): the same directory,
	# the same subnet per slot. The lock is held on fd 9 until this script
	# and every process it started have exited.
	local slots=48 # internal/testenv: slots
	local slot_dir="${TMPDIR:-/tmp}/stasis-testenv-slots" start i n
	mkdir -p "$slot_dir"
	SLOT=""
	start=$(($$ % slots))
	for i in $(seq 0 $((slots - 1))); do
		n=$(((start + i) % slots))
		exec 9>>"$slot_dir/$n.lock"
		if flock -n 9; then
			SLOT=$n
			break
		fi
		exec 9>&-
	done
	[ -n "$SLOT" ] || die "no free network slot in $slot_dir (too many stasisd test servers at once)"
	SUBNET="169.254.$((4 + SLOT * 4)).0/22"
	NETNS_PREFIX="$NETNS_TAG$SLOT" # this server's network namespaces: <tag><slot>-<sandbox id>

	DATA="$(mktemp -d "${TMPDIR:-/tmp}/stasis-$SUITE.XXXXXX")"
	LOG="$DATA.log"
	RESULTS="$DATA.results" # what every test did (lib/results-reporter.mjs)
	SERVER_PID=""
	CLUSTER_PID=""
	trap suite_finish EXIT
	trap 'exit 130' INT TERM
}

# Unmounts whatever the runtime may have left mounted under the data dir, so
# that removing it never reaches into a mounted filesystem.
unmount_under() {
	local dir="$1" m
	awk -v d="$dir/" 'index($2, d) == 1 { print $2 }' /proc/self/mounts | sort -r | while read -r m; do
		umount -l "$m" 2>/dev/null || true
	done
}

suite_finish() {
	local rc=$? # the test runner's status, or why we stopped early
	trap - EXIT INT TERM
	if [ -n "$SERVER_PID" ] && kill -0 "$SERVER_PID" 2>/dev/null; then
		echo "==> deleting leftover templates and sandboxes"
		node "$LIB/cleanup.mjs" || { echo "$SUITE: some templates or sandboxes could not be deleted (see above)" >&2; rc=1; }
		echo "==> stopping stasisd (pid $SERVER_PID)"
		kill -TERM "$SERVER_PID" 2>/dev/null || true
		for _ in $(seq 1 300); do
			kill -0 "$SERVER_PID" 2>/dev/null || break
			sleep 0.1
		done
		if kill -0 "$SERVER_PID" 2>/dev/null; then
			echo "$SUITE: stasisd did not stop within 30s; killing it" >&2
			kill -KILL "$SERVER_PID" 2>/dev/null || true
		fi
		wait "$SERVER_PID" 2>/dev/null || true
	fi
	if [ -n "$CLUSTER_PID" ] && kill -0 "$CLUSTER_PID" 2>/dev/null; then
		echo "==> deleting leftover templates and sandboxes"
		node "$LIB/cleanup.mjs" || { echo "$SUITE: some templates or sandboxes could not be deleted (see above)" >&2; rc=1; }
		echo "==> stopping the cluster (pid $CLUSTER_PID)"
		kill -TERM "$CLUSTER_PID" 2>/dev/null || true
		wait "$CLUSTER_PID" 2>/dev/null || true
	fi
	# Safety net: gVisor sandboxes outlive stasisd by design. Any still in
	# this server's runsc root after the cleanup above is a leak: remove it.
	if [ -d "$DATA/runsc" ]; then
		local ids id
		ids="$("$RUNSC" --root "$DATA/runsc" list -quiet 2>/dev/null || true)"
		if [ -n "$ids" ]; then
			echo "$SUITE: sandboxes left running after cleanup: $(echo $ids); removing them" >&2
			for id in $ids; do
				"$RUNSC" --root "$DATA/runsc" delete -force "$id" >/dev/null 2>&1 || true
				# Its network link: the netns (deleting it removes the veth pair).
				ip netns del "$NETNS_PREFIX-$id" 2>/dev/null || true
			done
			rc=1
		fi
	fi
	if [ "$rc" -ne 0 ] && [ -f "$LOG" ]; then
		echo "==> last 60 lines of the stasisd log ($LOG)"
		tail -n 60 "$LOG" || true
	fi
	if [ "${STASIS_COMPAT_KEEP:-}" = 1 ]; then
		echo "==> kept $DATA, $LOG and $RESULTS"
	else
		unmount_under "$DATA"
		rm -rf --one-file-system "$DATA" 2>/dev/null || echo "$SUITE: could not remove all of $DATA" >&2
		rm -f "$RESULTS"
		[ "$rc" -ne 0 ] || rm -f "$LOG"
	fi
	exit "$rc"
}

# suite_start_server starts stasisd with the suite's own flags added, and
# waits until it answers. Sandboxes get no egress by default and no upstream
# resolver: the suites only check that stasisd blocks and logs, and nothing
# leaves the machine.
suite_start_server() {
	echo "==> starting stasisd on $STASIS_URL (data dir $DATA, log $LOG, subnet $SUBNET, netns prefix $NETNS_PREFIX)"
	"$STASISD" serve \
		--listen "127.0.0.1:$PORT" \
		--data-dir "$DATA" \
		--images-dir "$IMAGES_DIR" \
		--runsc "$RUNSC" \
		--agent "$AGENT" \
		--subnet "$SUBNET" \
		--netns-prefix "$NETNS_PREFIX" \
		--egress deny \
		--dns-upstream 127.0.0.1:1 \
		"$@" \
		>"$LOG" 2>&1 &
	SERVER_PID=$!

	node --input-type=module -e '
const [url, pid, suite] = process.argv.slice(1)
const deadline = Date.now() + 60_000
const alive = () => { try { process.kill(Number(pid), 0); return true } catch { return false } }
for (;;) {
  try {
    const res = await fetch(url + "/health", { signal: AbortSignal.timeout(2000) })
    if (res.ok) break
  } catch {}
  if (!alive()) { console.error(suite + ": stasisd exited during startup"); process.exit(1) }
  if (Date.now() > deadline) { console.error(suite + ": stasisd did not answer GET /health within 60s"); process.exit(1) }
  await new Promise((r) => setTimeout(r, 200))
}
' "$STASIS_URL" "$SERVER_PID" "$SUITE" || exit 1
}

# suite_start_cluster starts a 3-node cluster instead (scripts/cluster.sh:
# PostgreSQL, versitygw and three stasisd, each with the suite's flags) and
# points the suite at node 1: every call goes through one node's URL, and
# sandboxes land on all three.
suite_start_cluster() {
	local base i
	for i in $(seq 1 20); do # cluster.sh needs base+1..3, +21..23, +50 and +51 free
		base=$((20000 + RANDOM % 20000))
		(exec 3<>"/dev/tcp/127.0.0.1/$((base + 1))") 2>/dev/null || break
	done
	STASIS_URL="http://127.0.0.1:$((base + 1))"
	echo "==> starting a 3-node cluster, node 1 on $STASIS_URL (log $LOG)"
	# A lease well above the heartbeat's worst delay on a loaded 2-core
	# machine: a node taken for lost fails its active sandboxes.
	CLUSTER_NODE_LEASE="${CLUSTER_NODE_LEASE:-30s}" \
		CLUSTER_BASE_PORT="$base" CLUSTER_ENV_FILE="$DATA/cluster.env" CLUSTER_NODE_ARGS="$*" \
		IMAGES_DIR="$IMAGES_DIR" STASIS_RUNSC="$RUNSC" setsid "$ROOT/scripts/cluster.sh" >"$LOG" 2>&1 &
	CLUSTER_PID=$!
	for i in $(seq 1 1800); do
		[ -f "$DATA/cluster.env" ] && return 0
		kill -0 "$CLUSTER_PID" 2>/dev/null || { tail -n 60 "$LOG" >&2; die "the cluster exited during startup"; }
		sleep 0.1
	done
	die "the cluster did not come up within 180s (log $LOG)"
}

# suite_run runs the test files given (default tests/*.test.mjs) with node's
# test runner, node options first: suite_run [node options...] -- [files...].
# It records every test's result for suite_check, and sets STATUS.
suite_run() {
	local opts=()
	while [ $# -gt 0 ] && [ "$1" != -- ]; do
		opts+=("$1")
		shift
	done
	[ $# -eq 0 ] || shift
	local files=("$@")
	[ ${#files[@]} -gt 0 ] || files=(tests/*.test.mjs)
	STATUS=0
	node "${opts[@]}" --test \
		--test-reporter=spec --test-reporter-destination=stdout \
		--test-reporter="$LIB/results-reporter.mjs" --test-reporter-destination="$RESULTS" \
		"${files[@]}" || STATUS=$?
}

# suite_check runs check/*.test.mjs against the results of a full run
# (full: 1); a subset cannot tell a missing test from one left out.
suite_check() {
	local full="$1" what="$2"
	if [ "$full" = 1 ]; then
		echo "==> checking $what"
		STASIS_COMPAT_RESULTS="$RESULTS" node --test --test-reporter=spec check/*.test.mjs || STATUS=1
	else
		echo "==> a subset ran: $what is checked only on a full run (\`npm test\` without arguments)"
	fi
}
