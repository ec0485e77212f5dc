#!/usr/bin/env bash
# Runs every test: go vet, the Go tests (real sandboxes: needs root, runsc and
# the built-in images from `make setup`), then the SDK compatibility suite.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"

export STASIS_RUNSC="${STASIS_RUNSC:-${RUNSC:-$ROOT/.cache/runsc/bin/runsc}}"
export STASIS_IMAGES_DIR="${STASIS_IMAGES_DIR:-${IMAGES_DIR:-$ROOT/.cache/images}}"
export STASIS_AGENT="${STASIS_AGENT:-$ROOT/bin/stasis-agent}"
# End-to-end tests use the binaries `make build` just made.
export STASIS_BIN_DIR="${STASIS_BIN_DIR:-$ROOT/bin}"
export PATH="$PATH:/usr/local/sbin:/usr/sbin:/sbin"

for f in "$STASIS_RUNSC" "$STASIS_AGENT"; do
	[ -x "$f" ] || { echo "test: $f is missing; run \`make setup build\` first" >&2; exit 1; }
done

echo "==> go vet ./..."
go vet ./...

echo "==> go test ./... (STASIS_RUNSC=$STASIS_RUNSC STASIS_IMAGES_DIR=$STASIS_IMAGES_DIR STASIS_AGENT=$STASIS_AGENT)"
go test -count=1 -timeout 60m ./...

echo "==> fuzzing request decoding and path handling briefly"
for target in "FuzzDecodeRequests ./internal/api" "FuzzValidatePath ./internal/api" \
	"FuzzUTF8Joiner ./internal/api" "FuzzCleanPath ./internal/agent" \
	"FuzzReadRequest ./internal/minihttp"; do
	set -- $target
	# A count, not a duration: Go 1.26's fuzz coordinator can report a bare
	# "context deadline exceeded" when a -fuzztime duration runs out
	# mid-call (go.dev/issue/75804, fixed in Go 1.27); a count has no deadline.
	go test -run '^$' -fuzz "^$1\$" -fuzztime 50000x "$2"
done

if [ -f test/compat/package.json ]; then
	echo "==> SDK compatibility tests (test/compat)"
	command -v npm >/dev/null || { echo "test: npm not found (Node 20 is needed for test/compat)" >&2; exit 1; }
	(cd test/compat && npm ci --no-audit --no-fund && npm test)
	echo "==> SDK compatibility tests through one node of a 3-node cluster (test/compat)"
	(cd test/compat && npm run test:cluster)
fi

if [ -f test/compat-e2b/package.json ]; then
	echo "==> E2B SDK compatibility tests (test/compat-e2b)"
	command -v npm >/dev/null || { echo "test: npm not found (Node 20 is needed for test/compat-e2b)" >&2; exit 1; }
	(cd test/compat-e2b && npm ci --no-audit --no-fund && npm test)
	echo "==> E2B SDK compatibility tests through node 1's E2B listener of a 3-node cluster (test/compat-e2b)"
	(cd test/compat-e2b && npm run test:cluster)
fi

echo "==> all tests passed"
