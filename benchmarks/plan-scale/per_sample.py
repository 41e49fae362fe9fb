"""Why a rank's plan grows a little faster than its share N/W: the cost per sample of each of
its three O(M) steps, at M samples (one rank's share), in one fresh process per M.

    PYTHONPATH=. python benchmarks/plan-scale/per_sample.py [--shares 100000,1000000,12500000] [--repeats 5]

The plan (p2p.data.plan.rank_samples) makes the rank's rows of the shard sequence
(`sequence_range`: repeat, arange, cumsum over the shards of its range), draws a permutation of
them (`torch.randperm`, a Fisher-Yates shuffle: one random swap per sample) and gathers the rows
in that order. None sorts. If the time per sample of a step rises with M, that step's memory
accesses left the caches (random swaps and gathers over 0.8 MB at 100k samples, 100-200 MB at
12.5M), not an algorithm worse than linear. One JSON line per M: the median ns per sample of
each step and of the whole plan.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time


def measure(m: int, repeats: int) -> dict:
    import numpy as np
    import torch

    from p2p.data.plan import mix_seed, rank_samples, sequence_range, shard_order

    torch.set_num_threads(1)
    counts = np.full(m // 1000, 1000, dtype=np.int64)  # one rank of one: its share is all m samples
    order = shard_order(len(counts), 0, 0)
    steps = {
        "sequence_range": lambda: sequence_range(counts, order, 0, m),
        "randperm": lambda: torch.randperm(m, generator=torch.Generator().manual_seed(mix_seed(0, 0, 0, 0xB47C))),
        "gather": None,
        "rank_samples": lambda: rank_samples(counts, 0, 0, 0, 1, order),
    }
    row = {"m": m}
    rows, perm = sequence_range(counts, order, 0, m), torch.randperm(m).numpy()
    for name, step in steps.items():
        times = []
        for _ in range(repeats):
            t0 = time.perf_counter()
            rows[perm] if step is None else step()
            times.append(time.perf_counter() - t0)
        row[f"{name}_ns"] = round(sorted(times)[len(times) // 2] / m * 1e9, 2)
    return row


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--shares", default="100000,1000000,12500000", help="samples per rank, multiples of 1000")
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--one", type=int, help=argparse.SUPPRESS)  # a single M, in this process
    a = p.parse_args()
    if a.one:
        print(json.dumps(measure(a.one, a.repeats)))
        return
    for m in (int(x) for x in a.shares.split(",")):
        out = subprocess.run([sys.executable, __file__, "--one", str(m), "--repeats", str(a.repeats)],
                             capture_output=True, text=True, check=True, env={**os.environ, "OMP_NUM_THREADS": "1"})
        print(out.stdout.strip(), flush=True)


if __name__ == "__main__":
    main()
