"""One pool of loader workers for consecutive epochs (the wds and nvjpeg backends).

A training reads epoch e from batch `start` on, then e+1, e+2, ... from batch 0. Making a new
DataLoader per epoch forked its workers again, allocated and faulted in a new shared-memory
Ring, and left the first batches of every epoch to be made while the step waited: with a small
dataset at a large batch (facades at batch 64: a few steps per epoch) that is a stall every few
steps. `EpochStream` instead asks one set of workers (processes with their Ring, or threads)
for the positions (epoch, batch) of consecutive epochs in order, so the workers make the next
epoch's first batches while the current epoch's last ones are consumed.

What a batch holds is unchanged: position (e, b) is batch b of WdsLoader.dataset(e) (the plan
of (seed, epoch, rank, world)), made by whichever worker, and DataLoader and `threaded` hand
them over in position order. The stream is kept after an epoch read to its end; a read that
asks for another position (a resume, the same epoch again) or stops mid-epoch closes it, and
the next read starts a new one.
"""

from __future__ import annotations

import copy
import itertools
from typing import Iterator

import torch

from p2p.data import warn_once
from p2p.data.plan import mix_seed
from p2p.data.ring import Ring, _identity, threaded
from p2p.data.workers import quiet_handover, watched


class Positions(torch.utils.data.Sampler):
    """(epoch, batch) from (epoch, start) on, through the following epochs, without end."""

    def __init__(self, loader, epoch: int, start: int):
        self.loader, self.epoch, self.start = loader, epoch, start

    def __iter__(self):
        e, first = self.epoch, self.start
        while True:
            for b in range(first, self.loader.epoch_batches(e)):
                yield e, b
            e, first = e + 1, 0


class EpochBatches(torch.utils.data.Dataset):
    """Item (e, b) is batch b of the loader's dataset for epoch e (made on first need in each
    worker, the last two kept), written into `ring` in worker processes when it has one."""

    def __init__(self, loader, ring=None, pin: bool = False):
        self.loader, self.ring, self.pin = loader, ring, pin
        self._epochs: dict[int, object] = {}

    def __getitem__(self, position: tuple[int, int]):
        e, b = position
        data = self._epochs.get(e)
        if data is None:
            data = self._epochs[e] = self.loader.dataset(e)
            data.ring, data.pin = self.ring, self.pin
            for old in sorted(self._epochs)[:-2]:
                del self._epochs[old]
        return data[b]


class EpochStream:
    """Batches of consecutive epochs from one set of workers; `next` is the position the next
    batch has."""

    def __init__(self, loader, epoch: int, start: int, workers: int):
        # the workers read a copy without the stream: no reference cycle, so a loader nobody
        # holds any more stops its workers at once (refcounting), not at the next GC
        loader = copy.copy(loader)
        loader._stream = None
        self.next = settled(loader, epoch, start)
        self.continued = loader._continued  # a plan continued after this stream began needs a new one
        self.ring = None
        positions = Positions(loader, epoch, start)
        if loader.threaded:
            self._items = threaded(EpochBatches(loader, pin=loader.pin), iter(positions), workers)
            return
        ctx = torch.multiprocessing.get_context()
        prefetch = 2
        shape = loader.dataset(epoch).shape
        if loader.batches.writes_into_ring:
            try:  # per worker: `prefetch` batches queued, one being made, one being copied out
                self.ring = Ring(workers, prefetch + 2, shape, ctx)
            except (RuntimeError, OSError) as e:  # a small /dev/shm (containers): one tensor per batch
                warn_once(f"data: no shared memory for {workers} x {prefetch + 2} batches ({e}); sending them "
                          f"one by one")
        self.pin = loader.pin
        dl = torch.utils.data.DataLoader(
            EpochBatches(loader, self.ring), batch_size=None, sampler=positions, num_workers=workers,
            collate_fn=_identity, prefetch_factor=prefetch, multiprocessing_context=ctx,
            worker_init_fn=quiet_handover,
            # its own generator: DataLoader would otherwise draw worker seeds from the global
            # torch RNG, and a resumed run's dropout masks would differ
            generator=torch.Generator().manual_seed(mix_seed(loader.seed, epoch, loader.rank)))
        self._items = watched(dl)  # a killed worker: one error naming it (p2p.data.workers)

    def take(self, loader) -> object:
        """The batch at `next`; `next` moves on (into the next epoch after the last batch)."""
        item = next(self._items)
        if not loader.threaded:
            item = self.ring.give(item, self.pin) if self.ring is not None else (
                item.pin_memory() if self.pin else item)
        e, b = self.next
        self.next = settled(loader, e, b + 1)
        return item

    def close(self) -> None:
        """Stop the workers (closing the iterator shuts the DataLoader's down, or cancels the
        threads' batches not started and waits for the ones being made)."""
        self._items.close()


def settled(loader, epoch: int, batch: int) -> tuple[int, int]:
    """The position a stream at (epoch, batch) really reads next: past the end of an epoch (or in
    an emptied continued one) it is the start of the next epoch with batches."""
    while batch >= loader.epoch_batches(epoch):
        epoch, batch = epoch + 1, 0
    return epoch, batch


def stream_epoch(loader, epoch: int, start: int, workers: int, keep: bool = True) -> Iterator:
    """Batches start.. of `epoch` from the loader's stream (continued when it stands there, else
    a new one); reading the epoch to its end keeps the stream for the next when `keep` (a
    training's loader; a validation loader reads one epoch at a time)."""
    stream = loader._stream
    if stream is None or stream.next != settled(loader, epoch, start) or stream.continued is not loader._continued:
        if stream is not None:
            stream.close()
        stream = loader._stream = EpochStream(loader, epoch, start, workers)
    done = False
    try:
        for _ in itertools.repeat(None, loader.epoch_batches(epoch) - start):
            yield stream.take(loader)
        done = keep
    finally:
        if not done:  # stopped mid-epoch (or failed): nothing reads this stream on
            stream.close()
            if loader._stream is stream:
                loader._stream = None
