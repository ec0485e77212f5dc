#!/usr/bin/env bash
# SIMULATION: measures stasis's control plane at scale (docs/SCALING.md). It
# starts a throwaway PostgreSQL (with pg_stat_statements), SIM_NODES stasisd
# nodes built with -tags stasis_sim and run with --runtime sim (no sandboxes:
# a fake agent per node), then cmd/stasis-sim creates, pauses, resumes and
# deletes SIM_SANDBOXES sandboxes through the API and reports rates and
# PostgreSQL's work per operation. Everything it made is removed at exit.
#   SIM_NODES=50 SIM_SANDBOXES=20000 SIM_CYCLE=2000 scripts/sim-cluster.sh
# (SIM_CYCLE: pause and resume only that many of the sandboxes, all present.)
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"

NODES="${SIM_NODES:-50}"
SANDBOXES="${SIM_SANDBOXES:-20000}"
CONC="${SIM_CONCURRENCY:-32}"
CYCLE="${SIM_CYCLE:-0}" # pause and resume only this many of them (0: all)
IDLE="${SIM_IDLE:-20s}"
LEASE="${SIM_NODE_LEASE:-15s}"
BASE="${SIM_BASE_PORT:-8500}"
PG_PORT="${SIM_PG_PORT:-$((BASE - 1))}"
IMAGES_DIR="${IMAGES_DIR:-$ROOT/.cache/images}"
PGBIN="${PGBIN:-$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -n1)}"
OUT="$ROOT/.cache/sim"

die() { echo "sim: $*" >&2; exit 1; }
[ -n "$PGBIN" ] && [ -x "$PGBIN/initdb" ] || die "PostgreSQL's initdb is missing; run \`make setup\`"
id postgres >/dev/null 2>&1 || die "no postgres user; run \`make setup\`"
[ "$NODES" -le 99 ] || die "at most 99 nodes (netns prefixes stsm1..stsm99)"
for p in $PG_PORT $(seq $((BASE + 1)) $((BASE + NODES))); do
	if (exec 3<>"/dev/tcp/127.0.0.1/$p") 2>/dev/null; then
		die "port $p on 127.0.0.1 is taken; set SIM_BASE_PORT"
	fi
done

mkdir -p "$OUT"
go build -tags stasis_sim -o "$OUT/stasisd-sim" ./cmd/stasisd
go build -tags stasis_sim -o "$OUT/stasis-sim" ./cmd/stasis-sim

WORK="$(mktemp -d /tmp/stasis-sim.XXXXXX)"
chmod 755 "$WORK"
PIDS=()
cleanup() {
	trap - EXIT INT TERM
	for pid in "${PIDS[@]}"; do kill -TERM "$pid" 2>/dev/null || true; done
	for pid in "${PIDS[@]}"; do wait "$pid" 2>/dev/null || true; done
	if [ -f "$WORK/pg/postmaster.pid" ]; then
		su postgres -s /bin/sh -c "'$PGBIN/pg_ctl' -D '$WORK/pg' -m fast -w stop" >/dev/null 2>&1 || true
	fi
	rm -rf "$WORK"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

# Netns prefixes stsm1.. (at most 6 characters: they are also the interface
# prefixes, which a sim node locks but never uses). Each node's store opens at most 16 connections.
MAXCONN=$((NODES * 16 + 20))
mkdir -p "$WORK/pg" "$WORK/pgrun"
chown postgres "$WORK/pg" "$WORK/pgrun"
su postgres -s /bin/sh -c "'$PGBIN/initdb' -D '$WORK/pg' -A trust -U postgres --no-sync" >"$WORK/pg-init.log" 2>&1 ||
	{ cat "$WORK/pg-init.log" >&2; die "initdb failed"; }
su postgres -s /bin/sh -c "'$PGBIN/pg_ctl' -D '$WORK/pg' -l '$WORK/pgrun/pg.log' -w -o \"-p $PG_PORT -k $WORK/pgrun -c listen_addresses=127.0.0.1 -c max_connections=$MAXCONN -c shared_preload_libraries=pg_stat_statements -c pg_stat_statements.max=1000\" start" >/dev/null ||
	{ cat "$WORK/pgrun/pg.log" >&2; die "PostgreSQL did not start"; }
su postgres -s /bin/sh -c "'$PGBIN/createdb' -h 127.0.0.1 -p $PG_PORT stasis"
su postgres -s /bin/sh -c "'$PGBIN/psql' -qh 127.0.0.1 -p $PG_PORT -d stasis -c 'CREATE EXTENSION pg_stat_statements'"
DATABASE_URL="postgres://postgres@127.0.0.1:$PG_PORT/stasis?sslmode=disable"

KEY="ss_live_sim$(od -An -N12 -tx1 /dev/urandom | tr -d ' \n')"
URLS=()
for i in $(seq 1 "$NODES"); do
	url="http://127.0.0.1:$((BASE + i))"
	URLS+=("$url")
	mkdir -p "$WORK/node$i"
	STASIS_API_KEY="$KEY" setsid "$OUT/stasisd-sim" serve --runtime sim \
		--database-url "$DATABASE_URL" --node-name "sim$i" --advertise-url "$url" --node-lease "$LEASE" \
		--listen "127.0.0.1:$((BASE + i))" --e2b-listen "" --data-dir "$WORK/node$i" \
		--netns-prefix "stsm$i" --images-dir "$IMAGES_DIR" --max-sandboxes-per-team 0 \
		--node-key-file "$WORK/node.key" --log-level warn >"$WORK/node$i.log" 2>&1 &
	PIDS+=($!)
	# Nodes join one at a time: the first migrates the schema.
	[ "$i" = 1 ] && sleep 2
done
for i in $(seq 1 "$NODES"); do
	for _ in $(seq 1 300); do
		curl -fsS -m 2 -o /dev/null "${URLS[$((i - 1))]}/health" 2>/dev/null && break
		kill -0 "${PIDS[$((i - 1))]}" 2>/dev/null || { cat "$WORK/node$i.log" >&2; die "node $i exited"; }
		sleep 0.2
	done
done
echo "sim: $NODES nodes up; RSS of node 1: $(ps -o rss= -p "${PIDS[0]}") KiB"
"$OUT/stasis-sim" --nodes "$(IFS=,; echo "${URLS[*]}")" --api-key "$KEY" --database-url "$DATABASE_URL" \
	--sandboxes "$SANDBOXES" --cycle "$CYCLE" --concurrency "$CONC" --idle "$IDLE"
echo "sim: RSS of node 1 at the end: $(ps -o rss= -p "${PIDS[0]}") KiB; PostgreSQL backends: $(su postgres -s /bin/sh -c "'$PGBIN/psql' -tAh 127.0.0.1 -p $PG_PORT -d stasis -c 'SELECT count(*) FROM pg_stat_activity'")"
echo "sim: warnings and errors of all nodes, by message:"
grep -ho 'level=\(WARN\|ERROR\) msg="[^"]*"' "$WORK"/node*.log | sort | uniq -c | sort -rn | head -12 || true
