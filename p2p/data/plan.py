"""Which samples a rank reads, in which order: the deterministic, rank-disjoint sample order
every loader shares. Pure functions of sample counts and (seed, epoch, rank, world size).

Every rank gets the same number of whole batches, so DDP never waits on a rank that has run
out; the few samples dropped at an epoch's end differ from epoch to epoch.

Image folders (`rank_order`): one global permutation per (seed, epoch); rank r takes every
world-th element starting at r.

Shard folders (`train_plan`), computed from the manifest's per-shard counts without opening a
tar:

1. the shards are permuted by (seed, epoch) and their samples concatenated: N samples;
2. rank r of W takes the contiguous range [N*r//W, N*(r+1)//W) of that sequence (the rule
   DALI's readers use for shard_id/num_shards, so the dali backend gives each rank the same
   samples as the wds backend). Ranks are disjoint; the split is at sample granularity, so one
   shard may feed several ranks and fewer shards than ranks x workers is fine;
3. the rank shuffles its range by (seed, epoch, rank) and keeps batches_per_epoch * batch_size
   samples, batches_per_epoch = (N // W) // batch_size: the smallest range's whole batches.

Validation (`val_plan`): the val shards in manifest order; rank r takes the head of its
[N*r//W, N*(r+1)//W) range, up to its share of data.val_images; the last batch may be short.

A changed world size (or batch size) mid-epoch (`continued_plan`): the position is the images
already read, not a batch index. A run that read k batches per rank with W ranks of batch B
(a part of the epoch's `EpochHistory`: (W, B, k)) has read the first k*B samples of each of
its W rank orders; what is left of the epoch is every other sample of those orders, rank by
rank in their order (the epoch's whole sample set minus what was read). The new W' ranks split
that rest into contiguous ranges by the same rule as above and keep the smallest range's whole
batches: no sample is read twice and none is skipped, except the fewer than W'*B' that cannot
make a whole batch on every rank, left out of this epoch as the
tail of every epoch is. Several changes inside one epoch chain the same way. The next epoch
starts from the plain plan of the new world size.

Cost per rank: the shard order and its cumulative counts are O(S); a rank builds only its own
range of the sample sequence (`sequence_range`) and shuffles that, O(N/W). A continued epoch
keeps what is left as ranges of the old rank orders (`rest_segments`, O(W0 + W1 + ...), no
sample touched) and makes only the old orders its own part falls in (`RankOrders`). The order
is the one the whole-epoch computation gave (tests/helpers/plan_reference.py), bit for bit.
"""

from __future__ import annotations

import numpy as np
import torch

from p2p.errors import UsageError


def mix_seed(*parts: int) -> int:
    """Combine integers into one 63-bit seed (FNV-style), stable across Python runs."""
    h = 1469598103934665603
    for p in parts:
        h = ((h ^ (int(p) & 0xFFFFFFFFFFFFFFFF)) * 1099511628211) % (1 << 64)
    return h % ((1 << 63) - 1)


def batches_per_epoch(n: int, batch_size: int, world: int, what: str = "data.source") -> int:
    per_rank = n // world
    if per_rank < batch_size:
        raise UsageError(f"{what}: {n} samples cannot give each of {world} process(es) a batch of "
                         f"{batch_size}; lower train.batch_size or add data")
    return per_rank // batch_size


def val_batch_size(batch_size: int, val_images: int) -> int:
    """The validation batch: train.batch_size, unless data.val_images is smaller."""
    return max(1, min(batch_size, val_images))


def batch_count(n: int, batch_size: int) -> int:
    """Batches of `n` samples; the last one may be short (validation)."""
    return -(-n // batch_size)


def rank_order(n: int, batch_size: int, seed: int, epoch: int, rank: int, world: int,
               shuffle: bool = True) -> list[int]:
    """Sample indices for this rank's epoch, exactly batches_per_epoch * batch_size of them."""
    nb = batches_per_epoch(n, batch_size, world)
    return epoch_permutation(n, seed, epoch, shuffle)[rank::world][: nb * batch_size].tolist()


def epoch_permutation(n: int, seed: int, epoch: int, shuffle: bool = True) -> np.ndarray:
    """Image folders: the epoch's order of all n samples, a function of (seed, epoch) alone."""
    if not shuffle:
        return np.arange(n, dtype=np.int64)
    g = torch.Generator().manual_seed(mix_seed(seed, epoch))
    return torch.randperm(n, generator=g).numpy()


def rank_range(n: int, rank: int, world: int) -> tuple[int, int]:
    """DALI's shard rule (loader.cc start_index): rank r of W gets [n*r//W, n*(r+1)//W)."""
    return n * rank // world, n * (rank + 1) // world


def shard_order(n_shards: int, seed: int, epoch: int) -> np.ndarray:
    """The shards' order in an epoch: a permutation from (seed, epoch), the same on every rank."""
    g = torch.Generator().manual_seed(mix_seed(seed, epoch, 0x5EED))
    return torch.randperm(n_shards, generator=g).numpy()


def sequence(counts: np.ndarray, order: np.ndarray) -> np.ndarray:
    """(shard, member) rows of the shards in `order`, concatenated: M x 2 int64."""
    if len(order) == 0:
        return np.zeros((0, 2), dtype=np.int64)
    c = counts[order]
    shard = np.repeat(order, c)
    starts = np.repeat(np.cumsum(c) - c, c)
    member = np.arange(int(c.sum()), dtype=np.int64) - starts
    return np.stack([shard, member], axis=1).astype(np.int64)


def sequence_range(counts: np.ndarray, order: np.ndarray, lo: int, hi: int) -> np.ndarray:
    """Rows [lo, hi) of sequence(counts, order), built from the shards that hold them alone:
    O(S) for the cumulative counts plus O(hi - lo + the two end shards). Counts that can check
    their shards (p2p.data.shards.catalog.ShardCounts) check those shards before any row is made."""
    if hi <= lo or len(order) == 0:
        return np.zeros((0, 2), dtype=np.int64)
    ends = np.cumsum(counts[order])
    first = int(np.searchsorted(ends, lo, side="right"))
    last = int(np.searchsorted(ends, hi - 1, side="right"))
    shards = order[first:last + 1]
    if hasattr(counts, "check_shards"):  # a shard folder's counts (ShardCounts): its tars back them first
        counts.check_shards(shards)
    c = counts[shards]
    out = np.empty((int(c.sum()), 2), dtype=np.int64)  # filled in place: one temporary column at a time
    out[:, 0] = np.repeat(shards, c)
    out[:, 1] = np.arange(len(out), dtype=np.int64)
    out[:, 1] -= np.repeat(np.cumsum(c) - c, c)
    offset = int(ends[first - 1]) if first else 0
    return out[lo - offset:hi - offset]


def rank_samples(counts: np.ndarray, seed: int, epoch: int, rank: int, world: int,
                 order: np.ndarray | None = None) -> np.ndarray:
    """This rank's whole range of an epoch, shuffled by (seed, epoch, rank): M x 2 (shard, member).
    Only the rank's own range of the shard sequence is built; `order` is the epoch's
    shard_order when the caller has it already."""
    n = int(counts.sum())
    lo, hi = rank_range(n, rank, world)
    if order is None:
        order = shard_order(len(counts), seed, epoch)
    mine = sequence_range(counts, order, lo, hi)
    g = torch.Generator().manual_seed(mix_seed(seed, epoch, rank, 0xB47C))
    # take along axis 0, not mine[perm]: numpy's fancy index copies an (M, 2) array row by row
    # through its generic loop, several times slower per sample (benchmarks/plan-scale/per_sample.py)
    return np.take(mine, torch.randperm(len(mine), generator=g).numpy(), axis=0)


def train_plan(counts: np.ndarray, batch_size: int, seed: int, epoch: int, rank: int, world: int,
               what: str = "data.source") -> np.ndarray:
    """This rank's samples of an epoch in reading order: (nb * batch_size) x 2 (shard, member),
    nb = batches_per_epoch (the same on every rank)."""
    nb = batches_per_epoch(int(counts.sum()), batch_size, world, what)
    return rank_samples(counts, seed, epoch, rank, world)[: nb * batch_size]


def val_plan(counts: np.ndarray, images: int, rank: int, world: int) -> np.ndarray:
    """This rank's validation samples: the head of its range, up to its share of `images`."""
    n = int(counts.sum())
    lo, hi = rank_range(n, rank, world)
    want = min(images, n)
    share = want * (rank + 1) // world - want * rank // world
    return sequence_range(counts, np.arange(len(counts)), lo, min(hi, lo + share))


# ---------------------------------------------------------------------------------------------
# an epoch continued with another world size


EpochHistory = list  # of (world, batch_size, batches read per rank), oldest first


def images_read(history: EpochHistory, world: int, batch_size: int, batches: int) -> int:
    """Images the whole job has read in the epoch: the history's parts, then `batches` per rank
    of the current part."""
    return sum(w * b * k for w, b, k in history) + world * batch_size * batches


class RankOrders:
    """The W0 rank orders of an epoch's plain plan, each made only when asked for and kept: a
    continued plan reads the few old orders its range falls in, never all W0 of them."""

    def __init__(self, sizes: list[int], make):
        self.sizes, self._make, self._made = list(sizes), make, {}

    @classmethod
    def of_arrays(cls, orders: list[np.ndarray]) -> "RankOrders":
        return cls([len(o) for o in orders], orders.__getitem__)

    @classmethod
    def of_shards(cls, counts: np.ndarray, seed: int, epoch: int, world: int) -> "RankOrders":
        """rank_samples of every rank of `world` (shard folders), made on demand."""
        n, order = int(counts.sum()), shard_order(len(counts), seed, epoch)
        sizes = [hi - lo for lo, hi in (rank_range(n, r, world) for r in range(world))]
        return cls(sizes, lambda r: rank_samples(counts, seed, epoch, r, world, order))

    @classmethod
    def of_permutation(cls, perm: np.ndarray, world: int) -> "RankOrders":
        """perm[r::world] for every rank r (image folders)."""
        return cls([len(range(r, len(perm), world)) for r in range(world)], lambda r: perm[r::world])

    def __len__(self) -> int:
        return len(self.sizes)

    @property
    def made(self) -> list[int]:
        """The ranks whose orders were made so far."""
        return sorted(self._made)

    def __getitem__(self, rank: int) -> np.ndarray:
        if rank not in self._made:
            self._made[rank] = self._make(rank)
        return self._made[rank]


Segments = list  # of (old rank, start, stop): runs of the W0 first orders, concatenated in order


def _select(segments: Segments, cuts: list[tuple[int, int]]) -> Segments:
    """The positions [lo, hi) of each cut (ascending, disjoint) of the sequence `segments`
    stands for, as segments again."""
    out, i, pos = [], 0, 0  # pos: where segments[i] starts in the sequence
    for lo, hi in cuts:
        while lo < hi:
            r, a, b = segments[i]
            if pos + (b - a) <= lo:
                pos, i = pos + (b - a), i + 1
                continue
            start = a + lo - pos
            stop = a + min(hi - pos, b - a)
            out.append((r, start, stop))
            lo = pos + stop - a
    return out


def rest_segments(sizes: list[int], history: EpochHistory) -> Segments:
    """What is left of an epoch after `history` (see the module docstring) as ranges of the
    first rank orders, whose lengths are `sizes`: O(sum of the history's world sizes), no
    sample touched."""
    w0, b0, k0 = history[0]
    if len(sizes) != w0:
        raise ValueError(f"{len(sizes)} rank orders for a history that starts with {w0} ranks")
    segments = [(r, min(k0 * b0, s), s) for r, s in enumerate(sizes) if k0 * b0 < s]
    for w, b, k in history[1:]:
        total = sum(stop - start for _, start, stop in segments)
        cuts = [(min(lo + k * b, hi), hi) for lo, hi in (rank_range(total, r, w) for r in range(w))]
        segments = _select(segments, cuts)
    return segments


def gather(orders: RankOrders, segments: Segments) -> np.ndarray:
    """The samples `segments` stand for, reading only the orders they name."""
    parts = [orders[r][a:b] for r, a, b in segments]
    return np.concatenate(parts) if parts else orders[0][:0]


def _as_orders(first_orders) -> RankOrders:
    return first_orders if isinstance(first_orders, RankOrders) else RankOrders.of_arrays(list(first_orders))


def unread_rest(first_orders, history: EpochHistory) -> np.ndarray:
    """The samples of an epoch not read yet, in order (see the module docstring). `first_orders`
    are the W0 rank orders of the epoch's plain plan under history[0]'s world size W0, whole
    (not cut to batches): folder indices or (shard, member) rows, as arrays or RankOrders.
    All of the rest: O(N); continued_plan reads one rank's part of it."""
    orders = _as_orders(first_orders)
    return gather(orders, rest_segments(orders.sizes, history))


def continued_plan(first_orders, history: EpochHistory, rank: int, world: int,
                   batch_size: int) -> tuple[np.ndarray, np.ndarray]:
    """This rank's part of what is left of the epoch, cut to the same number of whole batches
    on every rank (possibly none), and the rank's unread leftovers (replacements for corrupt
    samples). With RankOrders, only the old rank orders this rank's part falls in are made:
    O(N/W0 x the old orders touched), not O(N x W0)."""
    orders = _as_orders(first_orders)
    segments = rest_segments(orders.sizes, history)
    n = sum(stop - start for _, start, stop in segments)
    lo, hi = rank_range(n, rank, world)
    keep = (n // world) // batch_size * batch_size
    mine = gather(orders, _select(segments, [(lo, hi)]))
    return mine[:keep], mine[keep:]
