"""`p2p shard --task labels SRC OUT`: label maps and their photos (pix2pixHD's layout) into shards.

SRC holds `train_label/` (class-id PNGs), `train_img/` (photos) and optionally `train_inst/`
(instance-id PNGs), and for validation `val_*` (or pix2pixHD's `test_*`) folders; without them
--val-fraction of the keys by their hash, the folder backend's rule. A map, its photo and its
instance map meet by stem, with Cityscapes' suffixes dropped (p2p.data.label_maps.match_key).

Each sample is stored as
- `<key>.png`: the batch's A half at size x size, LOSSLESS: channel 0 the class id (the map
  resized NEAREST), channel 1 pix2pixHD's instance boundary 0/255 (taken from the instance map
  after its NEAREST resize, as pix2pixHD takes edges of its resized instance map), channel 2 zero;
- `<key>.jpg`: the photo at size x size (Lanczos, JPEG at --quality), as paired halves are;
- `<key>.json`: source paths and sizes.
The boundary, not the instance map, is stored: instance ids need 16 bits (Cityscapes' 26001)
and the batch contract is uint8, while the boundary is what training reads; the price is that a
loader resizing to another load size, or a crop, moves pixels of a boundary computed before.

Faults are skips with a reason, as for every task (one bad map in 3,000 does not stop a run):
`label_not_ids` (a colour image given as a label map), `label_not_png`, `label_out_of_range`
(an id >= --label-nc, or >= 255 without it), `size_mismatch` (a map whose size differs from
its photo's), and the photo's own reasons. When nothing is usable the command exits 2.
"""

from __future__ import annotations

import io
import os
from dataclasses import dataclass
from pathlib import Path

from p2p.data.shards.format import hash_unit, sample_key, skip_record
from p2p.data.shards.plan import OutputOptions
from p2p.data.shards.scan import DEFAULT_VAL_FRACTION, Item, Scan
from p2p.errors import UsageError


@dataclass(frozen=True)
class LabelOutputOptions(OutputOptions):
    """OutputOptions plus what changes the bytes of label samples."""

    label_nc: int | None = None
    instances: bool = False

    def layout(self) -> dict:
        return {"map": "<key>.png: lossless RGB PNG, size x size: R class id (nearest resize), "
                       "G instance boundary 0/255, B 0; <key>.jpg is the photo, size x size"}


def label_options(base: OutputOptions, label_nc: int | None, found: Scan) -> LabelOutputOptions:
    instances = any(isinstance(it.path_b, tuple) and it.path_b[1] for items in found.items.values() for it in items)
    return LabelOutputOptions(**base.as_dict(), label_nc=label_nc, instances=instances)


def scan_labels(src, out, val_dir=None, val_fraction: float | None = None) -> Scan:
    """The label samples of SRC by split. An Item's `path` is the map, `path_b` the pair
    (photo, instance map or None); `shown_b` names both (the plan hashes it)."""
    from p2p.data.label_maps import has_label_layout, label_files, split_folders

    root = Path(src)
    if val_dir is not None:
        raise UsageError("--task labels: the val split is SRC's val_label/ and val_img/ (or test_*); drop --val-dir")
    if not has_label_layout(root):
        raise UsageError(f"--task labels: {src} has no train_label/ and train_img/ folders (pix2pixHD's layout: "
                         f"train_label/, train_img/, optional train_inst/, and val_* or test_*)")
    own_val = split_folders(root, "val") is not None
    if own_val and val_fraction is not None:
        raise UsageError(f"{src} has val (or test) label folders, which are the val split; drop --val-fraction")
    vf = None if own_val else (DEFAULT_VAL_FRACTION if val_fraction is None else float(val_fraction))
    result = Scan("folders" if own_val else "hash", None, vf)
    src_real = os.path.realpath(src)

    def shown(p) -> str:
        return os.path.relpath(os.path.realpath(p), src_real).replace(os.sep, "/")

    for split in (("train", "val") if own_val else ("train",)):
        instances = split_folders(root, split)[2] is not None
        files, unpaired = label_files(root, split, instances)
        result.skipped += [skip_record(shown(p), "unpaired", why) for p, why in unpaired]
        for f in files:
            key = sample_key(f.key)
            photo_shown = shown(f.photo) + (f" + {shown(f.inst)}" if f.inst else "")
            item = Item(key, shown(f.label), str(f.label), photo_shown, (str(f.photo), str(f.inst) if f.inst else None))
            target = split if own_val else ("val" if hash_unit(key) < vf else "train")
            result.items.setdefault(target, []).append(item)
            if key != f.key:
                result.renamed[shown(f.label)] = key
    return result


def process_label_item(item: Item, opts: LabelOutputOptions) -> tuple[dict, dict, tuple[int, int], tuple[int, int]]:
    """One label sample: ({"png": map, "jpg": photo}, json meta, source (w, h), stored (w, h)).
    Raises Skip."""
    from PIL import Image

    from p2p.data.images import ImageRejected
    from p2p.data.shards.encode import Skip, _check_square, load_rgb
    from p2p.data.label_maps import load_a_half

    key, shown, label_path, shown_b, (photo_path, inst_path) = item
    s = opts.size
    try:
        photo, info = load_rgb(photo_path, lambda w, h: (s, s), _check_square(opts, False))
    except Skip as e:
        raise Skip(e.reason, f"photo {shown_b}: {e.detail}") from None
    try:
        a = load_a_half(label_path, inst_path, (s, s), opts.label_nc, photo_size=(info["width"], info["height"]))
    except ImageRejected as e:  # LabelMapError too: a colour map, ids out of range, sizes that differ
        raise Skip(e.reason, e.detail) from None
    if photo.size != (s, s):
        photo = photo.resize((s, s), Image.Resampling.LANCZOS, reducing_gap=3.0)
    png, jpg = io.BytesIO(), io.BytesIO()
    Image.fromarray(a, "RGB").save(png, "PNG")
    photo.save(jpg, "JPEG", quality=opts.quality, subsampling=0 if opts.quality >= 90 else 2)
    meta = {"path": shown, "photo": shown_b, **info}
    if min(info["width"], info["height"]) < s:
        meta["upscaled"] = True
    return {"png": png.getvalue(), "jpg": jpg.getvalue()}, meta, (info["width"], info["height"]), (2 * s, s)
