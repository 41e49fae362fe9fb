"""RGB -> CIELAB throughput of `p2p.color.rgb_to_lab` against skimage (`p2p bench lab`).

The baseline is `skimage.color.rgb2lab`, one H x W x 3 uint8 image at a time, on the CPU (what
a NumPy data pipeline does). It is compared with `rgb_to_lab` on the whole batch, from float
[0, 1] and from uint8 (the lookup-table path), on `device`, tensors already there (no
host-to-device copy in the timing). The images are real photographs (p2p.bench.photos),
centre-cropped and resized to `size`: conversion cost depends little on content, but the
accuracy column (largest |Lab difference| from skimage's float64 result) should be about
photographs, not noise. Thread count from OMP_NUM_THREADS.
"""

from __future__ import annotations

import numpy as np
import torch

from p2p.bench.common import measure, with_ratios
from p2p.bench.photos import photographs

BASELINE = "skimage.rgb2lab per image (baseline)"
FLOAT_ROW = "p2p rgb_to_lab float32 batch"
UINT8_ROW = "p2p rgb_to_lab uint8 LUT batch"


def run_lab(device: str = "cpu", size: int = 256, images: int = 16, repeats: int = 3,
            quick: bool = False) -> list[dict]:
    """Baseline, float and uint8 rows with img_per_s, ratio, max_abs_diff_vs_skimage, device."""
    from skimage.color import rgb2lab

    from p2p.color import rgb_to_lab
    from p2p.dist import resolve_device

    device = str(resolve_device(device))
    photos = photographs(size, images)
    reference = np.stack([rgb2lab(p) for p in photos])  # float64, N x H x W x 3
    as_uint8 = torch.from_numpy(photos).permute(0, 3, 1, 2).contiguous().to(device)
    as_float = (as_uint8.float() / 255).contiguous()

    def max_diff(lab: torch.Tensor) -> float:
        return float(np.abs(lab.permute(0, 2, 3, 1).cpu().double().numpy() - reference).max())

    def skimage_batch() -> int:
        for photo in photos:
            rgb2lab(photo)
        return images

    def p2p_batch(x: torch.Tensor):
        def convert() -> int:
            rgb_to_lab(x)
            return images

        return convert

    timing = {"warmup": 1, "repeats": repeats, "min_seconds": 0.0 if quick else 0.5}
    rows = [
        {"name": BASELINE, "device": "cpu", "max_abs_diff_vs_skimage": 0.0, **measure(skimage_batch, **timing)},
        {"name": FLOAT_ROW, "device": device, "max_abs_diff_vs_skimage": max_diff(rgb_to_lab(as_float)),
         **measure(p2p_batch(as_float), device=device, **timing)},
        {"name": UINT8_ROW, "device": device, "max_abs_diff_vs_skimage": max_diff(rgb_to_lab(as_uint8)),
         **measure(p2p_batch(as_uint8), device=device, **timing)},
    ]
    for row in rows:
        row.update(size=size, images=images, threads=torch.get_num_threads())
    return with_ratios(rows, BASELINE)
