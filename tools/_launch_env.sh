# Sourced by the dist_*/slurm_* scripts: repository root, the Python to use
# (the project's .venv when present) and a free port when PORT is unset.
XCIT_ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
if [ -z "${PYTHON:-}" ]; then
    if [ -x "$XCIT_ROOT/.venv/bin/python" ]; then
        PYTHON="$XCIT_ROOT/.venv/bin/python"
    else
        PYTHON=python
    fi
fi
export PYTHONPATH="$XCIT_ROOT${PYTHONPATH:+:$PYTHONPATH}"

free_port() {
    "$PYTHON" -c 'import socket; s = socket.socket(); s.bind(("", 0)); print(s.getsockname()[1]); s.close()'
}

resolve_port() {
    # Multi-node jobs need the same port on every node: it must be given.
    if [ -z "${PORT:-}" ]; then
        if [ "${NNODES:-1}" -gt 1 ]; then
            echo "error: set PORT (the same on every node) for NNODES=${NNODES}" >&2
            exit 2
        fi
        PORT=$(free_port)
    fi
}
