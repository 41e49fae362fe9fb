"""The slow rank, named while it is slow.

Under DDP every rank waits for the slowest at each gradient all-reduce, so every rank's step
time is the slowest rank's: wall time alone cannot say who is slow. What a rank does not share
with the others is its own delay: the time it waited for its next batch (`data`) and the time
its training thread was runnable but got no CPU (`cpu`, the run-queue delay Linux keeps per
thread in /proc/thread-self/schedstat: a noisy neighbour, a CPU quota, too few cores). At each log step every
rank's step time, data wait and CPU wait travel in the log step's existing all-reduce (each
rank fills its own slot of a world x 3 block, the sum gives every rank all of them: no extra
collective per step); the host names are gathered once, at the first log step.

The metrics row then carries the slowest rank (the largest own delay), its host, what is slow
(data when its excess data wait is the larger part, else compute) and its lag: its own delay
over the median of the other ranks', as a fraction of the median step time. When one rank's
lag stays above `train.straggler_lag` for `STEADY_INTERVALS` log intervals in a row, one
notice names it; it is named again only after as many intervals without a lagging rank. A GPU that is slow without
starving its CPU shows in no rank's own delay (only in everyone's step time): it is not named.
"""

from __future__ import annotations

import socket
import statistics

STEADY_INTERVALS = 3  # log intervals in a row before a rank is named (one slow interval is noise)
PER_RANK_LISTS_UP_TO = 64  # ranks whose times each metrics row lists one by one; beyond, the slowest alone


def cpu_wait_seconds() -> float:
    """Seconds the calling thread (the training loop's) has waited for a CPU while runnable: a
    busy core or a CPU quota (0 where Linux's schedstat is not available)."""
    try:
        with open("/proc/thread-self/schedstat") as f:
            return int(f.read().split()[1]) / 1e9
    except (OSError, ValueError, IndexError):
        return 0.0


def host_names(world: int) -> list[str]:
    """Every rank's host name (one all_gather_object: call once, not per step)."""
    import torch.distributed as dist

    names: list = [None] * world
    dist.all_gather_object(names, socket.gethostname())
    return [str(n) for n in names]


def slowest(step_s: list[float], data_s: list[float], cpu_s: list[float], hosts: list[str]) -> dict:
    """The row's fields naming the slowest rank (see the module docstring)."""
    own = [d + c for d, c in zip(data_s, cpu_s)]
    r = max(range(len(own)), key=own.__getitem__)
    others = [i for i in range(len(own)) if i != r]
    med_own = statistics.median(own[i] for i in others)
    med_step = statistics.median(step_s)
    data_excess = data_s[r] - statistics.median(data_s[i] for i in others)
    cpu_excess = cpu_s[r] - statistics.median(cpu_s[i] for i in others)
    return {"slowest_rank": r, "slowest_host": hosts[r] if r < len(hosts) else "",
            "slowest_lag": (own[r] - med_own) / med_step if med_step > 0 else 0.0,
            "slowest_what": "data" if data_excess >= cpu_excess else "compute"}


class StragglerWatch:
    """Rank 0's memory of the last rows: one notice when a rank stays slow."""

    def __init__(self, limit: float):
        self.limit = limit
        self.rank, self.count, self.calm, self.named = None, 0, 0, set()

    def see(self, row: dict) -> str | None:
        """The notice to print for this metrics row, if any."""
        if self.limit <= 0 or "slowest_rank" not in row:
            return None
        r = row["slowest_rank"]
        if row["slowest_lag"] <= self.limit:
            self.rank, self.count, self.calm = None, 0, self.calm + 1
            if self.calm >= STEADY_INTERVALS:  # recovered for as long: a rank that slows again is named again
                self.named.clear()
            return None
        self.calm = 0
        self.count = self.count + 1 if r == self.rank else 1
        self.rank = r
        if self.count < STEADY_INTERVALS or r in self.named:
            return None
        self.named.add(r)
        what = ("data: it waits longer for its batches (slow disk or file system, too few data.workers)"
                if row["slowest_what"] == "data" else
                "compute: its training thread waits for a CPU (a noisy neighbour, a CPU quota, or too few "
                "cores for data.workers)")
        return (f"rank {r} on host {row['slowest_host'] or '?'} is slower than the median rank by "
                f"{row['slowest_lag']:.0%} of a step for {self.count} log intervals in a row ({what}); every "
                f"rank waits for it at each step (train.straggler_lag={self.limit:g})")


def per_rank_summary(rows: list[dict]) -> dict:
    """Over a run's metrics rows (p2p compare): each rank's mean step time, data wait and CPU
    wait per step, and the rank most often slowest with its median lag."""
    out: dict = {}
    listed = [r for r in rows if "rank_step_s" in r]
    if listed:
        world = len(listed[-1]["rank_step_s"])
        same = [r for r in listed if len(r["rank_step_s"]) == world]  # the last world size of the run
        for key in ("rank_step_s", "rank_data_wait_s", "rank_cpu_wait_s"):
            means = [statistics.fmean(r[key][i] for r in same) for i in range(world)]
            out[key] = " ".join(f"r{i}:{m:.3g}" for i, m in enumerate(means))
    named = [r for r in rows if "slowest_rank" in r]
    if named:
        ranks = [r["slowest_rank"] for r in named]
        top = max(set(ranks), key=ranks.count)
        mine = [r for r in named if r["slowest_rank"] == top]
        out["slowest_rank"] = f"{top} on {mine[-1].get('slowest_host', '?')} ({len(mine)}/{len(named)} rows)"
        out["slowest_lag"] = statistics.median(r["slowest_lag"] for r in mine)
    return out
