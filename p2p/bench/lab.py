"""RGB -> CIELAB throughput of `p2p.color.rgb_to_lab` against skimage (`p2p bench lab`).

The baseline is `skimage.color.rgb2lab`, one H x W x 3 uint8 image at a time, on the CPU (what
a NumPy data pipeline does). It is compared with `rgb_to_lab` on the whole batch, from float
[0, 1] and from uint8 (the lookup-table path), on `device`, tensors already there (no
host-to-device copy in the timing). The images are real photographs (p2p.bench.photos),
centre-cropped and resized to `size`: conversion cost depends little on content, but the
accuracy column (largest |Lab difference| from skimage's float64 result) should be about
photographs, not noise. Thread count from OMP_NUM_THREADS.

The fused row is the training device step's own conversion (p2p.fused, here with the window
being the whole image): uint8 in, L/50 - 1 and ab/110 out, by the C kernel on a CPU and by
torch.compile (Triton) on a GPU. Its `compile_s` is what building costs once: on a CPU a cold
compile of the kernel into an empty cache folder, timed here (later processes load it from the
cache: `load_s`); on a GPU the first call's torch.compile.
"""

from __future__ import annotations

import numpy as np
import torch

from p2p.bench.common import measure, with_ratios
from p2p.bench.photos import photographs

BASELINE = "skimage.rgb2lab per image (baseline)"
FLOAT_ROW = "p2p rgb_to_lab float32 batch"
UINT8_ROW = "p2p rgb_to_lab uint8 LUT batch"
FUSED_ROW = "p2p fused device step (uint8 -> normalised L, ab)"


def cold_compile_s() -> dict:
    """The CPU kernel's compile time into an empty cache folder, and its load time from the cache."""
    import tempfile
    import time
    from pathlib import Path

    from p2p.fused.build import KernelUnavailable, build

    with tempfile.TemporaryDirectory() as folder:
        try:
            cold = build(folder=Path(folder))
            t0 = time.perf_counter()
            build(folder=Path(folder))
            return {"compile_s": cold.compile_s, "load_s": time.perf_counter() - t0}
        except KernelUnavailable as e:
            return {"skipped": str(e)}


def fused_row(as_uint8: torch.Tensor, max_diff, timing: dict) -> dict:
    from p2p.augment import draw_windows
    from p2p.color import denormalize_ab, denormalize_l
    from p2p.fused import DeviceStep

    step = DeviceStep("fused")
    n, _, h, w = as_uint8.shape
    if h != w:
        raise ValueError("the fused row converts square images")
    device = as_uint8.device
    impl = step.implementation(device)
    row = {"name": FUSED_ROW, "device": str(device), "implementation": impl}
    if impl.startswith("eager"):
        return {**row, "skipped": impl, "img_per_s": None}
    whole = draw_windows(n, h, w, h, None)
    if device.type == "cpu":
        row.update(cold_compile_s())

    def convert() -> int:
        step.colorize(as_uint8, whole, h)
        return n

    l_norm, ab_norm = step.colorize(as_uint8, whole, h)  # compiles on a GPU
    if device.type != "cpu":
        row["compile_s"] = step.compile_s.get("colorize")
    lab = torch.cat([denormalize_l(l_norm), denormalize_ab(ab_norm)], 1)
    return {**row, "max_abs_diff_vs_skimage": max_diff(lab), **measure(convert, device=device, **timing)}


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
        fused_row(as_uint8, max_diff, timing),
    ]
    for row in rows:
        row.update(size=size, images=images, threads=torch.get_num_threads())
    return with_ratios(rows, BASELINE)
