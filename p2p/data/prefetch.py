"""The training loop's view of a loader: an endless stream of (epoch, index in epoch, batch on
the device) from a saved position on, one batch ahead. On a GPU the next batch's host-to-device
copy runs on a side stream while the current step computes (as timm's PrefetchLoader); the
batch memory is pinned by the loaders.

`prepared_batches` adds the device step (crop, flip, task conversion) to each batch. On a CPU
training device with the fused kernel it runs one batch ahead in a background thread: batch
k+1 is converted while step k computes (the kernel releases the GIL), so a step waits for the
slower of the two stages instead of their sum; the loader's workers decode further ahead. Batch k is always prepared for
step first_step + k: the randomness stays a function of (seed, rank, step), whatever the
timing, so a resumed run sees the same inputs. On a GPU the step is queued on the device
after the copy and needs no thread.
"""

from __future__ import annotations

import time
from concurrent.futures import ThreadPoolExecutor
from typing import Callable, Iterator

import torch


def device_batches(loader, epoch: int, start: int, device: torch.device) -> Iterator[tuple[int, int, object]]:
    cuda = device.type == "cuda"
    stream = torch.cuda.Stream(device) if cuda else None

    def positions():
        e, first = epoch, start
        while True:
            for i, b in enumerate(loader.epoch(e, first), first):
                yield e, i, b
            e, first = e + 1, 0

    source = positions()

    def load():
        e, i, b = next(source)
        if cuda:
            with torch.cuda.stream(stream):
                b = b.to(device, non_blocking=True)
        else:
            b = b.to(device)
        return e, i, b

    ahead = load()
    while True:
        if cuda:
            current_stream = torch.cuda.current_stream(device)
            current_stream.wait_stream(stream)
            # allocated on the side stream, used on this one: keep the allocator from reusing it early
            ahead[2].images.record_stream(current_stream)
        current, ahead = ahead, load()
        yield current


class PreparedBatches:
    """Iterator of (epoch, index, (input, target)) from `batches` (device_batches' stream),
    `prepare(batch, step)` giving each one's (input, target) for its step; `prepare_s` is the
    time spent preparing, wherever it ran (what the device step costs).

    With `ahead`, batch k+1 is taken from `batches` in the caller's thread (where a loader may
    start its worker processes: forking from a second thread is not safe), and only its
    `prepare` runs in the background thread."""

    def __init__(self, batches: Iterator, prepare: Callable, first_step: int, ahead: bool, end: int | None = None):
        self.batches, self.prepare, self.step, self.prepare_s = batches, prepare, first_step, 0.0
        self.end = end  # no batch is fetched ahead for step `end` or later (it would be thrown away)
        self.pool = ThreadPoolExecutor(1, thread_name_prefix="p2p-prepare-ahead") if ahead else None
        self.pending = None

    def _prepared(self, item, step: int):
        epoch, index, batch = item
        t0 = time.perf_counter()
        pair = self.prepare(batch, step)
        self.prepare_s += time.perf_counter() - t0
        return epoch, index, pair

    def __iter__(self):
        return self

    def __next__(self):
        step, self.step = self.step, self.step + 1
        if self.pool is None:
            return self._prepared(next(self.batches), step)
        current = self.pending.result() if self.pending is not None else self._prepared(next(self.batches), step)
        self.pending = None
        if self.end is None or step + 1 < self.end:
            self.pending = self.pool.submit(self._prepared, next(self.batches), step + 1)
        return current

    def close(self) -> None:
        """Wait for the batch being prepared and stop the thread."""
        if self.pool is not None:
            self.pool.shutdown(wait=True, cancel_futures=True)
            self.pool = None
        self.pending = None

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def prepares_ahead(task, device: torch.device) -> bool:
    """Whether the device step runs one batch ahead: on a CPU, when it is the fused C kernel (it
    releases the GIL and uses no OpenMP; eager torch ops in a second thread would start a
    second OpenMP team spinning against the step's on the same cores)."""
    return device.type == "cpu" and task.fused_device_step and task.device_step.implementation(device) == "c-kernel"


def prepared_batches(batches: Iterator, prepare: Callable, first_step: int, ahead: bool,
                     end: int | None = None) -> PreparedBatches:
    """`batches` with their device step applied for steps first_step.. (up to `end`), one batch
    ahead in a background thread when `ahead` (see prepares_ahead)."""
    return PreparedBatches(batches, prepare, first_step, ahead=ahead, end=end)
