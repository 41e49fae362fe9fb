"""The wds backend: WebDataset shards made by `p2p shard`, decoded by DataLoader workers.

Epoch plan
----------
Which samples a rank reads, in which order, is computed from the manifest's per-shard counts
(p2p.data.plan, shared with the dali backend): the shards permuted by (seed, epoch), rank r of
W taking the contiguous range [N*r//W, N*(r+1)//W) of their samples, shuffled by (seed, epoch,
rank) and cut to batches_per_epoch whole batches, the same number on every rank.

Batch b of the epoch is a fixed list of (shard, member) pairs. DataLoader workers build whole
batches by batch index (a map-style dataset with batch_size=None), and DataLoader returns them
in index order, so the sequence is the same for any worker count or timing. `epoch(e, start)`
asks only for batches start.. : skipped batches are never read or decoded.

Reading and decoding
--------------------
A member is read with one pread at the offset in the shard's DALI index (`.idx`, parsed once per
process for the shards the rank's epoch touches), decoded by libjpeg-turbo
(`p2p.data.decode`: simplejpeg, else `torchvision.io.decode_jpeg`) and its load_size window
copied straight into the batch. The window is random per (seed, epoch, key) in training and the
centre in validation; paired A|B images are resized to load_size x 2*load_size. A sample that
fails to decode is reported (shard and key) and replaced by the rank's next unused sample, so
batch counts never change.

Batches are channels-last in memory (N x H x W x 3 bytes behind the N x 3 x H x W shape of
the batch contract): libjpeg-turbo's own pixel order, so copying a crop window into the batch
copies whole rows instead of transposing every pixel (benchmarks/RESULTS.md has the figures).
The device step reads either layout (p2p.fused: any strides).

With `data.worker_kind=process` (the default), DataLoader workers write batches into a ring
of shared-memory slots (`Ring`) and send only the slot's number; the main
process copies the batch out (into pinned memory when the device is CUDA) and frees the slot.
A fresh shared-memory tensor per batch, DataLoader's usual way, pays page faults on every
batch, a sizeable share of the decode (benchmarks/RESULTS.md). With `data.worker_kind=thread`,
`data.workers` threads of this process make whole batches straight into the memory the
training loop takes (pinned on CUDA), a few batches ahead: simplejpeg, pread and numpy's copy
release the GIL, so decodes run in parallel, and no batch crosses between processes. Where
cores are few (a CPU-only node) that is faster (`p2p bench data` has both rows); where a GPU
is fed by many workers, processes keep the per-sample Python work off the training
process's GIL. Either kind of worker, and the Ring, serve consecutive epochs of a training
(p2p.data.stream): the next epoch's first batches are made while the current one ends.

Where a sample's time goes (decode, window copy, read, copy-out): benchmarks/RESULTS.md,
"Figures from code comments (issue 23)"; the decode dominates.

Validation
----------
The val split's shards in manifest order (or, for a shard folder without a val split, its
train shards, with a warning): rank r takes the first of its [N*r//W, N*(r+1)//W) range, up to
its share of data.val_images; centre crops; the last batch may be short.

The `webdataset` package is not needed at run time: reading members at their index offsets
is what its tar iterators do sequentially, with random access and no per-sample pipeline
stages on top (the tests read the shards back with webdataset to check the keys).
"""

from __future__ import annotations

import os
import threading
import warnings
from pathlib import Path
from typing import Iterator

import numpy as np
import torch

from p2p.data import Batch, LoaderArgs, warn_once
from p2p.data.decode import fill_sample
from p2p.data.images import DEFAULT_MAX_PIXELS
from p2p.data.plan import (RankOrders, batch_count, batches_per_epoch, continued_plan, rank_samples, train_plan,
                           val_batch_size, val_plan)
from p2p.data.ring import Ring, SlotRef, channels_last_batch
from p2p.errors import UsageError

# ---------------------------------------------------------------------------------------------
# the shard folder


class ShardSet:
    """The shards of one split of a shard folder: paths and counts from the manifest; member
    offsets, sizes and keys from the `.idx` files, parsed on demand and cached per process."""

    def __init__(self, source: str, split: str, max_pixels: int = DEFAULT_MAX_PIXELS):
        from p2p.data.shards.catalog import SplitCatalog

        # first: close() (and __del__) must work however far the checks below get
        self._fds: dict[int, int] = {}
        self._pid = os.getpid()
        self._lock = threading.Lock()  # decode threads (data.worker_kind=thread) share the descriptors
        self.max_pixels = max_pixels  # samples declaring more are skipped before decoding
        # The manifest, index files and tars are untrusted input: every name stays inside the
        # split folder, every count and size is checked against the file before it sizes anything.
        try:
            # the counts checked now; paths made and tars checked when a shard is first touched
            catalog = SplitCatalog(source, split)
            self.manifest, self.tars, self.idxs, self.sizes = catalog.manifest, catalog.tars, catalog.idxs, catalog.sizes
        except FileNotFoundError as e:
            what = "manifest.json: make shards with 'p2p shard'" if e.filename and str(e.filename).endswith(
                "manifest.json") else f"shard {e.filename} listed in its manifest (re-run 'p2p shard')"
            raise UsageError(f"data.source={source!r} has no {what}") from None
        except (OSError, ValueError) as e:
            raise UsageError(f"data.source={source!r}: {e}") from None
        self.source, self.split = source, split
        self.counts, self.total = catalog.counts, catalog.total
        self._index: dict[int, tuple[np.ndarray, np.ndarray, list[str]]] = {}

    @property
    def _options(self) -> dict:
        opts = self.manifest.get("options")
        return opts if isinstance(opts, dict) else {}

    @property
    def stored_size(self) -> int | None:
        size = self._options.get("size")
        return size if isinstance(size, int) and not isinstance(size, bool) and 0 < size <= 1 << 16 else None

    @property
    def paired(self) -> bool:
        return bool(self._options.get("paired")) or self.manifest.get("task") == "paired"

    def index(self, shard: int) -> tuple[np.ndarray, np.ndarray, list[str]]:
        """(jpg data offsets, sizes, keys) of a shard's samples, in stored order."""
        got = self._index.get(shard)
        if got is None:
            from p2p.data.shards.index import read_index, split_name

            try:
                samples = read_index(self.idxs[shard], self.sizes[shard])
            except (OSError, ValueError) as e:
                raise UsageError(f"data.source={self.source!r}: cannot read the index {self.idxs[shard]}: {e}") from None
            if len(samples) != self.counts[shard]:
                raise UsageError(f"{self.idxs[shard]} lists {len(samples)} samples, the manifest {self.counts[shard]}: "
                                 f"the shard folder is inconsistent (re-run 'p2p shard')")
            offsets = np.zeros(len(samples), dtype=np.int64)
            sizes = np.zeros(len(samples), dtype=np.int64)
            keys = []
            for i, comps in enumerate(samples):
                key = None
                for c in comps:
                    if key is None:
                        key = split_name(c.name)[0] if c.name else f"{Path(self.tars[shard]).stem}/{i}"
                    if c.ext in ("jpg", "jpeg"):
                        offsets[i], sizes[i] = c.offset, c.size
                keys.append(key)
            got = self._index[shard] = (offsets, sizes, keys)
        return got

    def key(self, shard: int, member: int) -> str:
        return self.index(shard)[2][member]

    def read(self, shard: int, member: int) -> bytes:
        """The jpg bytes of a sample (one pread at the index offset)."""
        offsets, sizes, _ = self.index(shard)
        if os.getpid() != self._pid:  # a forked worker: its own descriptors
            self._fds, self._pid, self._lock = {}, os.getpid(), threading.Lock()
        fd = self._fds.get(shard)
        if fd is None:
            with self._lock:
                fd = self._fds.get(shard)
                if fd is None:
                    # non-blocking: a tar swapped for a FIFO since the check fails its reads, never hangs
                    fd = self._fds[shard] = os.open(self.tars[shard], os.O_RDONLY | os.O_NONBLOCK)
        size = int(sizes[member])
        data = os.pread(fd, size, int(offsets[member]))
        if size == 0 or len(data) != size:
            raise OSError(f"short read: {len(data)} of {size} bytes (is the shard truncated?)")
        return data

    def __getstate__(self):  # spawn-started workers: no descriptors (nor locks) across processes
        state = dict(self.__dict__)
        state["_fds"], state["_lock"] = {}, None
        return state

    def __setstate__(self, state):
        self.__dict__.update(state)
        self._lock = threading.Lock()

    def close(self) -> None:
        if os.getpid() == getattr(self, "_pid", None):
            for fd in getattr(self, "_fds", {}).values():
                try:
                    os.close(fd)
                except OSError:
                    pass
        self._fds = {}

    def __del__(self):
        self.close()


# ---------------------------------------------------------------------------------------------
# batches


class ShardBatches(torch.utils.data.Dataset):
    """Map-style dataset whose item b is the whole batch b: a Batch, or a SlotRef into `ring`
    when it runs in DataLoader workers."""

    writes_into_ring = True  # whether WdsLoader.epoch gives its workers a shared-memory Ring

    def __init__(self, shards: ShardSet, plan: np.ndarray, batch_size: int, spare: np.ndarray, load_size: int,
                 paired: bool, seed: int, epoch: int, train: bool):
        self.shards, self.plan, self.batch_size, self.spare = shards, plan, batch_size, spare
        self.load_size, self.paired, self.seed, self.epoch, self.train = load_size, paired, seed, epoch, train
        self.ring: Ring | None = None
        self.pin = False  # batches made in this process go straight into pinned memory (a CUDA device)

    @property
    def shape(self) -> tuple[int, int, int, int]:
        s = self.load_size
        return (self.batch_size, 3, s, 2 * s if self.paired else s)

    def __len__(self) -> int:
        return batch_count(len(self.plan), self.batch_size)

    def __getitem__(self, b: int):
        rows = self.plan[b * self.batch_size:(b + 1) * self.batch_size]
        in_worker = torch.utils.data.get_worker_info() is not None
        if self.ring is not None and in_worker:
            w, slot, images = self.ring.take(len(rows))
        else:
            images = channels_last_batch((len(rows), *self.shape[1:]), self.pin and not in_worker)
        keys = []
        for i, (shard, member) in enumerate(rows.tolist()):
            keys.append(self._fill(images[i], b * self.batch_size + i, shard, member))
        if self.ring is not None and torch.utils.data.get_worker_info() is not None:
            return SlotRef(w, slot, len(rows), keys)
        return Batch(images, keys)

    def _fill(self, out: torch.Tensor, pos: int, shard: int, member: int) -> str:
        """Decode the sample at epoch position `pos` into `out` (or its replacement); its key."""
        return self.first_good(pos, shard, member, lambda key, data: fill_sample(
            out, data, self.load_size, self.paired, self.seed, self.epoch, key if self.train else None,
            self.shards.max_pixels))

    def first_good(self, pos: int, shard: int, member: int, use) -> str:
        """The key of the first sample, from (shard, member) on through the replacements, whose
        bytes `use(key, data)` takes without raising; each one it rejects is reported."""
        sh = self.shards
        for attempt in range(16):
            key = sh.key(shard, member)
            try:
                use(key, sh.read(shard, member))
                return key
            except (OSError, RuntimeError, ValueError) as e:
                warnings.warn(f"skipping corrupt sample {key!r} in {sh.tars[shard]}: {type(e).__name__}: "
                              f"{str(e).splitlines()[0] if str(e) else ''}", stacklevel=2)
            # a deterministic replacement: the rank's samples left out of this epoch first
            shard, member = (int(v) for v in self.spare[(pos + attempt) % len(self.spare)])
        raise UsageError(f"data: 16 corrupt samples in a row near {sh.tars[shard]}; re-run 'p2p shard'")


def open_split(source: str, split: str, args: LoaderArgs) -> ShardSet:
    """The shards a loader reads for `split`, checked against the task. A shard folder without
    val shards validates on its first train samples (with a warning, unless it is a separate
    data.val_source)."""
    what = f"data.source={source!r}"
    shards = ShardSet(source, split, args.max_pixels)
    if split != "train" and shards.total == 0:
        fallback = ShardSet(source, "train", args.max_pixels)
        if fallback.total:
            if source != args.val_source:  # a separate val_source may well hold only a train split
                warn_once(f"{what} has no val shards: validating on the first {args.val_images} train samples "
                          f"(they are also trained on); shard with --val-fraction > 0 or set data.val_source")
            shards = fallback
    if shards.total == 0:
        raise UsageError(f"{what}: the {shards.split} split has no samples (see the manifest's skipped list)")
    if (shards.manifest.get("task") == "labels") != (args.inputs == "labels"):  # p2p.data.label_loaders
        raise UsageError(f"{what} holds label maps (p2p shard --task labels): set task.name=labels"
                         if args.inputs != "labels" else
                         "task.name=labels needs label shards: make them with 'p2p shard --task labels'")
    if args.inputs == "rgb" and shards.paired != args.paired:  # label shards store the map and photo apart
        raise UsageError(f"{what} holds paired A|B images (p2p shard --task paired); set task.name=paired"
                         if shards.paired else
                         f"task.name=paired needs A|B shards, and {what} holds single images: "
                         f"make them with 'p2p shard --task paired'")
    return shards


class WdsLoader:
    """Deterministic, rank-disjoint batches from a shard folder (see the module docstring)."""

    batches = ShardBatches  # what the workers make of a batch's plan rows (p2p.data.nvjpeg: bytes)

    def __init__(self, source: str, split: str, rank: int, world: int, args: LoaderArgs, device=None):
        self.train = split == "train"
        self.seed, self.rank, self.world = args.seed, rank, world
        self.load_size, self.workers, self.threaded = args.load_size, max(0, args.workers), args.worker_kind == "thread"
        self.paired = args.paired
        self.pin = device is not None and torch.device(device).type == "cuda"
        what = f"data.source={source!r}"
        self.shards = shards = open_split(source, split, args)
        self.sample_count = shards.total
        if self.train:
            self.batch_size = args.batch_size
            self.batches_per_epoch = batches_per_epoch(shards.total, self.batch_size, world, what)
        else:
            self.batch_size = val_batch_size(args.batch_size, args.val_images)
            self._val = val_plan(shards.counts, args.val_images, rank, world)
            self.batches_per_epoch = batch_count(len(self._val), self.batch_size)
        self._continued: tuple[int, np.ndarray, np.ndarray] | None = None  # (epoch, plan, leftovers)
        self._stream = None  # the workers of consecutive epochs (p2p.data.stream.EpochStream)

    def continue_epoch(self, epoch: int, history: list) -> None:
        """Epoch `epoch` goes on after what `history` read with other world or batch sizes
        (p2p.data.plan.continued_plan); batch indices of that epoch count from there."""
        # only the old rank orders this rank's part falls in are made (O(N/W) per rank, not O(N x W0))
        orders = RankOrders.of_shards(self.shards.counts, self.seed, epoch, history[0][0])
        self._continued = (epoch, *continued_plan(orders, history, self.rank, self.world, self.batch_size))

    def _continues(self, epoch: int) -> bool:
        return self.train and self._continued is not None and self._continued[0] == epoch

    def epoch_batches(self, epoch: int) -> int:
        """Batches in epoch `epoch` (fewer in an epoch continued with another world size)."""
        return len(self._continued[1]) // self.batch_size if self._continues(epoch) else self.batches_per_epoch

    def plan(self, epoch: int) -> np.ndarray:
        """This rank's (shard, member) rows of an epoch, in batch order."""
        if not self.train:
            return self._val
        if self._continues(epoch):
            return self._continued[1]
        return train_plan(self.shards.counts, self.batch_size, self.seed, epoch, self.rank, self.world)

    def keys(self, epoch: int) -> list[str]:
        """The keys of the epoch's samples in order (reads index files only)."""
        return [self.shards.key(int(s), int(m)) for s, m in self.plan(epoch)]

    def dataset(self, epoch: int) -> ShardBatches:
        if self._continues(epoch):
            plan = self._continued[1]
            spare = np.concatenate([self._continued[2], plan])
        elif self.train:  # replacements for corrupt samples: the rank's unused samples, then the rest
            full = rank_samples(self.shards.counts, self.seed, epoch, self.rank, self.world)
            plan = full[: self.batches_per_epoch * self.batch_size]
            spare = np.concatenate([full[len(plan):], plan])
        else:
            plan = self._val
            spare = np.roll(plan, -1, axis=0)
        from p2p.data.shards.index import collector_paused

        with collector_paused():  # millions of small objects, no cycles
            for shard in np.unique(np.concatenate([plan[:, 0], spare[:, 0]])).tolist():
                self.shards.index(shard)  # parsed before workers fork (they inherit it) or threads start
        return self.batches(self.shards, plan, self.batch_size, spare, self.load_size, self.paired, self.seed,
                            epoch, self.train)

    def epoch(self, epoch: int, start: int = 0) -> Iterator[Batch]:
        if start >= self.epoch_batches(epoch):
            return
        if self.workers == 0:
            data = self.dataset(epoch)
            data.pin = self.pin
            yield from map(data.__getitem__, range(start, self.epoch_batches(epoch)))
            return
        # one set of workers for this and the following epochs (p2p.data.stream)
        from p2p.data.stream import stream_epoch

        yield from stream_epoch(self, epoch, start, self.workers if self.train else
                                min(self.workers, self.epoch_batches(epoch) - start), keep=self.train)
