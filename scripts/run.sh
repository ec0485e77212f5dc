#!/usr/bin/env bash
# Runs stasisd in the foreground with a local API key (called by `make run`).
# The key is generated once and kept, with the URL, in
# ${XDG_CONFIG_HOME:-~/.config}/stasis/credentials, which the stasis CLI reads;
# an STASIS_API_KEY already in the environment is used as is and not stored.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"

DATA_DIR="${DATA_DIR:-$ROOT/data}"
LISTEN="${LISTEN:-127.0.0.1:8080}"
IMAGES_DIR="${IMAGES_DIR:-$ROOT/.cache/images}"
RUNSC="${STASIS_RUNSC:-${RUNSC:-$ROOT/.cache/runsc/bin/runsc}}"

# The URL clients use: a wildcard listen address is reached over loopback.
host="${LISTEN%:*}"
port="${LISTEN##*:}"
case "$host" in
"" | 0.0.0.0 | "[::]" | "::") host=127.0.0.1 ;;
esac
URL="http://$host:$port"

# E2B's protocol (control plane and envd) on its own address; empty: off.
E2B_LISTEN="${E2B_LISTEN-127.0.0.1:3000}"
e2b_host="${E2B_LISTEN%:*}"
case "$e2b_host" in
"" | 0.0.0.0 | "[::]" | "::") e2b_host=127.0.0.1 ;;
esac
E2B_URL="http://$e2b_host:${E2B_LISTEN##*:}"

CRED_DIR="${XDG_CONFIG_HOME:-$HOME/.config}/stasis"
CRED_FILE="$CRED_DIR/credentials"

if [ -n "${STASIS_API_KEY:-}" ]; then
	KEY="$STASIS_API_KEY"
	where="from \$STASIS_API_KEY"
else
	KEY=""
	if [ -f "$CRED_FILE" ]; then
		KEY="$(sed -n 's/^STASIS_API_KEY=//p' "$CRED_FILE" | tail -n1)"
	fi
	if [ -z "$KEY" ]; then
		KEY="stasis_$(od -An -N24 -tx1 /dev/urandom | tr -d ' \n')"
		where="new, saved in $CRED_FILE"
	else
		where="saved in $CRED_FILE"
	fi
	(
		umask 077
		mkdir -p "$CRED_DIR"
		tmp="$(mktemp "$CRED_DIR/.credentials.XXXXXX")"
		printf 'STASIS_URL=%s\nSTASIS_API_KEY=%s\n' "$URL" "$KEY" >"$tmp"
		chmod 600 "$tmp"
		mv -f "$tmp" "$CRED_FILE"
	)
fi
export STASIS_API_KEY="$KEY"

cat <<BANNER

  stasis is starting on $URL
  API key: $KEY   ($where)

  Try it:
    curl -s -H "X-API-Key: $KEY" -X POST $URL/sandboxes -d '{"from_template":"stasis/minimal"}'

  or with the CLI: bin/stasis --help

BANNER
if [ -n "$E2B_LISTEN" ]; then
	cat <<BANNER
  E2B SDKs (e2b, @e2b/code-interpreter): set
    E2B_API_URL=$E2B_URL
    E2B_SANDBOX_URL=$E2B_URL
    E2B_API_KEY=$KEY

BANNER
fi

mkdir -p "$DATA_DIR"
exec bin/stasisd serve --listen "$LISTEN" --e2b-listen "$E2B_LISTEN" --data-dir "$DATA_DIR" --images-dir "$IMAGES_DIR" --runsc "$RUNSC"
