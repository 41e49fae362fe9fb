"""The eager colorize device step (uint8 RGB -> Lab -> L/50-1, ab/110) with the normalisation in
place, as p2p.tasks.Colorize.convert does it, against the same step through the out-of-place
color.normalize_l / normalize_ab (two more full-size temporaries): the baseline, in the same run.

    PYTHONPATH=. python benchmarks/lab_normalise.py [--batch 16] [--side 256] [--rounds 7] [--threads 1]

Rounds alternate the two, so a load that comes and goes hits both; the medians are reported.
"""

from __future__ import annotations

import argparse
import platform
import statistics
import time

import torch

from p2p import color
from p2p.config import TaskConfig
from p2p.tasks import build_task


def out_of_place(images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    lab = color.rgb_to_lab(images)
    return color.normalize_l(lab[:, :1]), color.normalize_ab(lab[:, 1:])


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--side", type=int, default=256)
    p.add_argument("--rounds", type=int, default=7)
    p.add_argument("--threads", type=int, default=1)
    a = p.parse_args()
    torch.set_num_threads(a.threads)
    gen = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (a.batch, 3, a.side, a.side), dtype=torch.uint8, generator=gen)
    in_place = build_task(TaskConfig(name="colorize"), device_step="eager").convert
    runs = {"in place (Colorize.convert)": lambda: in_place(images, None),
            "out of place (baseline)": lambda: out_of_place(images)}
    for fn in runs.values():  # warm-up: allocator, tables
        fn()
    times: dict[str, list[float]] = {k: [] for k in runs}
    for _ in range(a.rounds):
        for name, fn in runs.items():
            t0 = time.perf_counter()
            fn()
            times[name].append((time.perf_counter() - t0) * 1e3 / a.batch)
    print(f"{platform.processor() or platform.machine()}, torch {torch.__version__}, {a.threads} thread(s), "
          f"batch {a.batch} x {a.side}px, {a.rounds} rounds")
    base = statistics.median(times["out of place (baseline)"])
    for name, ms in times.items():
        med = statistics.median(ms)
        print(f"{name:30s} {med:7.3f} ms/image (min {min(ms):.3f})  {base / med:5.2f}x")


if __name__ == "__main__":
    main()
