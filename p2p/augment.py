"""Random jitter on the training device: per-sample random crop and horizontal flip of a uint8
batch, as in the pix2pix paper (load_size -> image_size crop, flip).

The random numbers come from a CPU `torch.Generator` that the loop seeds from (seed, rank,
step), so augmentation is a pure function of the step: exact resume needs no saved state, and
no device RNG is touched. Only a few integers per sample cross to the device.
"""

from __future__ import annotations

from typing import NamedTuple

import torch


def step_generator(seed: int, rank: int, step: int, stream: int = 0) -> torch.Generator:
    """A CPU generator unique to (seed, rank, step, stream) and independent of everything else."""
    g = torch.Generator()
    # Large odd multipliers keep nearby (rank, step) pairs far apart in seed space.
    g.manual_seed((seed * 1_000_003 + rank * 7_919 + step * 104_729 + stream * 15_485_863) % (2**63 - 1))
    return g


class Windows(NamedTuple):
    """Per-sample crop windows of a batch: top and left corners (int64) and whether each is
    mirrored (bool), N each, on the CPU."""

    top: torch.Tensor
    left: torch.Tensor
    mirror: torch.Tensor


def draw_windows(n: int, h: int, w: int, size: int, gen: torch.Generator | None, flip: bool = True) -> Windows:
    """The size x size windows of a batch of n H x W images: with `gen`, a random window per sample
    and (if `flip`) a coin-flip mirror, drawn in that order; without, the centre and no flip.
    Every device step (eager or fused) crops by these, so one generator gives one set of windows."""
    if h < size or w < size:
        raise ValueError(f"cannot crop {h}x{w} images to {size}x{size}")
    if gen is None:
        return Windows(torch.full((n,), (h - size) // 2), torch.full((n,), (w - size) // 2),
                       torch.zeros(n, dtype=torch.bool))
    top = torch.randint(0, h - size + 1, (n,), generator=gen)
    left = torch.randint(0, w - size + 1, (n,), generator=gen)
    mirror = torch.rand(n, generator=gen) < 0.5 if flip else torch.zeros(n, dtype=torch.bool)
    return Windows(top, left, mirror)


def crop_flip(images: torch.Tensor, size: int, gen: torch.Generator | None, flip: bool = True) -> torch.Tensor:
    """Crop every image of an N x C x H x W batch to size x size.

    With `gen`, each sample gets its own random window and (if `flip`) a coin-flip horizontal
    mirror; without, the centre window and no flip (validation). Works for any dtype and device.
    """
    n, c, h, w = images.shape
    windows = draw_windows(n, h, w, size, gen, flip)
    if gen is None:  # the centre: one slice (a view) for the whole batch
        top, left = (h - size) // 2, (w - size) // 2
        return images if h == w == size else images[:, :, top:top + size, left:left + size]
    return apply_windows(images, windows, size)


def apply_windows(images: torch.Tensor, windows: Windows, size: int) -> torch.Tensor:
    """The windows cut out of the batch (mirrored where asked), N x C x size x size."""
    crop = slice_windows if images.device.type == "cpu" else gather_windows
    return crop(images, *windows, size)


def slice_windows(images, top, left, mirror, size: int) -> torch.Tensor:
    """Per-sample slices (views), stacked: on the CPU far faster than one gather (benchmarks/RESULTS.md)."""
    out = []
    for x, t, l, m in zip(images, top.tolist(), left.tolist(), mirror.tolist()):
        win = x[:, t:t + size, l:l + size]
        out.append(win.flip(-1) if m else win)
    return torch.stack(out)


def gather_windows(images, top, left, mirror, size: int) -> torch.Tensor:
    """Every window in one advanced-indexing gather: a single kernel on a GPU."""
    dev, n = images.device, images.shape[0]
    offs = torch.arange(size)
    rows = (top[:, None] + offs).to(dev, non_blocking=True)
    cols = left[:, None] + offs
    cols = torch.where(mirror[:, None], cols.flip(1), cols).to(dev, non_blocking=True)
    batch = torch.arange(n, device=dev)[:, None, None]
    out = images.permute(0, 2, 3, 1)[batch, rows[:, :, None], cols[:, None, :]]  # N x size x size x C
    return out.permute(0, 3, 1, 2).contiguous()
