#!/usr/bin/env bash
# Brings up a throwaway 3-node stasis cluster on this machine (`make cluster`):
# a PostgreSQL cluster (Debian's initdb + pg_ctl in a temp dir, loopback
# port), a versitygw S3 server over a temp dir, and three stasisd nodes, each
# with its own ports (API and E2B listener), data dir, netns prefix and
# subnet. It prints the node URLs and the API key and writes them to
# .cache/cluster/env. Ctrl-C or
# SIGTERM deletes every sandbox, stops everything and removes what it made.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"

NODES="${CLUSTER_NODES:-3}"
# Ports: nodes' APIs on BASE+1..BASE+N, their E2B listeners on
# BASE+21..BASE+20+N, PostgreSQL and S3 beside them.
BASE="${CLUSTER_BASE_PORT:-8180}"
PG_PORT="${CLUSTER_PG_PORT:-$((BASE + 50))}"
S3_PORT="${CLUSTER_S3_PORT:-$((BASE + 51))}"
IMAGES_DIR="${IMAGES_DIR:-$ROOT/.cache/images}"
RUNSC="${STASIS_RUNSC:-${RUNSC:-$ROOT/.cache/runsc/bin/runsc}}"
VERSITYGW="${VERSITYGW:-$ROOT/.cache/versitygw/bin/versitygw}"
PGBIN="${PGBIN:-$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -n1)}"
ENV_FILE="${CLUSTER_ENV_FILE:-$ROOT/.cache/cluster/env}"
LEASE="${CLUSTER_NODE_LEASE:-10s}"
export PATH="$PATH:/usr/local/sbin:/usr/sbin:/sbin"

die() { echo "cluster: $*" >&2; exit 1; }
[ "$(id -u)" = 0 ] || die "must run as root (sandboxes need it)"
for f in bin/stasisd bin/stasis-agent "$RUNSC"; do
	[ -x "$f" ] || die "$f is missing; run \`make setup build\` first"
done
[ -x "$VERSITYGW" ] || die "$VERSITYGW is missing; run \`make setup\` (it installs versitygw)"
[ -n "$PGBIN" ] && [ -x "$PGBIN/initdb" ] || die "PostgreSQL's initdb is missing; run \`make setup\` (it installs postgresql)"
id postgres >/dev/null 2>&1 || die "no postgres user: PostgreSQL refuses to run as root; run \`make setup\`"
[ "$NODES" -le 20 ] || die "at most 20 nodes (CLUSTER_NODES=$NODES)"
for p in $PG_PORT $S3_PORT $(seq $((BASE + 1)) $((BASE + NODES))) $(seq $((BASE + 21)) $((BASE + 20 + NODES))); do
	if (exec 3<>"/dev/tcp/127.0.0.1/$p") 2>/dev/null; then
		die "port $p on 127.0.0.1 is taken (is another cluster running?); set CLUSTER_BASE_PORT"
	fi
done

WORK="$(mktemp -d /tmp/stasis-cluster.XXXXXX)"
chmod 755 "$WORK"
PIDS=()
S3_PID=""
# Children run in their own sessions: a Ctrl-C must reach only this script,
# which deletes the sandboxes through the nodes before stopping them.

# Subnets 169.254.224.0/22 .. and prefixes stcl1.. are this script's: the
# test servers (internal/testenv) use 169.254.4-195, the compat, netpool,
# gvisor tests and stasis-bench other ranges below 224 or above 243.
subnet() { echo "169.254.$((220 + 4 * $1)).0/22"; }
prefix() { echo "stcl$1"; }
url() { echo "http://127.0.0.1:$((BASE + $1))"; }
e2b_addr() { echo "127.0.0.1:$((BASE + 20 + $1))"; }

cleanup() {
	trap - EXIT INT TERM
	echo
	echo "cluster: stopping"
	if [ "${#PIDS[@]}" -gt 0 ] && [ -n "${KEY:-}" ]; then
		# Delete every sandbox (through node 1, which forwards to owners),
		# so no sandbox outlives the cluster.
		ids="$(curl -fsS -m 20 -H "X-API-Key: $KEY" "$(url 1)/sandboxes" 2>/dev/null |
			grep -o '"id":"[^"]*"' | cut -d'"' -f4 || true)"
		for id in $ids; do
			curl -fsS -m 60 -o /dev/null -X DELETE -H "X-API-Key: $KEY" "$(url 1)/sandboxes/$id" || true
		done
	fi
	for pid in "${PIDS[@]}"; do kill -TERM "$pid" 2>/dev/null || true; done
	for pid in "${PIDS[@]}"; do wait "$pid" 2>/dev/null || true; done
	for i in $(seq 1 "$NODES"); do
		# Safety net: a sandbox whose create was still in flight when the
		# deletes ran outlives its node (by design); remove it and its link.
		for id in $("$RUNSC" --root "$WORK/node$i/runsc" list -quiet 2>/dev/null); do
			"$RUNSC" --root "$WORK/node$i/runsc" delete -force "$id" >/dev/null 2>&1 || true
			ip netns del "$(prefix "$i")-$id" 2>/dev/null || true
		done
		for _ in 1 2 3 4 5 6 7 8; do
			umount -l "$WORK/node$i/runsc/null-netns" 2>/dev/null || break
		done
	done
	[ -n "$S3_PID" ] && { kill -TERM "$S3_PID" 2>/dev/null || true; wait "$S3_PID" 2>/dev/null || true; }
	if [ -f "$WORK/pg/postmaster.pid" ]; then
		su postgres -s /bin/sh -c "'$PGBIN/pg_ctl' -D '$WORK/pg' -m fast -w stop" >/dev/null 2>&1 || true
	fi
	rm -rf "$WORK"
	rm -f "$ENV_FILE"
	echo "cluster: stopped; nothing left behind"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

echo "cluster: PostgreSQL on 127.0.0.1:$PG_PORT"
mkdir -p "$WORK/pg" "$WORK/pgrun"
chown postgres "$WORK/pg" "$WORK/pgrun"
su postgres -s /bin/sh -c "'$PGBIN/initdb' -D '$WORK/pg' -A trust -U postgres --no-sync" >"$WORK/pg-init.log" 2>&1 ||
	{ cat "$WORK/pg-init.log" >&2; die "initdb failed"; }
su postgres -s /bin/sh -c "'$PGBIN/pg_ctl' -D '$WORK/pg' -l '$WORK/pgrun/pg.log' -w -o \"-p $PG_PORT -k $WORK/pgrun -c listen_addresses=127.0.0.1 -c max_connections=200\" start" >/dev/null ||
	{ cat "$WORK/pgrun/pg.log" >&2; die "PostgreSQL did not start"; }
su postgres -s /bin/sh -c "'$PGBIN/createdb' -h 127.0.0.1 -p $PG_PORT stasis"
DATABASE_URL="postgres://postgres@127.0.0.1:$PG_PORT/stasis?sslmode=disable"

echo "cluster: S3 (versitygw) on 127.0.0.1:$S3_PORT"
S3_KEY="stasis$(od -An -N6 -tx1 /dev/urandom | tr -d ' \n')"
S3_SECRET="$(od -An -N20 -tx1 /dev/urandom | tr -d ' \n')"
mkdir -p "$WORK/s3/stasis"
setsid "$VERSITYGW" --access "$S3_KEY" --secret "$S3_SECRET" --port "127.0.0.1:$S3_PORT" posix "$WORK/s3" >"$WORK/s3.log" 2>&1 &
S3_PID=$!
export AWS_ACCESS_KEY_ID="$S3_KEY" AWS_SECRET_ACCESS_KEY="$S3_SECRET" AWS_REGION=us-east-1
export AWS_ENDPOINT_URL_S3="http://127.0.0.1:$S3_PORT"

# Every node derives agent tokens and preview links from one node key, and
# seals secrets under one secrets key: a sandbox moved to another node must
# stay reachable, and its secrets readable.
mkdir -p "$WORK/keys"
head -c 32 /dev/urandom >"$WORK/keys/node.key"
head -c 32 /dev/urandom >"$WORK/keys/secrets.key"
chmod 600 "$WORK/keys/"*

KEY="${STASIS_API_KEY:-stasis_$(od -An -N24 -tx1 /dev/urandom | tr -d ' \n')}"
export STASIS_API_KEY="$KEY"
URLS=""
E2B_URLS=""
for i in $(seq 1 "$NODES"); do
	mkdir -p "$WORK/node$i"
	# Each node advertises its E2B listener (http://E2B_LISTEN) so the
	# others forward E2B traffic for its sandboxes there.
	setsid bin/stasisd serve --listen "127.0.0.1:$((BASE + i))" --e2b-listen "$(e2b_addr "$i")" \
		--data-dir "$WORK/node$i" --images-dir "$IMAGES_DIR" --runsc "$RUNSC" --agent "$ROOT/bin/stasis-agent" \
		--subnet "$(subnet "$i")" --netns-prefix "$(prefix "$i")" \
		--database-url "$DATABASE_URL" --snapshot-url "s3://stasis/cluster" \
		--node-name "node$i" --advertise-url "$(url "$i")" --node-lease "$LEASE" \
		--node-key-file "$WORK/keys/node.key" --secrets-key-file "$WORK/keys/secrets.key" \
		${CLUSTER_NODE_ARGS:-} >"$WORK/node$i.log" 2>&1 &
	PIDS+=($!)
	URLS="$URLS${URLS:+ }$(url "$i")"
	E2B_URLS="$E2B_URLS${E2B_URLS:+ }http://$(e2b_addr "$i")"
done
for i in $(seq 1 "$NODES"); do
	for _ in $(seq 1 600); do
		curl -fsS -m 2 -o /dev/null "$(url "$i")/health" 2>/dev/null && continue 2
		kill -0 "${PIDS[$((i - 1))]}" 2>/dev/null || { cat "$WORK/node$i.log" >&2; die "node$i exited during start"; }
		sleep 0.1
	done
	cat "$WORK/node$i.log" >&2
	die "node$i did not become healthy"
done

mkdir -p "$(dirname "$ENV_FILE")"
(
	umask 077
	printf 'STASIS_URL=%s\nSTASIS_NODE_URLS="%s"\nSTASIS_API_KEY=%s\n' "$(url 1)" "$URLS" "$KEY" >"$ENV_FILE"
	# E2B's SDKs through node 1's E2B listener (any node's works).
	printf 'STASIS_E2B_URL=%s\nSTASIS_E2B_NODE_URLS="%s"\n' "http://$(e2b_addr 1)" "$E2B_URLS" >>"$ENV_FILE"
	printf 'E2B_API_URL=%s\nE2B_SANDBOX_URL=%s\nE2B_API_KEY=%s\n' "http://$(e2b_addr 1)" "http://$(e2b_addr 1)" "$KEY" >>"$ENV_FILE"
)
cat <<BANNER

  stasis cluster of $NODES nodes is up (logs in $WORK/node*.log)
$(for i in $(seq 1 "$NODES"); do echo "    node$i  $(url "$i")   E2B: http://$(e2b_addr "$i")"; done)
  API key:    $KEY
  PostgreSQL: $DATABASE_URL
  S3:         $AWS_ENDPOINT_URL_S3 (bucket stasis)
  E2B SDKs:   E2B_API_URL=http://$(e2b_addr 1) E2B_SANDBOX_URL=http://$(e2b_addr 1) E2B_API_KEY=$KEY
  Written to $ENV_FILE (STASIS_URL, STASIS_NODE_URLS, STASIS_API_KEY, STASIS_E2B_URL,
  STASIS_E2B_NODE_URLS and E2B's three):  . $ENV_FILE && bin/stasis node ls

  Ctrl-C stops everything and removes it.

BANNER
# Wait for a node to exit (or a signal): one dying takes the cluster down,
# since a silent half-cluster would be a confusing thing to test against.
set +e
wait -n "${PIDS[@]}"
echo "cluster: a node exited; its log:" >&2
for i in $(seq 1 "$NODES"); do
	kill -0 "${PIDS[$((i - 1))]}" 2>/dev/null || tail -n 30 "$WORK/node$i.log" >&2
done
exit 1
