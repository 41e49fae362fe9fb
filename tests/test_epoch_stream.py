"""Loader workers persist across epochs (p2p.data.stream, issue 21): one set of worker processes
and one shared-memory Ring for consecutive epochs, the next epoch's batches made while the current
one ends, and the same batches as a loader without workers, epoch after epoch."""

from __future__ import annotations

import pytest
import torch

from helpers.image_folders import folder_and_shards
from helpers.runs import wait_for
from p2p.config import load_config, with_values
from p2p.data import build_loader


@pytest.fixture(scope="module")
def shards(tmp_path_factory):
    return folder_and_shards(tmp_path_factory.mktemp("stream"), n=14, seed=5, shard_mb=0.02) / "shards"


def loader_for(shards, workers: int, kind: str = "process"):
    cfg = with_values(load_config(), {"data.source": str(shards), "data.backend": "wds", "data.load_size": 40,
                                      "data.image_size": 32, "model.num_downs": 5, "train.batch_size": 2, "data.workers": workers,
                                      "data.worker_kind": kind})
    return build_loader(cfg, "train")


def same(a, b) -> bool:
    return len(a) == len(b) and all(x.keys == y.keys and torch.equal(x.images, y.images) for x, y in zip(a, b))


def workers_of(loader) -> list[int]:
    it = loader._stream._items.gi_frame.f_locals["it"]  # the DataLoader iterator inside p2p.data.workers.watched
    return [p.pid for p in it._workers]


def test_process_workers_and_their_ring_outlive_the_epoch(shards):
    ref = loader_for(shards, 0)
    loader = loader_for(shards, 2)
    first = list(loader.epoch(0))
    stream = loader._stream
    pids, ring = workers_of(loader), stream.ring
    assert ring is not None and stream.next == (1, 0)
    # the workers already make epoch 1's batches: each holds a ring slot it is filling or has filled
    wait_for(lambda: any(sem.get_value() < ring.slots for sem in ring.free), timeout=60,
             what="a worker to start on the next epoch")
    second, third = list(loader.epoch(1)), list(loader.epoch(2))
    assert loader._stream is stream and stream.ring is ring and workers_of(loader) == pids  # no fork, no new ring
    assert same(first, list(ref.epoch(0))) and same(second, list(ref.epoch(1))) and same(third, list(ref.epoch(2)))


def test_a_resume_or_a_stop_mid_epoch_starts_a_new_stream_with_the_same_batches(shards):
    ref = loader_for(shards, 0)
    loader = loader_for(shards, 2)
    part = loader.epoch(3)
    got = [next(part), next(part)]
    part.close()  # a loop stopped mid-epoch: its workers stop
    assert loader._stream is None
    assert same(got, list(ref.epoch(3))[:2])
    tail = list(loader.epoch(3, start=2))  # a resume at batch 2
    assert same(tail, list(ref.epoch(3, start=2)))
    again = list(loader.epoch(3))  # the same epoch again: a new stream from its start
    assert same(again, list(ref.epoch(3)))


def test_decode_threads_outlive_the_epoch(shards):
    ref = loader_for(shards, 0)
    loader = loader_for(shards, 2, kind="thread")
    a = list(loader.epoch(0))
    stream = loader._stream
    b = list(loader.epoch(1))
    assert loader._stream is stream and same(a + b, list(ref.epoch(0)) + list(ref.epoch(1)))
    del loader, stream  # nobody holds the loader: its threads stop (no reference cycle keeps them)
    import threading

    wait_for(lambda: not [t for t in threading.enumerate() if t.name.startswith("p2p-wds")], timeout=30,
             what="the decode threads to stop")
