#!/usr/bin/env bash
# The main job on its built-in default: set up .venv/ if needed, then train,
# evaluate and show an XCiT Mask R-CNN on generated data (tools/demo.py).
# Arguments go to tools/demo.py, e.g. `bash tools/run_demo.sh --seg`.
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
bash "$ROOT/tools/setup_env.sh"
cd "$ROOT"
# glibc hands large freed blocks back to the kernel and faults them in again
# on the next step; on the CPU that churn cost 10-15% of each training step.
export MALLOC_MMAP_THRESHOLD_=${MALLOC_MMAP_THRESHOLD_:-4294967296}
export MALLOC_TRIM_THRESHOLD_=${MALLOC_TRIM_THRESHOLD_:-4294967296}
exec "$ROOT/.venv/bin/python" tools/demo.py "$@"
