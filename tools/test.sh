#!/usr/bin/env bash
# The project's test command: set up (idempotent), then pytest.
# GPU-marked tests are skipped on CPU machines. Extra arguments go to pytest.
set -o pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"
start=$(date +%s)
# shellcheck source=/dev/null
. "$root/tools/setup.sh" || { echo "test.sh: set-up failed" >&2; exit 1; }
echo "test.sh: set-up took $(( $(date +%s) - start )) s"
t0=$(date +%s)
# bounded, so a hung test fails CI with pytest's summary (SIGINT) instead of eating its budget
limit=${SPEECHADAPT_TEST_TIMEOUT_S:-2400}
timeout --signal=INT --kill-after=60 "$limit" python -m pytest -q "$@"
rc=$?
[ "$rc" -eq 124 ] && echo "test.sh: pytest stopped after $limit s (SPEECHADAPT_TEST_TIMEOUT_S)" >&2
echo "test.sh: pytest took $(( $(date +%s) - t0 )) s (exit $rc)"
# pytest's exit 5 means no test ran: that is a failure for CI.
exit $rc
