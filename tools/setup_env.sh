#!/usr/bin/env bash
# Create (or reuse) the project environment at .venv/: the pinned stack from
# requirements/stack.txt, mmcv 2.1.0 built with its ops against the installed
# torch, and xcit_mm in editable mode. A second run with nothing changed
# returns at once.
#
# The built mmcv wheel is cached outside the repository, keyed by the torch
# build and the Python version, in ${XCIT_MM_CACHE:-~/.cache/xcit_mm}.
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
VENV="$ROOT/.venv"
PYTHON=${PYTHON:-python3}
MMCV_VERSION=2.1.0
STAMP="$VENV/.xcit_mm_setup"

cd "$ROOT"
want=$(cat requirements/stack.txt setup.cfg setup.py tools/setup_env.sh | sha256sum | cut -d' ' -f1)
if [ -f "$STAMP" ] && [ "$(cat "$STAMP")" = "$want" ] && [ -x "$VENV/bin/python" ]; then
    exit 0
fi

log() { printf '[setup_env] %s\n' "$*" >&2; }
start=$(date +%s)

if [ ! -x "$VENV/bin/python" ]; then
    log "creating $VENV with $($PYTHON --version 2>&1)"
    "$PYTHON" -m venv "$VENV"
fi
PY="$VENV/bin/python"
export PIP_DISABLE_PIP_VERSION_CHECK=1

log "installing the pinned stack (requirements/stack.txt)"
"$PY" -m pip install --quiet -r requirements/stack.txt

torch_key=$("$PY" -c 'import sys, torch; print(f"torch{torch.__version__}-cp{sys.version_info[0]}{sys.version_info[1]}")')
CACHE_ROOT=${XCIT_MM_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/xcit_mm}
WHEEL_DIR="$CACHE_ROOT/mmcv-$MMCV_VERSION/$torch_key"
mkdir -p "$WHEEL_DIR"
wheel=$(ls "$WHEEL_DIR"/mmcv-"$MMCV_VERSION"-*.whl 2>/dev/null | head -n 1 || true)
if [ -z "$wheel" ]; then
    log "building mmcv $MMCV_VERSION with ops against $torch_key (about 10 minutes on 2 cores)"
    tmp=$(mktemp -d "$CACHE_ROOT/build.XXXXXX")
    MAX_JOBS=${MAX_JOBS:-$(nproc)} MMCV_WITH_OPS=1 \
        "$PY" -m pip wheel --quiet --no-build-isolation --no-deps --no-cache-dir \
        --no-binary mmcv "mmcv==$MMCV_VERSION" -w "$tmp"
    built=$(ls "$tmp"/mmcv-*.whl)
    mv "$built" "$WHEEL_DIR/"   # same filesystem: the cache never holds half a wheel
    rm -rf "$tmp"
    wheel="$WHEEL_DIR/$(basename "$built")"
else
    log "reusing cached $wheel"
fi
"$PY" -m pip install --quiet --no-deps --force-reinstall "$wheel"
"$PY" -c 'import mmcv.ops' || { log "mmcv ops do not import; remove $WHEEL_DIR and run again"; exit 1; }

log "installing xcit_mm (editable)"
"$PY" -m pip install --quiet --no-deps --no-build-isolation -e .
echo "$want" > "$STAMP"
log "done in $(( $(date +%s) - start )) s"
