#!/usr/bin/env bash
# Set up .venv/ if needed (tools/setup_env.sh), then run the test suite on
# one pytest-xdist worker per core (at most 4; XCIT_TEST_WORKERS=0 runs it in
# this process). Extra arguments go to pytest, e.g.
# `bash tools/run_tests.sh -k weights`.
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
bash "$ROOT/tools/setup_env.sh"
cd "$ROOT"
cores=$(nproc)
workers=${XCIT_TEST_WORKERS:-$(( cores > 4 ? 4 : (cores > 1 ? cores : 0) ))}
# the cores are shared out between the workers
threads=$(( workers > 0 ? (cores / workers > 0 ? cores / workers : 1) : (cores > 2 ? 2 : cores) ))
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-$threads} MKL_NUM_THREADS=${MKL_NUM_THREADS:-$threads}
exec "$ROOT/.venv/bin/python" -m pytest -n "$workers" --dist loadgroup "$@"
