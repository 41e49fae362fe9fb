"""Label-map folders in pix2pixHD's layout, for the tests of the `labels` task."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

IDS = (0, 3, 7)  # a blend of 0 and 7 would be an id no map holds


def stripes(size: int, period: int = 3) -> np.ndarray:
    """Vertical stripes of IDS, `period` px wide: a resize by a factor that does not divide it
    lands between stripes everywhere, where a bilinear resize invents ids."""
    return np.array(IDS, dtype=np.uint8)[(np.arange(size) // period) % len(IDS)][None, :].repeat(size, 0)


def make_layout(root: Path, n_train: int = 4, size: int = 40, instances: bool = True) -> Path:
    """pix2pixHD's layout, Cityscapes' names: maps of IDS, photos coloured by id, instance maps
    of 16-bit ids (class * 1000 + instance, as Cityscapes' instanceIds)."""
    rng = np.random.default_rng(0)
    for split, n in (("train", n_train), ("val", 1)):
        for i in range(n):
            ids = np.roll(stripes(size, 3 + i), i, axis=1)
            palette = np.array([[20, 20, 20], [200, 40, 40], [40, 200, 40], [40, 40, 200]] * 3, dtype=np.uint8)
            photo = np.clip(palette[ids].astype(int) + rng.integers(-10, 10, (size, size, 3)), 0, 255).astype(np.uint8)
            stem = f"city_{split}_{i:06d}"
            for sub, name, img in (("label", "gtFine_labelIds", Image.fromarray(ids, "L")),
                                   ("img", "leftImg8bit", Image.fromarray(photo))):
                (root / f"{split}_{sub}").mkdir(parents=True, exist_ok=True)
                img.save(root / f"{split}_{sub}" / f"{stem}_{name}.{'png' if sub == 'label' else 'jpg'}", quality=95)
            if instances:
                inst = (ids.astype(np.int32) * 1000 + (np.arange(size)[:, None] >= size // 2)).astype(np.uint16)
                (root / f"{split}_inst").mkdir(parents=True, exist_ok=True)
                Image.fromarray(inst).save(root / f"{split}_inst" / f"{stem}_gtFine_instanceIds.png")
    return root
