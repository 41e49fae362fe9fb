"""One rank of the fused-vs-eager batch check (started by torchrun in tests/test_fused.py).

    python -m torch.distributed.run --nproc-per-node 2 tests/helpers/ddp_prepare_worker.py OUT_DIR \
        --steps 4 section.key=value ...

Each rank joins a gloo process group, builds the training loader with its rank and world size
from torch.distributed, and runs the trainer's own device step (p2p.train.run.prepare_batch
through p2p.data.prefetch, one batch ahead for the fused kernel as on a CPU) for steps 0.. with the fused and the
eager device step, each from a fresh loader; it saves {mode: {"keys": [...], "inputs": [...],
"targets": [...]}} to OUT_DIR/rank<R>.pt.
"""

from __future__ import annotations

import argparse
import os
import sys
from datetime import timedelta

import torch
import torch.distributed as dist

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))  # the repo

from p2p.config import load_config  # noqa: E402
from p2p.data import build_loader  # noqa: E402
from p2p.data.prefetch import device_batches, prepared_batches, prepares_ahead  # noqa: E402
from p2p.tasks import build_task  # noqa: E402
from p2p.train.run import prepare_batch  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("out")
    ap.add_argument("--steps", type=int, default=4)
    args, overrides = ap.parse_known_args()
    dist.init_process_group("gloo", timeout=timedelta(seconds=120))
    rank, world = dist.get_rank(), dist.get_world_size()
    cpu = torch.device("cpu")
    result = {}
    for mode in ("fused", "eager"):
        cfg = load_config(None, [*overrides, f"data.device_step={mode}"])
        task = build_task(cfg.task, cfg.data.device_step)
        assert task.device_step.implementation(cpu) == ("c-kernel" if mode == "fused" else
                                                        "eager (data.device_step=eager)")
        loader = build_loader(cfg, "train", rank, world, cpu)
        keys, inputs, targets = [], [], []

        def prepare(batch, step):
            keys.append(list(batch.keys))
            return prepare_batch(task, batch.images, cfg, rank, step)

        ahead = prepares_ahead(task, cpu)
        assert ahead == (mode == "fused")
        with prepared_batches(device_batches(loader, 0, 0, cpu), prepare, 0, ahead, args.steps) as stream:
            for _ in range(args.steps):
                _, _, (inp, target) = next(stream)
                inputs.append(inp.clone())
                targets.append(target.clone())
        result[mode] = {"keys": keys[:args.steps], "inputs": inputs, "targets": targets}
    torch.save(result, os.path.join(args.out, f"rank{rank}.pt"))
    dist.barrier()
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
