"""Deterministic, rank-disjoint sample order: the part every loader shares.

One global permutation per (seed, epoch); rank r takes every world-th element starting at r,
and every rank keeps the same number of whole batches, so DDP never waits on a rank that has
run out. The few samples dropped at an epoch's end differ from epoch to epoch.
"""

from __future__ import annotations

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


def rank_order(n: int, batch_size: int, seed: int, epoch: int, rank: int, world: int,
               shuffle: bool = True) -> list[int]:
    """Sample indices for this rank's epoch, exactly batches_per_epoch * batch_size of them."""
    nb = batches_per_epoch(n, batch_size, world)
    if shuffle:
        g = torch.Generator().manual_seed(mix_seed(seed, epoch))
        perm = torch.randperm(n, generator=g).tolist()
    else:
        perm = list(range(n))
    return perm[rank::world][: nb * batch_size]
