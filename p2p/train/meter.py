"""The numbers of one `metrics.jsonl` row: losses summed on the device over the steps between
two log steps (read once, at the log step: the loop's only regular host sync), and the time,
data wait and memory of the same interval, with every rank's own times in the same all-reduce
(p2p.train.straggler)."""

from __future__ import annotations

import resource
import time

import torch

from p2p.train.straggler import PER_RANK_LISTS_UP_TO, cpu_wait_seconds, host_names, slowest


class LogInterval:
    """Losses and timing of the steps since the last metrics row."""

    def __init__(self, device: torch.device, flops_per_image: float = 0.0, peak: float | None = None,
                 rank: int = 0):
        self.device, self.flops, self.peak, self.rank = device, flops_per_image, peak, rank
        self.sums: dict[str, torch.Tensor] = {}
        self.steps, self.data_wait, self.t0 = 0, 0.0, time.perf_counter()
        self.cpu_wait0, self.hosts = cpu_wait_seconds(), None
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(device)

    def timed_next(self, stream):
        """The next batch, counting the time spent waiting for it."""
        t0 = time.perf_counter()
        item = next(stream)
        self.data_wait += time.perf_counter() - t0
        return item

    def add(self, losses: dict[str, torch.Tensor]) -> None:
        for k, v in losses.items():
            self.sums[k] = self.sums[k] + v if k in self.sums else v.clone()
        self.steps += 1

    def row(self, step: int, epoch: int, batch_size: int, world: int, lr: float, nets) -> dict:
        """The metrics row of the interval, averaged over ranks; starts the next interval."""
        names = list(self.sums)
        stacked = torch.stack([self.sums[k].float() for k in names])
        # this rank's own times, taken before the sync below (on a GPU the host runs at most a few
        # steps ahead, small against an interval)
        cpu_wait = cpu_wait_seconds()
        own = [(time.perf_counter() - self.t0) / self.steps, self.data_wait / self.steps,
               (cpu_wait - self.cpu_wait0) / self.steps]
        block = None
        if world > 1:  # the mean over ranks: every rank logs and checks the same numbers
            if self.hosts is None:
                self.hosts = host_names(world)  # once per run, not per log step
            # every rank's own times ride in the same all-reduce: its slot of a world x 3 block
            block = torch.zeros(world, 3, device=stacked.device)
            block[self.rank] = torch.tensor(own, device=stacked.device)
            both = torch.cat([stacked, block.flatten()])
            torch.distributed.all_reduce(both)
            stacked, block = both[:len(names)] / world, both[len(names):].view(world, 3).T
        values = stacked.tolist()  # note: host sync point
        ranks = block.tolist() if block is not None else None
        elapsed = time.perf_counter() - self.t0
        per_rank = batch_size * self.steps / elapsed
        row = {"step": step, "epoch": epoch, "world_size": world, "global_batch": batch_size * world}
        row.update({k: v / self.steps for k, v in zip(names, values)})
        row.update(img_per_s=per_rank * world, step_time_s=elapsed / self.steps,
                   data_wait=min(1.0, self.data_wait / elapsed), cpu_wait_s=own[2], lr=lr)
        if ranks is not None:
            row.update(slowest(*ranks, self.hosts))
            if world <= PER_RANK_LISTS_UP_TO:
                row.update(rank_step_s=ranks[0], rank_data_wait_s=ranks[1], rank_cpu_wait_s=ranks[2])
        if self.device.type == "cuda":
            row["peak_mem_gb"] = torch.cuda.max_memory_allocated(self.device) / 2**30
            torch.cuda.reset_peak_memory_stats(self.device)
        else:
            row["peak_mem_gb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
        if self.peak:
            row["mfu"] = self.flops * per_rank / self.peak
        if nets.scaler_g.is_enabled():
            row["loss_scale_g"], row["loss_scale_d"] = nets.scaler_g.get_scale(), nets.scaler_d.get_scale()
        self.sums, self.steps, self.data_wait, self.t0 = {}, 0, 0.0, time.perf_counter()
        self.cpu_wait0 = cpu_wait
        return row
