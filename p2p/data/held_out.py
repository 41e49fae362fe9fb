"""Held-out images whole, at their own size: what validation and `p2p eval` score, through the
same geometry as `p2p predict` (p2p.inference), so a reported score is the score of the images
a user gets. Unlike the loaders' batches, nothing is cropped or resized here.

Which images, for `data.val_source` (else `data.source`), this rank's share of at most `limit`:
- `embedded`: the held-out photo(s), whole;
- a shard folder (any backend): the first `limit` samples of the val split in manifest order,
  decoded at the stored size (short side = the shards' `--size`);
- an image folder: the first `limit` images of its val split (val/ or test/, or the hash split),
  EXIF-rotated; A/ and B/ pairs side by side, B resized to A's size;

every rank taking every world-th of them, so the set scored is the same for any world size.

A sample that cannot be read (zero bytes, not an image, a format p2p does not decode, more than
data.max_pixels, truncated or corrupt: p2p.data.images) is skipped, as the training split skips it,
and listed with its reason in the result's `skipped` (which the caller reports); it is not replaced,
so the set scored is still the same for any world size.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from p2p.data import Backend, LoaderArgs, loader_args, resolve_backend
from p2p.errors import UsageError
from p2p.specs.tasks import TASKS


@dataclass
class HeldOut:
    index: int  # position in the whole held-out set (the same whatever the world size)
    key: str
    image: torch.Tensor  # uint8 3 x H x W; paired: A|B side by side


class HeldOutSet(list):
    """This rank's HeldOut images, plus `skipped`: (key, reason) of each of its samples that
    could not be read."""

    def __init__(self, items=(), skipped=()):
        super().__init__(items)
        self.skipped: list[tuple[str, str]] = list(skipped)

    def skip(self, key: str, error: Exception) -> None:
        """Record an unreadable sample (the caller reports `skipped`: a warning, or a line)."""
        detail = str(error).splitlines()[0] if str(error) else ""
        self.skipped.append((key, f"{getattr(error, 'reason', type(error).__name__)}: {detail}"))


def held_out(cfg, rank: int = 0, world: int = 1, limit: int | None = None,
             backend: Backend | None = None) -> list[HeldOut]:
    """This rank's share of the held-out images; `backend` is the resolved data.backend (resolved
    here, without a device, when not given or when it was resolved for another source)."""
    d = cfg.data
    source = d.val_source or d.source
    limit = d.val_images if limit is None else limit
    if backend is None or backend.source != source:
        backend = resolve_backend(source, d.backend, backend.device_type if backend is not None else None,
                                  TASKS[cfg.task.name].input_kind)
    args = loader_args(cfg)
    if args.inputs == "labels":  # the A half from label maps
        return _label_maps(args, source, backend, rank, world, limit)
    if source == "embedded":
        return _embedded(args, rank, world, limit)
    if backend.spec.needs_shards:
        return _shards(args, source, rank, world, limit)
    return _folder(args, source, rank, world, limit)


def _tensor(arr: np.ndarray) -> torch.Tensor:
    # a copy: decoded and cached photos are read-only arrays, which torch.from_numpy warns about
    return torch.from_numpy(np.array(arr)).permute(2, 0, 1).contiguous()


def _embedded(args: LoaderArgs, rank: int, world: int, limit: int) -> list[HeldOut]:
    from p2p.data.folder import EMBEDDED_VAL, embedded_photo

    if args.paired:
        raise UsageError("task.name=paired needs paired data (A|B images or A/ and B/ folders); "
                         "the embedded photos are single images")
    names = EMBEDDED_VAL[:limit]
    return HeldOutSet(HeldOut(i, name, _tensor(embedded_photo(name))) for i, name in enumerate(names)
                      if i % world == rank)


def _shards(args: LoaderArgs, source: str, rank: int, world: int, limit: int, shards=None,
            decode=None) -> list[HeldOut]:
    """`shards` and `decode` (what `shards.read` gives -> uint8 3 x H x W): task labels' own."""
    from p2p.data.decode import decode_rgb
    from p2p.data.plan import sequence_range
    from p2p.data.wds import open_split

    shards = open_split(source, "val", args) if shards is None else shards
    decode = decode or (lambda data: decode_rgb(data, shards.max_pixels))
    # the first `limit` rows only: a train split standing in for val may hold 100M samples
    rows = sequence_range(shards.counts, np.arange(len(shards.counts)), 0, min(limit, shards.total)).tolist()
    out = HeldOutSet()
    try:
        for i, (s, m) in enumerate(rows):
            if i % world != rank:
                continue
            key = shards.key(s, m)
            try:
                out.append(HeldOut(i, key, decode(shards.read(s, m))))
            except (OSError, RuntimeError, ValueError) as e:  # as the wds loader's replacement loop
                out.skip(f"{key} ({shards.tars[s]})", e)
    finally:
        shards.close()
    return out


def _folder(args: LoaderArgs, source: str, rank: int, world: int, limit: int) -> list[HeldOut]:
    from p2p.data.folder import split_items
    from p2p.data.images import IMAGE_EXTS, ImageRejected, read_rgb

    items = split_items(Path(source), "val", args.paired, args.val_fraction)[:limit]
    if not items:
        raise UsageError(f"data.source={source!r}: no images for the val split "
                         f"(looked for {', '.join(sorted(IMAGE_EXTS))})")
    out, limit_px = HeldOutSet(), args.max_pixels
    for i in range(rank, len(items), world):
        item = items[i]
        key = str(item[0] if isinstance(item, tuple) else item)
        try:
            if isinstance(item, tuple):  # (A path, B path)
                a = read_rgb(item[0], limit_px)
                b = read_rgb(item[1], limit_px).resize(a.size)
                arr = np.concatenate([np.asarray(a), np.asarray(b)], axis=1)
            else:
                arr = np.asarray(read_rgb(item, limit_px))
        except ImageRejected as e:
            out.skip(key, e)
            continue
        out.append(HeldOut(i, key, _tensor(arr)))
    return out


def _label_maps(args: LoaderArgs, source: str, backend, rank: int, world: int, limit: int):
    """The HeldOutSet for task labels (its loaders: p2p.data.label_loaders): A|B images whose A
    half is the map's (at its own size; shards: the stored size). A map p2p refuses is one line
    (UsageError)."""
    from p2p.data.label_loaders import LabelWdsLoader, decode_label_sample, label_split_items, stored_side
    from p2p.data.label_maps import LabelMapError, load_a_half

    if backend.spec.needs_shards:
        shards = LabelWdsLoader(source, "val", 0, 1, args).shards

        def decode(data):  # at the stored size
            return decode_label_sample(data, stored_side(data[0]), shards.max_pixels)

        return _shards(args, source, rank, world, limit, shards, decode)
    from p2p.data.images import ImageRejected, read_rgb

    if source == "embedded":
        raise UsageError("task.name=labels needs label maps and photos; the embedded photos have none")
    items = label_split_items(source, "val", args)[:limit]
    if not items:
        raise UsageError(f"data.source={source!r}: no label map with its photo for the val split")
    out = HeldOutSet()
    for i in range(rank, len(items), world):
        item = items[i]
        try:
            photo = read_rgb(item.photo, args.max_pixels)
            a = load_a_half(item.label, item.inst, None, args.label_nc, args.max_pixels, photo.size)
        except LabelMapError as e:
            raise UsageError(f"{item.label}: {e}") from None
        except ImageRejected as e:
            out.skip(str(item.label), e)
            continue
        out.append(HeldOut(i, str(item.label), _tensor(np.concatenate([a, np.asarray(photo)], axis=1))))
    return out
