#!/usr/bin/env bash
# The main job on its built-in default: set up .venv/ if needed, then train,
# evaluate and show an XCiT Mask R-CNN on generated data (tools/demo.py).
# Arguments go to tools/demo.py, e.g. `bash tools/run_demo.sh --seg`.
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
bash "$ROOT/tools/setup_env.sh"
cd "$ROOT"
exec "$ROOT/.venv/bin/python" tools/demo.py "$@"
