#!/usr/bin/env bash
# Runs the E2B SDK compatibility suite (`npm test`): a fresh stasisd with its
# E2B listener on a free loopback port (see ../compat/lib/suite.sh), the
# tests with the unmodified e2b and @e2b/code-interpreter packages pointed at
# it by E2B_API_URL, E2B_SANDBOX_URL and E2B_API_KEY only, the check that
# every public SDK method is covered or skipped with a reason (check/), and
# the cleanup; exits non-zero if anything failed.
#
# Environment: as ../compat/lib/suite.sh.
# Arguments, if any, replace the default test files (tests/*.test.mjs), e.g.
#   npm test -- tests/commands.test.mjs
#   npm test -- --test-name-pattern=pause tests/*.test.mjs
SUITE=compat-e2b NETNS_TAG=ste NEEDS="e2b @e2b/code-interpreter"
source "$(dirname "${BASH_SOURCE[0]}")/../compat/lib/suite.sh"
suite_init
# All the tests get: E2B's three variables. (The stasis API, STASIS_URL,
# is used to start, check and clean up the server, and to read the network
# log E2B has no call for.) STASIS_COMPAT_CLUSTER=1 (`npm run test:cluster`)
# runs the same tests through node 1's E2B listener of a 3-node cluster.
if [ "${STASIS_COMPAT_CLUSTER:-}" = 1 ]; then
	suite_start_cluster --egress deny --dns-upstream 127.0.0.1:1
	E2B_URL="$(. "$DATA/cluster.env" && echo "$STASIS_E2B_URL")"
	export E2B_API_URL="$E2B_URL" E2B_SANDBOX_URL="$E2B_URL" E2B_API_KEY="$STASIS_API_KEY"
	echo "==> running the e2b SDK compatibility suite against the cluster (E2B on $E2B_URL)"
	suite_run --test-concurrency=1 -- "$@"
	echo "==> the coverage check reads the single-server run (npm test), not this one"
else
	E2B_PORT="$(free_port)"
	export E2B_API_URL="http://127.0.0.1:$E2B_PORT" E2B_SANDBOX_URL="http://127.0.0.1:$E2B_PORT" E2B_API_KEY="$STASIS_API_KEY"
	suite_start_server --e2b-listen "127.0.0.1:$E2B_PORT"
	echo "==> running the e2b SDK compatibility suite"
	suite_run --test-concurrency=1 -- "$@"
	suite_check "$(($# == 0))" "that every public e2b method is covered or skipped with a reason"
fi
exit "$STATUS"
