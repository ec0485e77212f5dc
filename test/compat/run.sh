#!/usr/bin/env bash
# Runs the SDK compatibility suite (`npm test`): a fresh stasisd (see
# lib/suite.sh), the tests with Superserve's SDK pointed at it, the check of
# docs/COMPATIBILITY.md against what the tests did (check/), and the cleanup;
# exits non-zero if a test or the check failed.
#
# Environment: as lib/suite.sh, plus
#   STASIS_COMPAT_TRACE=1                 print every SDK request and its status
# Arguments, if any, replace the default test files (tests/*.test.mjs), e.g.
#   npm test -- tests/seed.test.mjs
#   npm test -- --test-name-pattern=spawn tests/*.test.mjs
SUITE=compat NETNS_TAG=stc NEEDS="@superserve/sdk ws"
source "$(dirname "${BASH_SOURCE[0]}")/lib/suite.sh"
suite_init
# What the SDK reads when a call passes no apiKey / baseUrl (the seed's snippets).
export SUPERSERVE_API_KEY="$STASIS_API_KEY" SUPERSERVE_BASE_URL="$STASIS_URL"

# Previews are served for the SDK's host names (preload.mjs resolves them to
# loopback). STASIS_COMPAT_CLUSTER=1 (`npm run test:cluster`) runs the same
# tests through node 1 of a 3-node cluster instead of one server.
if [ "${STASIS_COMPAT_CLUSTER:-}" = 1 ]; then
	suite_start_cluster --preview-domain sandbox.superserve.ai --egress deny --dns-upstream 127.0.0.1:1
	export SUPERSERVE_BASE_URL="$STASIS_URL"
	echo "==> running the @superserve/sdk compatibility suite against the cluster"
	suite_run --import ./preload.mjs -- "$@"
	echo "==> docs/COMPATIBILITY.md is checked against the single-server run (npm test), not this one"
else
	suite_start_server --e2b-listen "" --preview-domain sandbox.superserve.ai
	echo "==> running the @superserve/sdk compatibility suite"
	suite_run --import ./preload.mjs -- "$@"
	suite_check "$(($# == 0))" "docs/COMPATIBILITY.md against the suite's results"
fi
exit "$STATUS"
