"""One rank of a real multi-process loader check (started by torchrun in tests/test_data_ddp.py).

    python -m torch.distributed.run --nproc-per-node 2 tests/helpers/ddp_data_worker.py OUT.json \
        --backends wds,dali section.key=value ...

Each rank joins a gloo process group, builds the training loader of every backend with its own
rank and the world size from torch.distributed, reads one epoch, and all-gathers its keys and
batch counts; rank 0 writes {backend: [{"rank", "batches_per_epoch", "batches", "keys"}, ...]}.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from datetime import timedelta

import torch
import torch.distributed as dist

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))  # the repo

from p2p.config import load_config  # noqa: E402
from p2p.data import build_loader  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("out")
    ap.add_argument("--backends", default="wds")
    ap.add_argument("--epoch", type=int, default=0)
    args, overrides = ap.parse_known_args()  # the rest: section.key=value overrides
    dist.init_process_group("gloo", timeout=timedelta(seconds=120))
    rank, world = dist.get_rank(), dist.get_world_size()
    result = {}
    for backend in args.backends.split(","):
        cfg = load_config(None, [*overrides, f"data.backend={backend}"])
        loader = build_loader(cfg, "train", rank, world, torch.device("cpu"))
        keys, count = [], 0
        for batch in loader.epoch(args.epoch):
            assert batch.images.dtype == torch.uint8
            keys += batch.keys
            count += 1
        mine = {"rank": rank, "batches_per_epoch": loader.batches_per_epoch, "batches": count, "keys": keys}
        gathered = [None] * world
        dist.all_gather_object(gathered, mine)
        result[backend] = gathered
    if rank == 0:
        with open(args.out, "w") as f:
            json.dump(result, f)
    dist.barrier()
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
