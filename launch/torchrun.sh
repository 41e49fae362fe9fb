#!/usr/bin/env bash
# One node, N processes of `p2p train`: torchrun sets RANK/WORLD_SIZE/MASTER_ADDR for each.
#   launch/torchrun.sh [--nproc N] [CONFIG.yaml] [section.key=value ...]
# N defaults to the number of visible GPUs, or 2 on a machine without one (gloo on CPU).
set -euo pipefail
nproc=""
if [[ "${1:-}" == "--nproc" ]]; then
  nproc="$2"
  shift 2
fi
py="${PYTHON:-python}"
if [[ -z "$nproc" ]]; then
  nproc=$("$py" -c "import torch; print(torch.cuda.device_count() or 2)")
fi
# One intra-op thread per process unless the caller chose: N processes x all cores oversubscribes.
export OMP_NUM_THREADS="${OMP_NUM_THREADS:-1}"
# --standalone: a private rendezvous on a free local port, so two runs on one node never collide.
exec "$py" -m torch.distributed.run --standalone --nproc-per-node "$nproc" -m p2p train "$@"
