#!/usr/bin/env bash
# Set up .venv/ if needed (tools/setup_env.sh), then run the test suite.
# Extra arguments go to pytest, e.g. `bash tools/run_tests.sh -k weights`.
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
bash "$ROOT/tools/setup_env.sh"
cd "$ROOT"
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-2} MKL_NUM_THREADS=${MKL_NUM_THREADS:-2}
exec "$ROOT/.venv/bin/python" -m pytest "$@"
