#!/usr/bin/env bash
# N training processes on this machine (one per GPU with NCCL; on CPUs, gloo) through tools/train.py:
#   tools/dist_train.sh CONFIG N [options of tools/train.py]
# Several machines: NNODES, NODE_RANK, MASTER_ADDR and PORT, as for mmdet's dist_train.sh. PYTHON picks the
# interpreter (default: python). On one machine torchrun picks a free port, so concurrent jobs do not collide.
set -euo pipefail

if [[ $# -lt 2 ]]; then
    echo "usage: $0 CONFIG NPROC [options of tools/train.py]" >&2
    exit 2
fi
CONFIG=$1
NPROC=$2
shift 2
NNODES=${NNODES:-1}
if [[ "$NNODES" == 1 && -z "${PORT:-}" ]]; then
    RENDEZVOUS=(--standalone)
else
    RENDEZVOUS=(--nnodes="$NNODES" --node-rank="${NODE_RANK:-0}" --master-addr="${MASTER_ADDR:-127.0.0.1}"
                --master-port="${PORT:-29500}")
fi
exec "${PYTHON:-python}" -m torch.distributed.run "${RENDEZVOUS[@]}" --nproc-per-node="$NPROC" \
    "$(dirname "$0")/train.py" "$CONFIG" --launcher pytorch "$@"
