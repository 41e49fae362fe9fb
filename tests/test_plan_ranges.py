"""The sample plan in O(N/W) per rank: the range-based functions of p2p.data.plan equal the
plan p2p computed before (tests/helpers/plan_reference.py, which materialises every sample of
the epoch on every rank) bit for bit, on random counts, world sizes 1..64 and histories of 1..3
world-size changes; and a rank's plan no longer allocates the whole epoch."""

from __future__ import annotations

import random
import tracemalloc

import numpy as np
import pytest

from helpers import plan_reference as ref
from p2p.data.plan import (RankOrders, continued_plan, epoch_permutation, rank_samples, sequence_range, train_plan,
                           unread_rest, val_plan)


def _counts(rng: random.Random) -> np.ndarray:
    shards = rng.randint(1, 40)
    zero = rng.random() < 0.2  # an empty shard in the manifest must not shift anyone's range
    return np.array([rng.randint(0 if zero else 1, 30) for _ in range(shards)], dtype=np.int64)


def _same(a: np.ndarray, b: np.ndarray) -> None:
    assert a.dtype == b.dtype and a.shape == b.shape
    assert np.array_equal(a, b)


def _history(rng: random.Random, n: int, changes: int) -> list:
    """Parts of one epoch (world, batch, batches read per rank); the batches read are what each
    part could read, sometimes none."""
    history, left = [], n
    for _ in range(changes + 1):
        w, b = rng.randint(1, 64), rng.randint(1, 6)
        k = rng.randint(0, (left // w) // b) if left // w >= b else 0
        history.append((w, b, k))
        left -= w * b * k
    return history


@pytest.mark.parametrize("case", range(60))
def test_plans_equal_the_materialised_reference(case):
    rng = random.Random(case)
    counts = _counts(rng)
    n = int(counts.sum())
    seed, epoch, world = rng.randint(0, 10**6), rng.randint(0, 50), rng.randint(1, 64)
    for rank in sorted({0, world - 1, rng.randrange(world)}):
        _same(rank_samples(counts, seed, epoch, rank, world), ref.rank_samples(counts, seed, epoch, rank, world))
        images = rng.randint(1, n + 5)
        _same(val_plan(counts, images, rank, world), ref.val_plan(counts, images, rank, world))
        batch = rng.randint(1, 4)
        if n // world >= batch:
            _same(train_plan(counts, batch, seed, epoch, rank, world),
                  ref.train_plan(counts, batch, seed, epoch, rank, world))


def test_sequence_range_is_the_slice_of_the_sequence():
    rng = random.Random(7)
    for _ in range(200):
        counts = _counts(rng)
        order = np.array(rng.sample(range(len(counts)), len(counts)), dtype=np.int64)
        n = int(counts.sum())
        lo = rng.randint(0, n)
        hi = rng.randint(lo, n)
        _same(sequence_range(counts, order, lo, hi), ref.sequence(counts, order)[lo:hi])


@pytest.mark.parametrize("case", range(80))
def test_continued_plans_equal_the_materialised_reference(case):
    rng = random.Random(1000 + case)
    counts = _counts(rng)
    if counts.sum() == 0:
        counts[0] = 1
    n = int(counts.sum())
    seed, epoch = rng.randint(0, 10**6), rng.randint(0, 50)
    history = _history(rng, n, rng.randint(0, 2))  # 1..3 parts before the current world size
    world, batch = rng.randint(1, 64), rng.randint(1, 5)
    w0 = history[0][0]
    shard_firsts = [ref.rank_samples(counts, seed, epoch, r, w0) for r in range(w0)]
    perm = ref.epoch_permutation(n, seed, epoch)
    folder_firsts = [perm[r::w0] for r in range(w0)]
    _same(unread_rest(RankOrders.of_shards(counts, seed, epoch, w0), history), ref.unread_rest(shard_firsts, history))
    for rank in sorted({0, world - 1, rng.randrange(world)}):
        for lazy, firsts in ((RankOrders.of_shards(counts, seed, epoch, w0), shard_firsts),
                             (RankOrders.of_permutation(epoch_permutation(n, seed, epoch), w0), folder_firsts)):
            want = ref.continued_plan(firsts, history, rank, world, batch)
            for got in (continued_plan(lazy, history, rank, world, batch),
                        continued_plan(firsts, history, rank, world, batch)):  # plain arrays still work
                _same(got[0], want[0])
                _same(got[1], want[1])


def test_a_history_that_names_another_world_size_is_refused():
    counts = np.array([5, 5], dtype=np.int64)
    with pytest.raises(ValueError, match="3 rank orders for a history that starts with 2 ranks"):
        continued_plan([rank_samples(counts, 0, 0, r, 3) for r in range(3)], [(2, 1, 1)], 0, 1, 1)


def _peak_bytes(fn) -> int:
    tracemalloc.start()
    try:
        fn()
        return tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


def test_a_rank_plan_allocates_its_range_not_the_epoch():
    # 4M samples in 4,000 shards, 256 ranks: the epoch as (shard, member) rows is 64 MB; a rank's
    # range is 15,625 rows (250 kB). numpy reports its allocations to tracemalloc.
    counts = np.full(4000, 1000, dtype=np.int64)
    peak = _peak_bytes(lambda: train_plan(counts, 16, 0, 3, 100, 256))
    assert peak < 4_000_000, f"a rank's plan allocated {peak / 1e6:.0f} MB"


def test_a_world_size_change_makes_only_the_old_orders_it_reads():
    counts = np.full(4000, 1000, dtype=np.int64)
    orders = RankOrders.of_shards(counts, 0, 3, 256)
    history = [(256, 16, 300), (96, 16, 100)]
    peak = _peak_bytes(lambda: continued_plan(orders, history, 40, 128, 16))
    # the new rank's ~1/128 of the rest lies in about 256/128 old ranks' ranges, give or take the ends
    assert 1 <= len(orders.made) <= 6, f"made {len(orders.made)} of 256 old rank orders"
    assert peak < 8_000_000, f"a continued plan allocated {peak / 1e6:.0f} MB"
