#!/usr/bin/env bash
# Usage: tools/dist_train.sh CONFIG GPUS [train.py args...]
# Multi-node: NNODES, NODE_RANK, MASTER_ADDR and PORT on every node.
# SIGTERM / Ctrl-C: every rank ends its iteration, it is saved, exit 143 / 130
# (continue with --resume). A rank that stops answering fails the others after
# env_cfg.dist_cfg.timeout seconds (--cfg-options env_cfg.dist_cfg.timeout=N).
set -euo pipefail
if [ $# -lt 2 ]; then
    echo "usage: $0 CONFIG GPUS [args...]" >&2
    exit 2
fi
CONFIG=$1
GPUS=$2
shift 2
source "$(dirname "${BASH_SOURCE[0]}")/_launch_env.sh"
NNODES=${NNODES:-1}
NODE_RANK=${NODE_RANK:-0}
MASTER_ADDR=${MASTER_ADDR:-127.0.0.1}
resolve_port
exec "$PYTHON" -m torch.distributed.run \
    --nnodes="$NNODES" \
    --node_rank="$NODE_RANK" \
    --master_addr="$MASTER_ADDR" \
    --nproc_per_node="$GPUS" \
    --master_port="$PORT" \
    "$XCIT_ROOT/tools/train.py" "$CONFIG" --launcher pytorch "$@"
