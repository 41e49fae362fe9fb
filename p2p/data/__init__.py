"""Data: every backend yields the same thing.

The batch contract
------------------
A `Batch` holds `images`: uint8, N x 3 x H x W (RGB; channels first), and `keys`: N strings
naming the samples. H = W = `data.load_size` for single images; paired data is A|B side by
side, H = load_size, W = 2 * load_size. Loaders do no random crop to image_size, no float
conversion and no Lab: those run on the training device (p2p.augment, p2p.tasks). The memory
layout is the loader's (wds batches are channels-last: the decoder's pixel order), so whatever
reads a batch goes by its strides and never assumes it contiguous.

The loader contract
-------------------
`loader.batches_per_epoch` is the same on every rank (unequal counts would hang DDP).
`loader.epoch(e, start=0)` yields batches `start .. batches_per_epoch-1` of epoch `e`; the
order is a pure function of (seed, epoch, rank, world size), so a run resumes mid-epoch by
asking for `start` = batches already done. Ranks read disjoint samples. A loader that can go on
with an epoch begun under another world or batch size also has `continue_epoch(e, history)` and
`epoch_batches(e)` (p2p.train.position; folder and wds do, dali refuses with one line).

Backends: `folder` (image folders and the embedded photos: p2p.data.folder), `wds` (WebDataset
shards + DataLoader workers: p2p.data.wds), `dali` (NVIDIA DALI, an optional extra:
p2p.data.dali), `nvjpeg` (the wds reader, with torchvision's nvJPEG decoding on the GPU:
p2p.data.nvjpeg). `auto` picks `folder` for image folders; for shard folders `dali` on a GPU
when DALI is importable, else `nvjpeg` on a GPU, else `wds`. Shards are
made by `p2p shard` (the library: p2p.data.shards; format, DALI index, scan, plan, encode,
write). Shared by the backends: p2p.data.plan (which samples a rank reads, in which order),
p2p.data.images (image names, opening, the short-side geometry), p2p.data.decode (the CPU
decode and crop of stored JPEGs).
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Iterator, Protocol

from p2p.errors import UsageError

if TYPE_CHECKING:  # torch is imported lazily: `p2p shard` workers do not need it
    import torch


_WARNED: set = set()


def warn_once(message: str) -> None:
    """A warning shown once per process, however many loaders or epochs meet its cause."""
    if message not in _WARNED:
        _WARNED.add(message)
        warnings.warn(message, stacklevel=3)


@dataclass
class Batch:
    images: torch.Tensor
    keys: list[str]

    def pin_memory(self) -> "Batch":  # called by DataLoader(pin_memory=True)
        return Batch(self.images.pin_memory(), self.keys)

    def to(self, device, non_blocking: bool = False) -> "Batch":
        return Batch(self.images.to(device, non_blocking=non_blocking), self.keys)


class Loader(Protocol):
    batches_per_epoch: int

    def epoch(self, epoch: int, start: int = 0) -> Iterator[Batch]: ...


def is_shard_folder(source: str) -> bool:
    from p2p.data.shards.format import MANIFEST

    p = Path(source)
    return (p / MANIFEST).is_file() or any(p.glob("train/*.tar"))


SHARD_BACKENDS = ("wds", "dali", "nvjpeg")


def dali_importable() -> bool:
    try:
        import nvidia.dali  # noqa: F401
    except ImportError:
        return False
    return True


def resolve_backend(source: str, backend: str, device=None) -> str:
    """The backend that reads `source` for `data.backend`, on `device` (None: not known here,
    as in `p2p submit` on a login node; `auto` then answers as for a CPU)."""
    if source != "embedded" and not Path(source).exists():
        raise UsageError(f"data.source={source!r}: no such folder (give an image folder, a shard folder "
                         f"made by 'p2p shard', or 'embedded')")
    shards = source != "embedded" and is_shard_folder(source)
    if backend == "auto":
        if not shards:
            return "folder"
        if str(device or "").startswith("cuda"):
            return "dali" if dali_importable() else "nvjpeg"
        return "wds"
    if backend in SHARD_BACKENDS and not shards:
        raise UsageError(f"data.backend={backend} needs a shard folder (run 'p2p shard {source} OUT' first); "
                         f"{source!r} has no manifest.json or train/*.tar")
    return backend


def build_loader(cfg, split: str, rank: int = 0, world: int = 1, device: torch.device | None = None) -> Loader:
    """The loader for `split` ("train" or "val") of `cfg.data`, for this rank."""
    d = cfg.data
    source = d.val_source if (split == "val" and d.val_source) else d.source
    backend = resolve_backend(source, d.backend, device)
    if cfg.task.name == "labels":  # label maps: their own readers and an id check (p2p.data.label_loaders)
        from p2p.data.label_loaders import build_label_loader

        return build_label_loader(cfg, split, rank, world, device, backend, source)
    if backend == "folder":
        from p2p.data.folder import FolderLoader

        return FolderLoader(cfg, source, split, rank, world, device)
    if backend == "wds":
        from p2p.data.wds import WdsLoader

        return WdsLoader(cfg, source, split, rank, world, device)
    if backend == "nvjpeg":
        from p2p.data.nvjpeg import NvjpegLoader

        return NvjpegLoader(cfg, source, split, rank, world, device)
    from p2p.data.dali import DaliLoader

    return DaliLoader(cfg, source, split, rank, world, device)
