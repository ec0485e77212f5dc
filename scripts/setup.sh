#!/usr/bin/env bash
# Prepares this machine to build, test and run stasis (called by `make setup`).
# Idempotent: a second run checks everything and skips what is done.
#
#   1. Debian packages (apt-get only when one is missing)
#   2. the pinned static runsc, with the patches in patches/gvisor applied, in
#      .cache/runsc/bin (or validates $STASIS_RUNSC)
#   2b. versitygw (an S3 server process for tests) in .cache/versitygw/bin
#   3. bin/stasisd and bin/stasis-applets, then the built-in images in $IMAGES_DIR
#      (a first build downloads Debian twice: stasis/base, and
#      stasis/code-interpreter with Jupyter, numpy, pandas and matplotlib,
#      which takes the longest)
#
# Environment: STASIS_RUNSC (operator-supplied runsc; else $RUNSC, else the
# pinned build), STASIS_RUNSC_DIR (where the pinned runsc is built: bin/runsc
# and src/, its patched source; default .cache/runsc), IMAGES_DIR (default
# .cache/images).
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"

# postgresql: the throwaway PostgreSQL servers of tests and `make cluster` (initdb + pg_ctl).
# patch: applies patches/gvisor to the pinned runsc source.
PACKAGES=(debootstrap busybox-static bash-static iptables iproute2 zip unzip ca-certificates docker-registry postgresql patch)
RUNSC_MODULE="gvisor.dev/gvisor@v0.0.0-20260905035102-160fafc42237"
# The pinned commit plus patches/gvisor. -pN counts revisions of the patch
# set: bump it with every change to patches/gvisor, so that a machine with an
# older patched build rebuilds (-p1, the reverted first version, could hang a
# plain restore; -p3 adds 0002, -p4 0003, -p5 0004, -p6 0005 and 0006, -p7 0007). runsc refuses to restore a checkpoint taken
# by a runsc of another version string.
RUNSC_VERSION="stasis-20260905-160fafc42237-p7"
RUNSC_DIR="${STASIS_RUNSC_DIR:-$ROOT/.cache/runsc}"
DEFAULT_RUNSC="$RUNSC_DIR/bin/runsc"
RUNSC="${STASIS_RUNSC:-${RUNSC:-$DEFAULT_RUNSC}}"
IMAGES_DIR="${IMAGES_DIR:-$ROOT/.cache/images}"

step() { printf '==> %s\n' "$*"; }
die() { printf 'setup: %s\n' "$*" >&2; exit 1; }

# with_heartbeat LABEL CMD...: runs CMD, printing "LABEL: still running,
# 2m30s elapsed" every 30 s so that a long, quiet build does not look hung.
with_heartbeat() {
	local label="$1" start rc=0 hb
	shift
	start=$(date +%s)
	(
		nap=""
		trap '[ -z "$nap" ] || kill "$nap" 2>/dev/null; exit 0' TERM
		while :; do
			sleep 30 &
			nap=$!
			wait "$nap"
			e=$(($(date +%s) - start))
			printf '    %s: still running, %dm%02ds elapsed\n' "$label" $((e / 60)) $((e % 60))
		done
	) &
	hb=$!
	"$@" || rc=$?
	kill "$hb" 2>/dev/null || true
	wait "$hb" 2>/dev/null || true
	return "$rc"
}

# runsc_is_pinned BINARY: does it run and report exactly the pinned version
# (not the unpatched build, whose version is a prefix of it)? The output is
# captured first: piping into `grep -q` lets grep exit at the first line, and
# runsc's second write then dies of SIGPIPE, which pipefail reports as failure.
runsc_is_pinned() {
	local out
	out="$("$1" --version 2>&1)" || return 1
	[[ "${out%%$'\n'*}" == "runsc version $RUNSC_VERSION" ]]
}

# build_runsc: copies the pinned gvisor module out of Go's module cache into
# $RUNSC_DIR/src, applies patches/gvisor/*.patch (each says why) and builds
# runsc from it into $DEFAULT_RUNSC. Static on purpose: a cgo build cannot
# re-exec itself for its umounter. Runs under with_heartbeat, where errexit
# does not apply: every step checks its own failure.
build_runsc() {
	local mod src="$RUNSC_DIR/src/gvisor" p
	mod="$(cd / && GOFLAGS= GOWORK=off go mod download -json "$RUNSC_MODULE" |
		sed -n 's/^[[:space:]]*"Dir": "\(.*\)",$/\1/p')" || return 1
	if [ -z "$mod" ] || [ ! -d "$mod" ]; then
		echo "setup: go mod download $RUNSC_MODULE gave no source directory" >&2
		return 1
	fi
	rm -rf "$src" && mkdir -p "$(dirname "$src")" "$(dirname "$DEFAULT_RUNSC")" &&
		cp -r "$mod" "$src" && chmod -R u+w "$src" || return 1
	for p in "$ROOT"/patches/gvisor/*.patch; do
		if ! patch -d "$src" -p1 --forward --quiet <"$p"; then
			echo "setup: patch $p does not apply to $RUNSC_MODULE" >&2
			return 1
		fi
	done
	(cd "$src" && GOFLAGS= GOWORK=off CGO_ENABLED=0 \
		go build -o "$DEFAULT_RUNSC.new" -ldflags "-X gvisor.dev/gvisor/runsc/version.version=$RUNSC_VERSION" ./runsc) &&
		mv "$DEFAULT_RUNSC.new" "$DEFAULT_RUNSC"
}

# A non-login root shell may lack the sbin dirs and Go's default location.
export PATH="$PATH:/usr/local/sbin:/usr/sbin:/sbin"
if ! command -v go >/dev/null && [ -x /usr/local/go/bin/go ]; then
	export PATH="$PATH:/usr/local/go/bin"
fi
command -v go >/dev/null || die "Go is not installed (stasis needs Go 1.26: https://go.dev/dl/)"

# --- 1. Debian packages -------------------------------------------------------
missing=()
for p in "${PACKAGES[@]}"; do
	if [ "$(dpkg-query -W -f='${db:Status-Status}' "$p" 2>/dev/null)" != "installed" ]; then
		missing+=("$p")
	fi
done
if [ ${#missing[@]} -eq 0 ]; then
	step "Debian packages: all installed, skipping"
else
	step "installing Debian packages: ${missing[*]}"
	[ "$(id -u)" -eq 0 ] || die "installing packages needs root (run as root, or install: ${missing[*]})"
	export DEBIAN_FRONTEND=noninteractive
	apt-get update -q
	apt-get install -y -q --no-install-recommends "${missing[@]}"
fi

# --- 2. runsc -----------------------------------------------------------------
if [ "$RUNSC" != "$DEFAULT_RUNSC" ]; then
	# Operator-supplied runsc: use it as is, only check that it runs.
	ver="$("$RUNSC" --version 2>&1)" || die "runsc $RUNSC does not run: $ver"
	ver="${ver%%$'\n'*}"
	step "runsc $RUNSC (operator-supplied): $ver"
	case "$ver" in
	*"$RUNSC_VERSION"*) ;;
	*) echo "    note: not the pinned version $RUNSC_VERSION; stasis is tested with that one" ;;
	esac
elif [ -x "$RUNSC" ] && runsc_is_pinned "$RUNSC"; then
	step "runsc $RUNSC_VERSION: already built, skipping"
else
	step "runsc $RUNSC_VERSION: building $RUNSC_MODULE with patches/gvisor (static; a cold build takes about 10-12 minutes on 2 cores)"
	start=$SECONDS
	with_heartbeat "runsc build" build_runsc || die "runsc build failed"
	runsc_is_pinned "$RUNSC" ||
		die "built runsc does not report version $RUNSC_VERSION"
	echo "    built in $((SECONDS - start))s"
fi

# --- 2b. versitygw (a real S3 server for tests and `make cluster`) -------------
# Built from the Go module proxy into .cache/versitygw/bin (about 3 minutes
# the first time, reusing Go's build cache); an flock keeps concurrent setups
# from building it twice.
VERSITYGW_MODULE="github.com/versity/versitygw/cmd/versitygw@v1.8.0"
VERSITYGW="$ROOT/.cache/versitygw/bin/versitygw"
if [ -x "$VERSITYGW" ]; then
	step "versitygw: already built, skipping"
else
	step "versitygw: building $VERSITYGW_MODULE"
	mkdir -p "$ROOT/.cache/versitygw"
	with_heartbeat "versitygw build" flock "$ROOT/.cache/versitygw/.lock" sh -c \
		'test -x "$1" || GOBIN="$(dirname "$1")" GOFLAGS=-mod=mod go install "$2"' sh "$VERSITYGW" "$VERSITYGW_MODULE"
	[ -x "$VERSITYGW" ] || die "versitygw build did not produce $VERSITYGW"
fi

# --- 3. stasisd and the built-in images ----------------------------------------
step "building bin/stasisd and bin/stasis-applets"
mkdir -p bin
CGO_ENABLED=0 go build -trimpath -buildvcs=false -o bin/stasisd ./cmd/stasisd
# stasis/minimal installs stasis-applets (nohup, wget) from next to stasisd.
CGO_ENABLED=0 go build -trimpath -buildvcs=false -o bin/stasis-applets ./cmd/stasis-applets

step "built-in images in $IMAGES_DIR"
bin/stasisd images build --images-dir "$IMAGES_DIR"

step "setup done"
