"""The sample plan as p2p computed it before plans became O(N/W) per rank: every sample of the
epoch materialised on every rank, then sliced. An independent copy kept as the reference the
range-based functions in p2p.data.plan must equal bit for bit (tests/test_plan_ranges.py), so
runs started before the change resume on the same samples."""

from __future__ import annotations

import numpy as np
import torch

from p2p.data.plan import mix_seed  # the seed mixing itself is unchanged and tested elsewhere


def rank_range(n: int, rank: int, world: int) -> tuple[int, int]:
    return n * rank // world, n * (rank + 1) // world


def shard_order(n_shards: int, seed: int, epoch: int) -> np.ndarray:
    g = torch.Generator().manual_seed(mix_seed(seed, epoch, 0x5EED))
    return torch.randperm(n_shards, generator=g).numpy()


def sequence(counts: np.ndarray, order: np.ndarray) -> np.ndarray:
    if len(order) == 0:
        return np.zeros((0, 2), dtype=np.int64)
    c = counts[order]
    shard = np.repeat(order, c)
    starts = np.repeat(np.cumsum(c) - c, c)
    member = np.arange(int(c.sum()), dtype=np.int64) - starts
    return np.stack([shard, member], axis=1).astype(np.int64)


def rank_samples(counts: np.ndarray, seed: int, epoch: int, rank: int, world: int) -> np.ndarray:
    n = int(counts.sum())
    lo, hi = rank_range(n, rank, world)
    mine = sequence(counts, shard_order(len(counts), seed, epoch))[lo:hi]
    g = torch.Generator().manual_seed(mix_seed(seed, epoch, rank, 0xB47C))
    return mine[torch.randperm(len(mine), generator=g).numpy()]


def train_plan(counts: np.ndarray, batch_size: int, seed: int, epoch: int, rank: int, world: int) -> np.ndarray:
    nb = (int(counts.sum()) // world) // batch_size
    return rank_samples(counts, seed, epoch, rank, world)[: nb * batch_size]


def val_plan(counts: np.ndarray, images: int, rank: int, world: int) -> np.ndarray:
    n = int(counts.sum())
    lo, hi = rank_range(n, rank, world)
    want = min(images, n)
    share = want * (rank + 1) // world - want * rank // world
    return sequence(counts, np.arange(len(counts)))[lo:min(hi, lo + share)]


def epoch_permutation(n: int, seed: int, epoch: int) -> np.ndarray:
    g = torch.Generator().manual_seed(mix_seed(seed, epoch))
    return torch.randperm(n, generator=g).numpy()


def unread_rest(first_orders: list[np.ndarray], history: list) -> np.ndarray:
    w0, b0, k0 = history[0]
    rest = np.concatenate([order[k0 * b0:] for order in first_orders])
    for w, b, k in history[1:]:
        parts = [rest[lo:hi] for lo, hi in (rank_range(len(rest), r, w) for r in range(w))]
        rest = np.concatenate([part[k * b:] for part in parts])
    return rest


def continued_plan(first_orders: list[np.ndarray], history: list, rank: int, world: int,
                   batch_size: int) -> tuple[np.ndarray, np.ndarray]:
    rest = unread_rest(first_orders, history)
    lo, hi = rank_range(len(rest), rank, world)
    keep = (len(rest) // world) // batch_size * batch_size
    mine = rest[lo:hi]
    return mine[:keep], mine[keep:]
