"""Why a rank's plan grows a little faster than its share N/W: the cost per sample of each of
its three O(M) steps, at M samples (one rank's share), in one fresh process per M.

    PYTHONPATH=. python benchmarks/plan-scale/per_sample.py [--shares 100000,1500000,12500000] [--repeats 5]

The plan (p2p.data.plan.rank_samples) makes the rank's rows of the shard sequence
(`sequence_range`: repeat, arange, cumsum over the shards of its range), draws a permutation of
them (`torch.randperm`, a Fisher-Yates shuffle: one random swap per sample) and gathers the rows
in that order (np.take along axis 0; `gather_fancy_index` is rows[perm], as it was before).
None sorts. If the time per sample of a step rises with M, that step's memory
accesses left the caches (random swaps and gathers over 0.8 MB at 100k samples, 100-200 MB at
12.5M), not an algorithm worse than linear. One JSON line per M: the median ns per sample of
each step and of the whole plan; up to 2M samples also the index files' parse (us per sample)
with Python's garbage collector on and off.
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
        "gather": lambda: np.take(rows, perm, axis=0),
        "gather_fancy_index": lambda: rows[perm],  # how the plan gathered before
        "rank_samples": lambda: rank_samples(counts, 0, 0, 0, 1, order),
    }
    row = {"m": m}
    rows, perm = sequence_range(counts, order, 0, m), torch.randperm(m).numpy()
    for name, step in steps.items():
        times = []
        for _ in range(repeats):
            t0 = time.perf_counter()
            step()
            times.append(time.perf_counter() - t0)
        row[f"{name}_ns"] = round(sorted(times)[len(times) // 2] / m * 1e9, 2)
    if m <= 2_000_000:
        row.update(index_parse(m))
    return row


def index_parse(m: int) -> dict:
    """us per sample to parse the index files of m samples (m/1000 files of 1,000 lines, as
    `ShardSet.index` does before a rank's first batch), with Python's cyclic garbage collector
    on (as in a run) and off: the parse is one pass per line; what grows with m is the heap of
    parsed entries the collector walks again and again."""
    import gc
    import tempfile

    from p2p.bench.plan_scale import index_text
    from p2p.data.shards.index import read_index

    out = {}
    with tempfile.TemporaryDirectory() as d:
        paths = []
        for s in range(m // 1000):
            paths.append(os.path.join(d, f"{s}.idx"))
            with open(paths[-1], "w") as f:
                f.write(index_text(s, 1000, 1000))
        for label, collect in (("index_us", True), ("index_no_gc_us", False)):
            (gc.enable if collect else gc.disable)()
            t0 = time.perf_counter()
            kept = [read_index(p) for p in paths]  # kept, as the ShardSet's cache keeps them
            out[label] = round((time.perf_counter() - t0) / m * 1e6, 2)
            del kept
            gc.enable()
            gc.collect()
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--shares", default="100000,1500000,12500000", help="samples per rank, multiples of 1000")
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
