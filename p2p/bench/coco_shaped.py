"""A COCO-shaped image folder of any size, made from the photographs inside scikit-image (nothing
to download), for `p2p bench scale`: a flat folder of JPEGs named like COCO's
(`000000123456.jpg`), around 640x480 in COCO's usual shapes (landscape, portrait, square) with a
few percent jitter, JPEG quality 75-95, and the awkward files a real crawl has: about 1% grayscale
(COCO has some), and per 1,000 images one truncated JPEG, one zero-byte file and one text file
with a .jpg name (what `p2p shard` must skip and record).

Every image is a function of (seed, index) alone, so a folder of N images is the first N of any
bigger one: `make_coco_shaped` adds only the files a folder lacks, over a pool of processes.
"""

from __future__ import annotations

import io
import multiprocessing as mp
import os
import random
from pathlib import Path

import numpy as np

from p2p.bench.photos import COCO_SIZES

GRAYSCALE_SHARE = 0.01
BROKEN_EVERY = 1000  # per this many images: one truncated, one empty, one text file


def image_name(index: int) -> str:
    return f"{index + 1:012d}.jpg"


def _photos() -> list[np.ndarray]:
    from p2p.data.folder import EMBEDDED_TRAIN, EMBEDDED_VAL, embedded_photo

    return [embedded_photo(n) for n in EMBEDDED_TRAIN + EMBEDDED_VAL]


def image_bytes(index: int, seed: int, photos: list[np.ndarray]) -> bytes:
    """The file at `index`: a JPEG cut from a photo at a COCO size, or one of the broken kinds."""
    from PIL import Image

    rng = random.Random(seed * 1_000_003 + index)
    slot = index % BROKEN_EVERY
    if slot == BROKEN_EVERY - 1:
        return b""  # zero-byte file
    if slot == BROKEN_EVERY - 2:
        return b"this is not an image, whatever its name says\n"
    w, h = COCO_SIZES[rng.randrange(len(COCO_SIZES))]
    w, h = round(w * rng.uniform(0.92, 1.0)), round(h * rng.uniform(0.92, 1.0))
    photo = photos[rng.randrange(len(photos))]
    ph, pw = photo.shape[:2]
    f = min(pw / w, ph / h) * rng.uniform(0.5, 1.0)  # a crop of the target's aspect ratio
    cw, ch = max(8, int(w * f)), max(8, int(h * f))
    left, top = rng.randint(0, pw - cw), rng.randint(0, ph - ch)
    img = Image.fromarray(photo[top:top + ch, left:left + cw]).resize((w, h), Image.BILINEAR)
    if rng.random() < 0.5:
        img = img.transpose(Image.FLIP_LEFT_RIGHT)
    if rng.random() < GRAYSCALE_SHARE:
        img = img.convert("L")
    buf = io.BytesIO()
    img.save(buf, format="JPEG", quality=rng.randint(75, 95))
    data = buf.getvalue()
    if slot == BROKEN_EVERY - 3:
        return data[: len(data) // 2]  # truncated JPEG (a half-finished download)
    return data


def _write_range(args: tuple[str, int, int, int]) -> int:
    folder, lo, hi, seed = args
    photos = _photos()
    written = 0
    for i in range(lo, hi):
        path = os.path.join(folder, image_name(i))
        if os.path.exists(path):
            continue
        with open(path + ".part", "wb") as f:
            f.write(image_bytes(i, seed, photos))
        os.replace(path + ".part", path)
        written += 1
    return written


def make_coco_shaped(folder: str | os.PathLike, count: int, seed: int = 0, workers: int = 2) -> int:
    """Make `folder` hold exactly images 0..count-1 (adding the missing ones, removing any
    beyond); returns how many were written."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    for p in folder.iterdir():  # a smaller count than before: the extra files go
        if not p.name.endswith(".jpg") or not p.stem.isdigit() or int(p.stem) > count:
            p.unlink()
    step = 500
    chunks = [(str(folder), lo, min(count, lo + step), seed) for lo in range(0, count, step)]
    if workers <= 1 or len(chunks) == 1:
        return sum(_write_range(c) for c in chunks)
    with mp.get_context("fork").Pool(workers) as pool:
        return sum(pool.imap_unordered(_write_range, chunks))
