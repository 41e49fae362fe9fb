"""Data wait per step at epoch boundaries, over many short epochs of a small shard set.

    PYTHONPATH=. python benchmarks/epoch_wait.py --work /tmp/epoch-wait [--epochs 30] [--step-ms 40]

A facades-sized dataset at a large batch crosses an epoch every few steps. This reads the wds
loader the way `p2p train` does (epoch e, then e+1 from batch 0, ...), with a fixed stand-in for
the training step between batches (sleep --step-ms: the workers decode while the step computes),
and reports the wait for the first batch of each epoch against the wait for the others, plus
the wall time. It uses the public loader API only, so it also measures an older checkout
(PYTHONPATH=/tmp/p2p-before) in the same shard folder: run both, compare their ratios.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time
from pathlib import Path


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--work", required=True, help="folder for the photos and shards (reused)")
    p.add_argument("--photos", type=int, default=48)
    p.add_argument("--scale", type=float, default=0.5, help="photo size relative to COCO's")
    p.add_argument("--size", type=int, default=143, help="stored (load) size of the shards")
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--kind", default="process", choices=("process", "thread"))
    p.add_argument("--epochs", type=int, default=30)
    p.add_argument("--step-ms", type=float, default=40.0)
    p.add_argument("--json", default=None)
    a = p.parse_args()

    from p2p.bench.photos import build_shards
    from p2p.config import load_config, with_values
    from p2p.data import build_loader

    shards = build_shards(Path(a.work), a.photos, a.scale, a.size)
    cfg = with_values(load_config(), {
        "data.source": str(shards), "data.backend": "wds", "data.load_size": a.size, "data.image_size": 128,
        "model.num_downs": 7, "train.batch_size": a.batch_size, "data.workers": a.workers,
        "data.worker_kind": a.kind, "data.val_fraction": 0.0})
    loader = build_loader(cfg, "train")
    first, rest = [], []
    t_all = time.perf_counter()
    for e in range(a.epochs):
        it = loader.epoch(e)
        for i in range(loader.batches_per_epoch):
            t0 = time.perf_counter()
            next(it)
            (first if i == 0 else rest).append(time.perf_counter() - t0)
            time.sleep(a.step_ms / 1000)  # the training step
        for _ in it:  # the epoch's generator ends (as the training loop's does)
            pass
    wall = time.perf_counter() - t_all
    first_steady, rest_steady = first[1:], rest  # epoch 0's first batch pays the start-up
    out = {"batches_per_epoch": loader.batches_per_epoch, "epochs": a.epochs, "workers": a.workers, "kind": a.kind,
           "step_ms": a.step_ms, "wall_s": wall,
           "wait_ms_first_batch_of_epoch_median": 1000 * statistics.median(first_steady),
           "wait_ms_first_batch_of_epoch_mean": 1000 * statistics.fmean(first_steady),
           "wait_ms_other_batches_mean": 1000 * statistics.fmean(rest_steady),
           "wait_ms_per_step_mean": 1000 * statistics.fmean(first_steady + rest_steady),
           "start_up_ms": 1000 * first[0], "load_avg": os.getloadavg()}
    print(json.dumps(out, indent=2))
    if a.json:
        Path(a.json).write_text(json.dumps(out, indent=2) + "\n")


if __name__ == "__main__":
    main()
