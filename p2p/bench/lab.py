"""`p2p bench lab`: RGB -> CIELAB throughput of `p2p.color.rgb_to_lab` against skimage.

The baseline is `skimage.color.rgb2lab`, one H x W x 3 uint8 image at a time, on the CPU (what
a NumPy data pipeline does). It is compared with `rgb_to_lab` on the whole batch, from float
[0, 1] and from uint8 (the lookup-table path), on `--device`, tensors already there (no
host-to-device copy in the timing). The images are real photographs from skimage.data,
centre-cropped and resized to `--size`: conversion cost depends little on content, but the
accuracy column (largest |Lab difference| from skimage's float64 result) should be about
photographs, not noise.

Run directly as `python -m p2p.bench.lab [options]`; thread count from OMP_NUM_THREADS.
"""

from __future__ import annotations

import argparse

import numpy as np
import torch

from p2p.bench.common import environment, measure, print_table, with_ratios, write_json

BASELINE = "skimage.rgb2lab per image (baseline)"
FLOAT_ROW = "p2p rgb_to_lab float32 batch"
UINT8_ROW = "p2p rgb_to_lab uint8 LUT batch"
PHOTOS = ("astronaut", "coffee", "chelsea", "rocket", "hubble_deep_field", "immunohistochemistry")


def photographs(size: int, count: int) -> np.ndarray:
    """`count` uint8 photos, count x size x size x 3: the skimage.data photos in turn, mirrored
    on the second pass round so that repeats are not identical."""
    import skimage.data
    from skimage.transform import resize
    from skimage.util import img_as_ubyte

    squares = []
    for name in PHOTOS:
        photo = getattr(skimage.data, name)()
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


def run_lab(device: str = "cpu", size: int = 256, images: int = 16, repeats: int = 3,
            quick: bool = False) -> list[dict]:
    """Baseline, float and uint8 rows with img_per_s, ratio, max_abs_diff_vs_skimage, device."""
    from skimage.color import rgb2lab

    from p2p.color import rgb_to_lab

    device = str(torch.device(device))
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


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--device", default="cpu", help="torch device for the p2p rows (default: cpu)")
    parser.add_argument("--size", type=int, default=256, help="image side in pixels (default: 256)")
    parser.add_argument("--images", type=int, default=16, help="images per batch (default: 16)")
    parser.add_argument("--repeats", type=int, default=3, help="timed repeats, median reported (default: 3)")
    parser.add_argument("--quick", action="store_true", help="no minimum time per repeat: a smoke test")
    parser.add_argument("--json", metavar="PATH", help="also write {environment, results} to PATH")


def run(args: argparse.Namespace) -> int:
    rows = run_lab(device=args.device, size=args.size, images=args.images, repeats=args.repeats,
                   quick=args.quick)
    title = f"RGB -> Lab, {args.images} x {args.size}x{args.size} photos, {torch.get_num_threads()} threads"
    print_table(title, rows, columns=("name", "device", "img_per_s", "ratio", "max_abs_diff_vs_skimage"))
    if args.json:
        write_json(args.json, {"environment": environment(), "results": rows})
    return 0


if __name__ == "__main__":
    _parser = argparse.ArgumentParser(prog="python -m p2p.bench.lab", description=__doc__.splitlines()[0])
    add_arguments(_parser)
    raise SystemExit(run(_parser.parse_args()))
