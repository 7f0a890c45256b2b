#!/usr/bin/env bash
# The timing-sensitive test modules on a busy machine: one CPU-bound process per core
# runs for the whole time, so a test that waits on time instead of on state fails here.
# Usage: bash scripts/loaded-tests.sh [pytest options]
set -euo pipefail
cd "$(dirname "$0")/.."
hogs=()
stop_hogs() {
  for pid in "${hogs[@]}"; do kill "$pid" 2>/dev/null || true; done
  wait 2>/dev/null || true
}
trap stop_hogs EXIT
for _ in $(seq "$(nproc)"); do
  python3 -c 'while True: pass' &
  hogs+=("$!")
done
echo "loaded-tests: $(nproc) CPU hogs running (pids ${hogs[*]})"
# Left out: the Ray cluster and the JavaScript client (npm) tests, the two slowest, which
# compare outputs, not timings; the normal suite runs them.
.venv/bin/python -m pytest -q -p no:cacheprovider \
  -k "not two_node_ray_cluster and not javascript_example" \
  tests/test_daemon.py tests/test_runtime.py tests/test_hostile.py tests/test_sources.py \
  tests/test_text.py tests/test_lifecycle.py tests/test_outputs.py tests/test_daemon_inprocess.py \
  tests/test_view.py tests/test_anomaly.py tests/test_card.py "$@"
