"""The training loop's view of a loader: an endless stream of (epoch, index in epoch, batch on
the device) from a saved position on, one batch ahead. On a GPU the next batch's host-to-device
copy runs on a side stream while the current step computes (as timm's PrefetchLoader); the
batch memory is pinned by the loaders.

`prepared_batches` adds the device step (crop, flip, task conversion) to each batch. On a CPU
training device it runs one batch ahead in a background thread: batch k+1 is fetched and
converted while step k computes (the fused kernel and torch's ops release the GIL), so a step
waits for the slower of the two stages instead of their sum. Batch k is always prepared for
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
    time spent preparing, wherever it ran (what the device step costs)."""

    def __init__(self, batches: Iterator, prepare: Callable, first_step: int, ahead: bool, end: int | None = None):
        self.batches, self.prepare, self.step, self.prepare_s = batches, prepare, first_step, 0.0
        self.end = end  # no batch is fetched ahead for step `end` or later (it would be thrown away)
        self.pool = ThreadPoolExecutor(1, thread_name_prefix="p2p-prepare-ahead") if ahead else None
        self.pending = None

    def _next_prepared(self, step: int):
        epoch, index, batch = next(self.batches)
        t0 = time.perf_counter()
        pair = self.prepare(batch, step)
        self.prepare_s += time.perf_counter() - t0
        return epoch, index, pair

    def __iter__(self):
        return self

    def __next__(self):
        step, self.step = self.step, self.step + 1
        if self.pool is None:
            return self._next_prepared(step)
        current = self.pending.result() if self.pending is not None else self._next_prepared(step)
        more = self.end is None or step + 1 < self.end
        self.pending = self.pool.submit(self._next_prepared, step + 1) if more else None
        return current

    def close(self) -> None:
        """Wait for the batch being prepared (it may hold a loader's iterator) and stop the thread."""
        if self.pool is not None:
            self.pool.shutdown(wait=True, cancel_futures=True)
            self.pool = None
        self.pending = None

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def prepared_batches(batches: Iterator, prepare: Callable, first_step: int, device: torch.device,
                     end: int | None = None) -> PreparedBatches:
    """`batches` with their device step applied for steps first_step.. (up to `end`), one batch
    ahead on a CPU device (see above)."""
    return PreparedBatches(batches, prepare, first_step, ahead=device.type == "cpu", end=end)
