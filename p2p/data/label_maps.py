"""Semantic label maps (pix2pixHD's Cityscapes/ADE20K inputs): reading them, resizing them,
pix2pixHD's instance boundaries, and the uint8 "A half" every loader puts in the batch.

A label map is a one-channel PNG whose pixel values are class ids 0..label_nc-1 (8-bit gray,
a palette PNG's indices, or 16-bit gray); an instance map is the same kind of PNG holding
instance ids (Cityscapes' `*_instanceIds.png` are 16-bit: 26001 = class 26, instance 1). Both
are read through p2p.data.images (format from the bytes, size from the header, before decoding)
and must be PNG: a lossy format would have changed ids at its block edges. Colour images are
refused: a colour-coded map (Cityscapes' `*_color.png`) holds colours, not ids.

Maps are resized with NEAREST only (PIL's nearest samples pixel centres, as torch's
"nearest-exact"): a blend of ids 7 and 26 is not class 16.

The batch contract (p2p.data) stays uint8 N x 3 x H x W with A|B side by side: the A half's
channel 0 is the class id, channel 1 pix2pixHD's boundary map (0 or 255), channel 2 zero; the B
half is the photo. Crops and flips then cut both halves alike, and a flip keeps ids and
boundaries valid. Ids at or above 255 cannot ride in channel 0: they are stored as 255, which no
label_nc (at most MAX_LABEL_NC = 255) admits, so the range check before the device catches them.

This module needs numpy and PIL only (`p2p shard` workers use it).
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import TYPE_CHECKING, NamedTuple

import numpy as np

from p2p.data.images import DEFAULT_MAX_PIXELS, ImageRejected, decode_failure, open_image
from p2p.errors import UsageError

if TYPE_CHECKING:  # torch only for the batch check: shard workers read maps without it
    import torch

MAX_LABEL_NC = 255  # ids live in a uint8 channel; 255 stands for "an id >= 255"
ID_MODES = frozenset(("L", "P", "I;16", "I;16L", "I;16B", "I;16N", "I"))
COLOUR_MODES = frozenset(("RGB", "RGBA", "RGBX", "CMYK", "YCbCr", "LAB", "HSV", "LA", "La", "PA", "RGBa"))

# pix2pixHD's dataset folders: <phase>_label, <phase>_img, <phase>_inst (its test phase is our val)
LABEL_SPLITS = {"train": ("train",), "val": ("val", "test")}
# Cityscapes' own suffixes, dropped from a stem before matching a map to its photo
_SUFFIXES = re.compile(r"(_gtFine_labelIds|_gtFine_instanceIds|_gtFine_color|_gtCoarse_labelIds|"
                       r"_gtCoarse_instanceIds|_leftImg8bit|_labelIds|_instanceIds)$")


class LabelMapError(ImageRejected):
    """A label or instance map p2p will not use: a colour image, not a PNG, ids out of range or
    a size that differs from its photo's. An ImageRejected (`reason` says which), so `p2p shard`
    records it as a skip; commands turn it into one line and exit 2."""


def read_id_map(source, what: str = "label map", max_pixels: int = DEFAULT_MAX_PIXELS) -> np.ndarray:
    """A one-channel PNG (path or bytes) -> H x W int32 of its pixel values (ids). Raises
    LabelMapError (colour image, not PNG) or ImageRejected (unreadable, too large, corrupt)."""
    im = open_image(source, max_pixels)
    with im:
        if im.format != "PNG":
            raise LabelMapError("label_not_png", f"a {what} must be a PNG (lossless); this is {im.format}")
        if im.mode not in ID_MODES:
            kind = "a colour image" if im.mode in COLOUR_MODES else f"mode {im.mode}"
            raise LabelMapError("label_not_ids", f"{kind} given as a {what}: it must hold one channel of "
                                                 f"ids (8-bit gray, palette indices or 16-bit gray)")
        try:
            im.load()
            return np.asarray(im).astype(np.int32)  # P: the palette indices themselves
        except Exception as e:
            raise decode_failure(e) from None


def resize_nearest(ids: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """H x W ids -> h x w ids (`size` = (w, h)) by nearest neighbour (pixel centres, PIL's
    NEAREST): only ids present in the source come out."""
    from PIL import Image

    h, w = ids.shape
    if (w, h) == tuple(size):
        return ids
    return np.asarray(Image.fromarray(ids.astype(np.int32), "I").resize(tuple(size), Image.NEAREST)).astype(np.int32)


def instance_edges(inst: np.ndarray) -> np.ndarray:
    """pix2pixHD's get_edges for one H x W instance map: True where a pixel's id differs from
    its left, right, upper or lower neighbour (both pixels of a differing pair are edges; the
    image border has no neighbour outside)."""
    edge = np.zeros(inst.shape, dtype=bool)
    dx = inst[:, 1:] != inst[:, :-1]
    edge[:, 1:] |= dx
    edge[:, :-1] |= dx
    dy = inst[1:, :] != inst[:-1, :]
    edge[1:, :] |= dy
    edge[:-1, :] |= dy
    return edge


def a_half(ids: np.ndarray, inst: np.ndarray | None) -> np.ndarray:
    """The batch's A half (H x W x 3 uint8) of an id map and an optional instance map of the
    same size: ids (255 for ids >= 255), boundaries 0/255, zeros."""
    out = np.zeros((*ids.shape, 3), dtype=np.uint8)
    out[..., 0] = np.minimum(ids, MAX_LABEL_NC)
    if inst is not None:
        out[..., 1] = instance_edges(inst) * np.uint8(255)
    return out


def check_ids(ids: np.ndarray, label_nc: int | None, what: str) -> None:
    """LabelMapError when an id is negative or >= label_nc (or >= 255, which no batch holds)."""
    top = int(ids.max()) if ids.size else 0
    limit = MAX_LABEL_NC if label_nc is None else min(label_nc, MAX_LABEL_NC)
    if top >= limit or (ids.size and int(ids.min()) < 0):
        bad = top if top >= limit else int(ids.min())
        raise LabelMapError("label_out_of_range", f"{what} has class id {bad}, outside 0..{limit - 1}"
                            + (f" (task.label_nc={label_nc})" if label_nc is not None else ""))


def load_a_half(label, inst=None, size: tuple[int, int] | None = None, label_nc: int | None = None,
                max_pixels: int = DEFAULT_MAX_PIXELS, photo_size: tuple[int, int] | None = None) -> np.ndarray:
    """Read a label map (and instance map), check them, resize NEAREST to `size` (w, h) when
    given, boundaries from the resized instance map (pix2pixHD resizes, then takes edges) -> the
    A half, H x W x 3 uint8. `photo_size` (w, h): the map must have the photo's size."""
    ids = read_id_map(label, "label map", max_pixels)
    h, w = ids.shape
    if photo_size is not None and tuple(photo_size) != (w, h):
        raise LabelMapError("size_mismatch", f"label map is {w}x{h}, its photo {photo_size[0]}x{photo_size[1]}")
    check_ids(ids, label_nc, "label map")
    ids_i = None
    if inst is not None:
        ids_i = read_id_map(inst, "instance map", max_pixels)
        if ids_i.shape != ids.shape:
            raise LabelMapError("size_mismatch", f"instance map is {ids_i.shape[1]}x{ids_i.shape[0]}, "
                                                 f"its label map {w}x{h}")
    if size is not None:
        ids = resize_nearest(ids, size)
        ids_i = None if ids_i is None else resize_nearest(ids_i, size)
    return a_half(ids, ids_i)


class LabelFiles(NamedTuple):
    """One sample of a pix2pixHD layout: its key and files (inst None without instance maps)."""

    key: str
    label: Path
    photo: Path
    inst: Path | None


def match_key(stem: str) -> str:
    """The name a map and its photo share: the stem without Cityscapes' suffixes
    (`aachen_000000_000019_gtFine_labelIds` and `aachen_000000_000019_leftImg8bit` meet)."""
    return _SUFFIXES.sub("", stem)


def _by_key(folder: Path) -> dict[str, Path]:
    from p2p.data.images import list_images

    found: dict[str, Path] = {}
    for p in list_images(folder):
        rel = p.relative_to(folder)
        found.setdefault(str(rel.parent / match_key(rel.stem)), p)
    return found


def split_folders(root: Path, split: str) -> tuple[Path, Path, Path | None] | None:
    """(label, photo, instance or None) folders of a split in pix2pixHD's layout, else None."""
    for phase in LABEL_SPLITS[split]:
        label, photo, inst = root / f"{phase}_label", root / f"{phase}_img", root / f"{phase}_inst"
        if label.is_dir() and photo.is_dir():
            return label, photo, inst if inst.is_dir() else None
    return None


def label_files(root, split: str, instances: bool) -> tuple[list[LabelFiles], list[tuple[str, str]]]:
    """The samples of one split of a pix2pixHD-layout folder, matched by key, sorted; and
    (path, why) of each map or photo left without a partner. UsageError when the folder has no
    such split, or when `instances` asks for instance maps it lacks."""
    root = Path(root)
    folders = split_folders(root, split)
    if folders is None:
        names = " or ".join(f"{p}_label/ and {p}_img/" for p in LABEL_SPLITS[split])
        raise UsageError(f"{root}: no {split} split for task labels (expected {names}, pix2pixHD's layout)")
    label_dir, photo_dir, inst_dir = folders
    if instances and inst_dir is None:
        raise UsageError(f"task.instance_boundaries needs instance maps: {root} has no "
                         f"{label_dir.name.rsplit('_', 1)[0]}_inst/ folder")
    labels, photos = _by_key(label_dir), _by_key(photo_dir)
    insts = _by_key(inst_dir) if (instances and inst_dir is not None) else {}
    items, unpaired = [], []
    for key in sorted(labels):
        if key not in photos:
            unpaired.append((str(labels[key]), f"no photo for it in {photo_dir}"))
        elif instances and key not in insts:
            unpaired.append((str(labels[key]), f"no instance map for it in {inst_dir}"))
        else:
            items.append(LabelFiles(key, labels[key], photos[key], insts.get(key)))
    unpaired += [(str(p), f"no label map for it in {label_dir}") for k, p in sorted(photos.items()) if k not in labels]
    return items, unpaired


def has_label_layout(root) -> bool:
    """Whether `root` holds pix2pixHD's train_label/ and train_img/ folders."""
    return split_folders(Path(root), "train") is not None


def check_batch_ids(images: torch.Tensor, keys: list[str], label_nc: int) -> None:
    """UsageError naming the first sample whose A half holds an id >= label_nc (a uint8 batch
    on the CPU, A|B side by side)."""
    w = images.shape[-1] // 2
    tops = images[:, 0, :, :w].amax(dim=(1, 2))
    bad = (tops >= label_nc).nonzero()
    if len(bad):
        i = int(bad[0])
        top = int(tops[i])
        shown = "an id >= 255" if top >= MAX_LABEL_NC else f"class id {top}"
        raise UsageError(f"label map {keys[i]!r} has {shown}, outside 0..{label_nc - 1} (task.label_nc={label_nc}); "
                         f"set task.label_nc to the number of classes, or fix the map")
