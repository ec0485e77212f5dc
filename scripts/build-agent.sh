#!/usr/bin/env bash
# Builds cmd/stasis-agent (static) to $1, its Go runtime patched with
# patches/go (each says why: the agent's start is on every cold create's
# path). A patch applies only to the file it was made from: its "Applies
# to:" line names the Go version, the file and its SHA-256. With any other
# toolchain the agent is built with the stock runtime, which works the same
# and starts a few milliseconds slower in gVisor; this says so on stderr.
#
# Environment: GO (default go).
set -euo pipefail

case "$1" in /*) out="$1" ;; *) out="$PWD/$1" ;; esac
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
GO="${GO:-go}"
goroot="$("$GO" env GOROOT)"
version="$("$GO" env GOVERSION)"
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT

overlay=() replace="" why=""
for p in "$ROOT"/patches/go/*.patch; do
	read -r want file sum < <(sed -n 's/^Applies to: \([^ ]*\) \([^ ]*\) sha256 \([0-9a-f]*\)$/\1 \2 \3/p' "$p") || true # no such line: "for ", below
	if [ "$version" != "$want" ]; then
		why="$(basename "$p") is for $want, this is $version"
		break
	fi
	if ! echo "$sum  $goroot/$file" | sha256sum --check --status; then
		why="$goroot/$file is not the one $(basename "$p") was made from"
		break
	fi
	patched="$work/$(basename "$p" .patch).go"
	patch --quiet -o "$patched" "$goroot/$file" <"$p"
	replace="$replace${replace:+,}\"$goroot/$file\":\"$patched\""
done
if [ -n "$why" ]; then
	echo "build-agent: $why: building the agent with the stock Go runtime" >&2
elif [ -n "$replace" ]; then
	echo "{\"Replace\":{$replace}}" >"$work/overlay.json"
	overlay=(-overlay "$work/overlay.json")
fi
cd "$ROOT"
CGO_ENABLED=0 "$GO" build -trimpath -buildvcs=false "${overlay[@]}" -o "$out" ./cmd/stasis-agent
