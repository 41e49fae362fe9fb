"""One process of the scaling benchmark, started by torchrun from p2p.bench.ranks (`python -m
torch.distributed.run ... -m p2p.bench.ranks_worker --result PATH ...`); not a user command.

It builds the trainer's run for the sizes it is given (p2p.train.run.build_run: the process
group, networks, wrap_models, optimizers, the step) and steps it on the batch the trainer would
feed this rank. After `--warmup` untimed steps, each of `--repeats` rounds starts at a barrier
and ends when the slowest process is done; rank 0 writes the rounds to `--result` (JSON).
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from p2p import dist
from p2p.bench.common import sync, write_json


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m p2p.bench.ranks_worker", description=__doc__.splitlines()[0])
    p.add_argument("--result", required=True, help="rank 0 writes its JSON result here")
    p.add_argument("--device", choices=("cpu", "cuda"), required=True)
    for name in ("ngf", "ndf", "num-downs", "batch-size", "image-size", "steps", "warmup", "repeats"):
        p.add_argument(f"--{name}", type=int, required=True)
    p.add_argument("--precision", choices=("fp32", "bf16", "fp16"), required=True)
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    from p2p.bench.workload import ModelSizes, trainer_batch, workload_config
    from p2p.train.run import build_run

    args = parse_args(argv)
    sizes = ModelSizes("given", args.ngf, args.num_downs, args.ndf)
    cfg = workload_config(sizes, args.image_size, args.batch_size, args.precision, args.device)
    # what `p2p train` builds: the same wrapping, optimizers and step in every process (no run
    # folder is written, so none is locked)
    run = build_run(cfg, lock=False)
    rank, world, device = run.rank, run.world, run.device
    inp, target = trainer_batch(cfg, run.task, device, rank)

    def steps(k: int) -> None:
        for _ in range(k):
            run.step(inp, target)

    steps(args.warmup)
    sync(device)
    rounds, mine = [], []
    for _ in range(args.repeats):
        if world > 1:
            torch.distributed.barrier()
        t0 = time.perf_counter()
        steps(args.steps)
        sync(device)
        dt = time.perf_counter() - t0
        mine.append(args.batch_size * args.steps / dt)
        # the round ends when the slowest process is done
        slowest = torch.tensor([dt], dtype=torch.float64, device=device)  # NCCL reduces device tensors only
        if world > 1:
            torch.distributed.all_reduce(slowest, op=torch.distributed.ReduceOp.MAX)
        rounds.append(world * args.batch_size * args.steps / slowest.item())
    per_rank = [mine]
    if world > 1:
        per_rank = [None] * world
        torch.distributed.all_gather_object(per_rank, mine)
    if rank == 0:
        write_json(args.result, {"img_per_s": statistics.median(rounds), "rounds": rounds,
                                 "rank_img_per_s": [statistics.median(r) for r in per_rank],
                                 "world_size": world, "torch_threads": torch.get_num_threads()})
    run.accel.wait_for_everyone()
    dist.leave()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
