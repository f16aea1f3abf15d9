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
python -m pytest -q "$@"
rc=$?
echo "test.sh: pytest took $(( $(date +%s) - t0 )) s (exit $rc)"
# pytest's exit 5 means no test ran: that is a failure for CI.
exit $rc
