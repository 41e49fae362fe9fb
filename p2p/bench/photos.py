"""Real image content for the benchmarks, from the photographs inside scikit-image (nothing to
download, loaded as the demo loads them: p2p.data.folder.embedded_photo): square uint8 photos
at a given size (the lab suite, the step benchmark's batch), and COCO-like JPEG folders with the
shards packed from them (the data section of `p2p bench all`)."""

from __future__ import annotations

import json
import os
import random
from pathlib import Path

import numpy as np

PHOTOS = ("astronaut", "coffee", "chelsea", "rocket", "hubble_deep_field", "immunohistochemistry")

# COCO-like (w, h): landscape, portrait and square
COCO_SIZES = ((640, 480), (640, 427), (480, 640), (427, 640), (640, 512), (500, 375), (612, 612), (640, 360))


def photographs(size: int, count: int) -> np.ndarray:
    """`count` uint8 photos, count x size x size x 3: centre squares of the photos in turn, resized
    to `size`, mirrored on the second pass round so that repeats are not identical."""
    from skimage.transform import resize
    from skimage.util import img_as_ubyte

    from p2p.data.folder import embedded_photo

    squares = []
    for name in PHOTOS:
        photo = embedded_photo(name)
        h, w = photo.shape[:2]
        side = min(h, w)
        top, left = (h - side) // 2, (w - side) // 2
        crop = photo[top : top + side, left : left + side]
        squares.append(img_as_ubyte(resize(crop, (size, size), anti_aliasing=True)))
    picked = []
    for i in range(count):
        photo = squares[i % len(squares)]
        picked.append(photo[:, ::-1] if (i // len(squares)) % 2 else photo)
    return np.ascontiguousarray(np.stack(picked))


def make_photo_folder(folder: Path, count: int = 64, scale: float = 1.0, seed: int = 0) -> list[Path]:
    """`count` COCO-named JPEGs: random crops of the embedded photos (p2p.data.folder), mirrored at
    random and resized to COCO's usual sizes times `scale`. Deterministic for a seed."""
    from PIL import Image

    from p2p.data.folder import EMBEDDED_TRAIN, EMBEDDED_VAL, embedded_photo

    folder.mkdir(parents=True, exist_ok=True)
    names = EMBEDDED_TRAIN + EMBEDDED_VAL
    rng = random.Random(seed)
    paths = []
    for i in range(count):
        photo = embedded_photo(names[i % len(names)])
        w, h = COCO_SIZES[rng.randrange(len(COCO_SIZES))]
        w, h = max(16, round(w * scale)), max(16, round(h * scale))
        ph, pw = photo.shape[:2]
        f = min(pw / w, ph / h) * rng.uniform(0.6, 1.0)  # a crop of the target's aspect
        cw, ch = max(1, int(w * f)), max(1, int(h * f))
        left, top = rng.randint(0, pw - cw), rng.randint(0, ph - ch)
        img = Image.fromarray(photo[top:top + ch, left:left + cw]).resize((w, h), Image.BICUBIC)
        if rng.random() < 0.5:
            img = img.transpose(Image.FLIP_LEFT_RIGHT)
        path = folder / f"{100000 + i:012d}.jpg"
        img.save(path, quality=90)
        paths.append(path)
    return paths


def build_shards(work: Path, count: int, scale: float, size: int) -> Path:
    """work/shards (stored at `size`) from `count` photos at `scale` in work/photos; both are
    reused when a previous run made them with the same options."""
    from p2p.data.shards import make_shards, read_manifest

    photos, shards, made = work / "photos", work / "shards", work / "photos.json"
    wanted = {"count": count, "scale": scale}
    fresh = not (photos.is_dir() and made.is_file() and json.loads(made.read_text()) == wanted)
    if fresh:
        for old in photos.glob("*.jpg"):  # a smaller count must not leave the old extras in
            old.unlink()
        make_photo_folder(photos, count, scale)
        made.write_text(json.dumps(wanted) + "\n")
    try:
        m = read_manifest(shards)
        if not fresh and m.get("complete", True) and (m.get("options") or {}).get("size") == size:
            return shards
    except (FileNotFoundError, ValueError):
        pass
    make_shards(photos, shards, size=size, val_fraction=0.0, force=True, workers=min(2, os.cpu_count() or 1))
    return shards
