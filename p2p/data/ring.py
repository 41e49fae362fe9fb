"""How loader workers hand batches over (the wds and nvjpeg loaders, p2p.data.stream): a ring of
shared-memory batch slots for worker processes, channels-last batch memory, and a pool of
threads making batches in order (data.worker_kind=thread)."""

from __future__ import annotations

import collections
import itertools
from concurrent.futures import ThreadPoolExecutor
from typing import Iterator

import numpy as np
import torch

from p2p.data import Batch


class Ring:
    """Shared-memory batch slots, K per DataLoader worker, allocated (and faulted in) once per
    stream of epochs (p2p.data.stream). A worker fills its slots in turn and sends only a `SlotRef`; the main process copies
    the batch out (into pinned memory for a CUDA device) and hands the slot back through the
    worker's counting semaphore. Measured on the development machine: a fresh shared-memory
    tensor per batch costs the worker and the main process about 0.3 ms per 286-px image in
    page faults, a third of the decode; the copy-out costs about 0.03 ms.

    Slots are reused in order and handed back in order (DataLoader delivers each worker's
    batches in the order they were made), so a worker that acquired its semaphore for batch t
    finds batch t-K copied out: the semaphore, not timing, makes reuse safe."""

    def __init__(self, workers: int, slots: int, shape: tuple[int, ...], ctx):
        n = workers * slots * int(np.prod(shape))
        storage = torch.UntypedStorage._new_shared(n)
        b, c, h, w = shape  # channels-last slots, as every wds batch (see the module docstring)
        self.buf = torch.empty(0, dtype=torch.uint8).set_(storage).view(workers, slots, b, h, w, c) \
            .permute(0, 1, 2, 5, 3, 4)
        self.buf.numpy().fill(0)  # fault the pages in once, here, not per batch (and no OpenMP)
        self.slots = slots
        self.free = [ctx.Semaphore(slots) for _ in range(workers)]
        self.made = 0  # batches this worker process made (each worker has its own copy)

    def take(self, n: int) -> tuple[int, int, torch.Tensor]:
        """In a worker: (worker, slot, the slot's first n images) to fill."""
        w = torch.utils.data.get_worker_info().id
        self.free[w].acquire()
        slot = self.made % self.slots
        self.made += 1
        return w, slot, self.buf[w, slot, :n]

    def give(self, ref: "SlotRef", pin: bool) -> Batch:
        """In the main process: the batch copied out of its slot; the slot is free again."""
        src = self.buf[ref.worker, ref.slot, :ref.n]
        out = channels_last_batch(src.shape, pin)
        # numpy's memcpy: torch's copy_ would wake the OpenMP pool, whose threads then spin on
        # the cores the workers decode on
        np.copyto(out.numpy(), src.numpy())
        self.free[ref.worker].release()
        return Batch(out, ref.keys)


def channels_last_batch(shape, pin: bool = False) -> torch.Tensor:
    """An uninitialised uint8 N x 3 x H x W batch laid out N x H x W x 3 in memory. `empty` takes
    pin_memory with memory_format (torch's native_functions.yaml `empty.memory_format`; its
    reference in torch/_refs is empty_strided with the channels-last strides and pin_memory)."""
    return torch.empty(tuple(shape), dtype=torch.uint8, memory_format=torch.channels_last, pin_memory=pin)


class SlotRef:
    """What a worker sends for a batch it wrote into the ring: where, how many, the keys."""

    __slots__ = ("worker", "slot", "n", "keys")

    def __init__(self, worker: int, slot: int, n: int, keys: list[str]):
        self.worker, self.slot, self.n, self.keys = worker, slot, n, keys

    def __getstate__(self):
        return (self.worker, self.slot, self.n, self.keys)

    def __setstate__(self, state):
        self.worker, self.slot, self.n, self.keys = state


def _identity(x):
    return x


def threaded(data, batches, threads: int, ahead: int = 2) -> Iterator:
    """data[b] for b in `batches`, in order, made by `threads` threads with up to `ahead` batches
    per thread under way (data.worker_kind=thread). Closing the generator cancels the batches not
    started and waits for the ones being made."""
    todo = iter(batches)
    with ThreadPoolExecutor(threads, thread_name_prefix="p2p-wds") as pool:
        pending = collections.deque(pool.submit(data.__getitem__, b) for b in itertools.islice(todo, threads * ahead))
        try:
            while pending:
                batch = pending.popleft().result()
                for b in itertools.islice(todo, 1):
                    pending.append(pool.submit(data.__getitem__, b))
                yield batch
        finally:
            for f in pending:
                f.cancel()
