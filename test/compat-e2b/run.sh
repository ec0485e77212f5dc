#!/usr/bin/env bash
# Runs the E2B SDK compatibility suite (`npm test`): starts a fresh stasisd
# with its E2B listener on a free loopback port, its own data dir and a
# random API key, runs the tests with the unmodified e2b SDK pointed at it by
# E2B_API_URL, E2B_SANDBOX_URL and E2B_API_KEY only, checks that every public
# SDK method is covered or skipped with a reason (check/), deletes whatever
# sandboxes are left, stops the server, and exits non-zero if anything failed.
#
# It builds nothing: bin/stasisd and bin/stasis-agent come from `make build`
# (`make test` builds them first), runsc and the images from `make setup`.
#
# Environment:
#   STASIS_IMAGES_DIR   built images      (default ../../.cache/images)
#   STASIS_RUNSC        runsc binary      (default ../../.cache/runsc/bin/runsc)
#   STASIS_AGENT        stasis-agent      (default ../../bin/stasis-agent)
#   STASIS_COMPAT_KEEP=1                  keep the data dir, server log and test results
# Arguments, if any, replace the default test files (tests/*.test.mjs), e.g.
#   npm test -- tests/seed.test.mjs
#   npm test -- --test-name-pattern=spawn tests/*.test.mjs
set -euo pipefail

COMPAT="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
ROOT="$(cd "$COMPAT/../.." && pwd)"
cd "$COMPAT"

STASISD="$ROOT/bin/stasisd"
AGENT="${STASIS_AGENT:-$ROOT/bin/stasis-agent}"
IMAGES_DIR="${STASIS_IMAGES_DIR:-$ROOT/.cache/images}"
RUNSC="${STASIS_RUNSC:-$ROOT/.cache/runsc/bin/runsc}"
export PATH="$PATH:/usr/local/sbin:/usr/sbin:/sbin"

die() { printf 'compat-e2b: %s\n' "$*" >&2; exit 1; }

[ -x "$STASISD" ] || die "$STASISD is missing: run \`make build\` first (\`make test\` does)"
[ -x "$AGENT" ] || die "$AGENT is missing: run \`make build\` first (\`make test\` does)"
[ -x "$RUNSC" ] || die "runsc $RUNSC is missing: run \`make setup\` first, or set STASIS_RUNSC"
[ -d "$IMAGES_DIR" ] || die "images dir $IMAGES_DIR is missing: run \`make setup\` first, or set STASIS_IMAGES_DIR"
[ -d node_modules/e2b ] || die "node_modules is missing: run \`npm ci\` in test/compat-e2b first"
command -v flock >/dev/null || die "flock (util-linux) is missing: it guards this server's network slot"
[ "$(id -u)" -eq 0 ] || die "stasisd runs gVisor sandboxes and needs root"
node -e 'process.exit(Number(process.versions.node.split(".")[0]) >= 20 ? 0 : 1)' ||
	die "Node $(node --version) is too old: the suite needs Node 20 or later"

# Free loopback ports: bind port 0 and take what the kernel gave.
free_port() { node -e 'const s = require("node:net").createServer(); s.listen(0, "127.0.0.1", () => { console.log(s.address().port); s.close() })'; }
PORT="$(free_port)"
E2B_PORT="$(free_port)"
# The stasis API is used only to start, check and clean up the server.
STASIS_URL="http://127.0.0.1:$PORT"
STASIS_API_KEY="stasis_compat_$(od -An -N24 -tx1 /dev/urandom | tr -d ' \n')"
export STASIS_API_KEY
# All the tests get: E2B's three variables.
export E2B_API_URL="http://127.0.0.1:$E2B_PORT" E2B_SANDBOX_URL="http://127.0.0.1:$E2B_PORT" E2B_API_KEY="$STASIS_API_KEY"

# This server's network slot: its own /22 of link-local space and its own
# netns name prefix, so it never collides with another stasisd on the host
# (another run of this suite, `make run`, the Go tests). The slots and their
# flocks are internal/testenv's (lockSlot): the same directory, the same
# subnet per slot. The lock is held on fd 9 until this script and every
# process it started have exited.
SLOTS=48 # internal/testenv: slots
SLOT_DIR="${TMPDIR:-/tmp}/stasis-testenv-slots"
mkdir -p "$SLOT_DIR"
SLOT=""
start=$(($$ % SLOTS))
for i in $(seq 0 $((SLOTS - 1))); do
	n=$(((start + i) % SLOTS))
	exec 9>>"$SLOT_DIR/$n.lock"
	if flock -n 9; then
		SLOT=$n
		break
	fi
	exec 9>&-
done
[ -n "$SLOT" ] || die "no free network slot in $SLOT_DIR (too many stasisd test servers at once)"
SUBNET="169.254.$((4 + SLOT * 4)).0/22"
NETNS_PREFIX="ste$SLOT" # this server's network namespaces: ste<slot>-<sandbox id>

DATA="$(mktemp -d "${TMPDIR:-/tmp}/stasis-compat-e2b.XXXXXX")"
LOG="$DATA.log"
RESULTS="$DATA.results" # what every test did (lib/results-reporter.mjs)
SERVER_PID=""

# Unmounts whatever the runtime may have left mounted under the data dir, so
# that removing it never reaches into a mounted filesystem.
unmount_under() {
	local dir="$1" m
	awk -v d="$dir/" 'index($2, d) == 1 { print $2 }' /proc/self/mounts | sort -r | while read -r m; do
		umount -l "$m" 2>/dev/null || true
	done
}

finish() {
	local rc=$? # the test runner's status, or why we stopped early
	trap - EXIT INT TERM
	if [ -n "$SERVER_PID" ] && kill -0 "$SERVER_PID" 2>/dev/null; then
		echo "==> deleting leftover templates and sandboxes"
		STASIS_URL="$STASIS_URL" node ../compat/lib/cleanup.mjs || { echo "compat-e2b: some templates or sandboxes could not be deleted (see above)" >&2; rc=1; }
		echo "==> stopping stasisd (pid $SERVER_PID)"
		kill -TERM "$SERVER_PID" 2>/dev/null || true
		for _ in $(seq 1 300); do
			kill -0 "$SERVER_PID" 2>/dev/null || break
			sleep 0.1
		done
		if kill -0 "$SERVER_PID" 2>/dev/null; then
			echo "compat-e2b: stasisd did not stop within 30s; killing it" >&2
			kill -KILL "$SERVER_PID" 2>/dev/null || true
		fi
		wait "$SERVER_PID" 2>/dev/null || true
	fi
	# Safety net: gVisor sandboxes outlive stasisd by design. Any still in
	# this server's runsc root after the cleanup above is a leak: remove it.
	if [ -d "$DATA/runsc" ]; then
		local ids
		ids="$("$RUNSC" --root "$DATA/runsc" list -quiet 2>/dev/null || true)"
		if [ -n "$ids" ]; then
			echo "compat-e2b: sandboxes left running after cleanup: $(echo $ids); removing them" >&2
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
		rm -rf --one-file-system "$DATA" 2>/dev/null || echo "compat-e2b: could not remove all of $DATA" >&2
		rm -f "$RESULTS"
		[ "$rc" -ne 0 ] || rm -f "$LOG"
	fi
	exit "$rc"
}
trap finish EXIT
trap 'exit 130' INT TERM

echo "==> starting stasisd on $STASIS_URL (data dir $DATA, log $LOG, subnet $SUBNET, netns prefix $NETNS_PREFIX)"
"$STASISD" serve \
	--listen "127.0.0.1:$PORT" \
	--e2b-listen "127.0.0.1:$E2B_PORT" \
	--data-dir "$DATA" \
	--images-dir "$IMAGES_DIR" \
	--runsc "$RUNSC" \
	--agent "$AGENT" \
	--subnet "$SUBNET" \
	--netns-prefix "$NETNS_PREFIX" \
	>"$LOG" 2>&1 &
SERVER_PID=$!

node --input-type=module -e '
const [url, pid] = process.argv.slice(1)
const deadline = Date.now() + 60_000
const alive = () => { try { process.kill(Number(pid), 0); return true } catch { return false } }
for (;;) {
  try {
    const res = await fetch(url + "/health", { signal: AbortSignal.timeout(2000) })
    if (res.ok) break
  } catch {}
  if (!alive()) { console.error("compat-e2b: stasisd exited during startup"); process.exit(1) }
  if (Date.now() > deadline) { console.error("compat-e2b: stasisd did not answer GET /health within 60s"); process.exit(1) }
  await new Promise((r) => setTimeout(r, 200))
}
' "$STASIS_URL" "$SERVER_PID" || exit 1

echo "==> running the e2b SDK compatibility suite"
args=("$@")
[ ${#args[@]} -gt 0 ] || args=(tests/*.test.mjs)
status=0
node --test --test-concurrency=1 \
	--test-reporter=spec --test-reporter-destination=stdout \
	--test-reporter=../compat/lib/results-reporter.mjs --test-reporter-destination="$RESULTS" \
	"${args[@]}" || status=$?

# Coverage of the SDK is checked against what a full run did; a subset
# (arguments given) cannot tell a missing test from one left out.
if [ $# -eq 0 ]; then
	echo "==> checking that every public e2b method is covered or skipped with a reason"
	STASIS_COMPAT_RESULTS="$RESULTS" node --test --test-reporter=spec check/*.test.mjs || status=1
else
	echo "==> a subset ran: coverage is checked only on a full run (\`npm test\` without arguments)"
fi
exit "$status"
