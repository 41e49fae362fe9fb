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
asking for `start` = batches already done. Ranks read disjoint samples. A loader whose spec
says `continues_other_world` also has `continue_epoch(e, history)`: it goes on with an epoch
begun under another world or batch size (p2p.train.position; folder and wds do, dali does not).
Loaders take their arguments explicitly (`LoaderArgs`); `build_loader` is the one function that
reads them from the Config.

Backends are registered in p2p.specs.backends (`BACKENDS`): `folder` (image folders and the
embedded photos: p2p.data.folder), `wds` (WebDataset shards + DataLoader workers:
p2p.data.wds), `dali` (NVIDIA DALI, an optional extra: p2p.data.dali), `nvjpeg` (the wds
reader, with torchvision's nvJPEG decoding on the GPU: p2p.data.nvjpeg). `auto_backend` is
the `auto` rule: `folder` for image folders; for shard folders `dali` on a GPU when DALI is
importable, else `nvjpeg` on a GPU, else `wds`. It is resolved once (`resolve_backend`) and
the resolved `Backend` passed on. Shards are
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
from p2p.specs import load
from p2p.specs.backends import BACKENDS, BackendSpec
from p2p.specs.tasks import TASKS

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
    """What every backend's loader is (the loader contract above)."""

    batches_per_epoch: int
    batch_size: int  # per rank
    world: int
    sample_count: int  # samples in its split (before the cut to whole batches per rank)

    def epoch(self, epoch: int, start: int = 0) -> Iterator[Batch]: ...

    def epoch_batches(self, epoch: int) -> int:
        """Batches per rank in `epoch`: fewer in an epoch continued with another world size."""


class ContinuingLoader(Loader, Protocol):
    """A loader whose spec says `continues_other_world`: it can go on with an epoch begun under
    another world or batch size (p2p.train.position)."""

    def continue_epoch(self, epoch: int, history: list) -> None: ...


def is_shard_folder(source: str) -> bool:
    from p2p.data.shards.format import MANIFEST

    p = Path(source)
    return (p / MANIFEST).is_file() or any(p.glob("train/*.tar"))


def importable(package: str) -> bool:
    """Whether `package` (a backend's optional extra) imports here."""
    try:
        __import__(package)  # the import statement's own hook (which tests hiding a package patch)
    except ImportError:
        return False
    return True


class Backend(str):
    """The name of the backend that reads one source, resolved once (`auto` included) and then
    passed on: it compares and prints as that name, and carries its `spec` and how messages name
    the setting (`setting`: "data.backend=dali (chosen by auto)"), so that every message names
    the backend really in use."""

    def __new__(cls, spec: BackendSpec, source: str, by_auto: bool = False, device_type: str | None = None):
        self = super().__new__(cls, spec.name)
        self.spec, self.source = spec, source
        self.by_auto = by_auto  # data.backend=auto chose it
        self.device_type = device_type  # the device type it was resolved for (None: not known)
        return self

    def __getnewargs__(self):
        return self.spec, self.source, self.by_auto, self.device_type

    @property
    def name(self) -> str:
        return self.spec.name

    @property
    def setting(self) -> str:
        return f"data.backend={self.name}" + (" (chosen by auto)" if self.by_auto else "")


def auto_backend(shards: bool, device_type: str | None, inputs: str = "rgb") -> BackendSpec:
    """The `data.backend=auto` rule, the only one: of the backends that read this kind of source
    and that auto may choose on this device type (a CPU when it is not known, as in `p2p
    submit` on a login node), the lowest `auto_rank` whose package imports."""
    where = device_type or "cpu"
    fits = sorted((s for s in BACKENDS if s.needs_shards == shards and where in s.auto_devices and s.reads(inputs)),
                  key=lambda s: s.auto_rank)
    for spec in fits:
        if not spec.package or importable(spec.package):
            return spec
    raise UsageError(f"data.backend=auto: no backend reads {'shard' if shards else 'image'} folders on {where}")


def resolve_backend(source: str, backend: str, device=None, inputs: str = "rgb") -> Backend:
    """The backend that reads `source` for `data.backend`, on `device` (None: not known here),
    for a task whose inputs are of kind `inputs` (its spec's input_kind)."""
    if source != "embedded" and not Path(source).exists():
        raise UsageError(f"data.source={source!r}: no such folder (give an image folder, a shard folder "
                         f"made by 'p2p shard', or 'embedded')")
    shards = source != "embedded" and is_shard_folder(source)
    device_type = str(device).partition(":")[0] if device is not None else None
    if backend == "auto":
        return Backend(auto_backend(shards, device_type, inputs), source, True, device_type)
    spec = BACKENDS[backend]
    if not spec.reads(inputs):
        readers = " or ".join(s.name for s in BACKENDS if s.reads(inputs) and s.needs_shards == spec.needs_shards)
        raise UsageError(f"data.backend={backend} cannot read the {inputs} inputs of this task ({spec.cannot_read}); "
                         f"use data.backend={readers} (or auto)")
    if spec.needs_shards and not shards:
        raise UsageError(f"data.backend={backend} needs a shard folder (run 'p2p shard {source} OUT' first); "
                         f"{source!r} has no manifest.json or train/*.tar")
    return Backend(spec, source, False, device_type)


@dataclass(frozen=True)
class LoaderArgs:
    """What a loader reads, given explicitly (`loader_args` takes it from the Config)."""

    batch_size: int  # per rank in training (validation batches: p2p.data.plan.val_batch_size)
    seed: int
    paired: bool  # A|B side by side (the task's spec); otherwise single images
    inputs: str  # the task's input kind (p2p.specs.tasks.INPUT_KINDS): "labels" reads label maps
    label_nc: int  # labels: ids must be below it
    instance_boundaries: bool  # labels: the A half carries pix2pixHD's instance boundaries
    load_size: int
    workers: int
    worker_kind: str  # "process" or "thread" (backends that honour it: their spec's worker_kinds)
    max_pixels: int
    val_images: int
    val_fraction: float  # image folders without train/ and val/: the share held out
    epoch_size: int  # the embedded photos: random crops per epoch
    val_source: str  # a separate val source ("" = none): one holding only a train split is no surprise


def loader_args(cfg) -> LoaderArgs:
    """The loaders' arguments from the Config: the one place that reads them there."""
    d, task = cfg.data, TASKS[cfg.task.name]
    return LoaderArgs(batch_size=cfg.train.batch_size, seed=cfg.run.seed, paired=task.paired,
                      inputs=task.input_kind, label_nc=cfg.task.label_nc,
                      instance_boundaries=cfg.task.instance_boundaries,
                      load_size=d.load_size, workers=d.workers, worker_kind=d.worker_kind, max_pixels=d.max_pixels,
                      val_images=d.val_images, val_fraction=d.val_fraction, epoch_size=d.epoch_size,
                      val_source=d.val_source)


def build_loader(cfg, split: str, rank: int = 0, world: int = 1, device: torch.device | None = None,
                 backend: Backend | None = None) -> Loader:
    """The loader for `split` ("train" or "val") of `cfg.data`, for this rank, by `backend` (the
    resolved one; resolved here when not given, or when the split reads another source)."""
    d = cfg.data
    source = d.val_source if (split == "val" and d.val_source) else d.source
    args = loader_args(cfg)
    if backend is None or backend.source != source:
        backend = resolve_backend(source, d.backend, device, args.inputs)
    return load(backend.spec.loader_for(args.inputs))(source, split, rank, world, args, device)
