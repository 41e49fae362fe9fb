"""The training loop's view of a loader: an endless stream of (epoch, index in epoch, batch on
the device) from a saved position on, one batch ahead. On a GPU the next batch's host-to-device
copy runs on a side stream while the current step computes (as timm's PrefetchLoader); the
batch memory is pinned by the loaders."""

from __future__ import annotations

from typing import Iterator

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
