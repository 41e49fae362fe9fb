"""Scoring a generator on held-out images: PSNR, SSIM, L1 (and colourfulness for colorize) of
what `p2p predict` would return for each whole image (p2p.inference), against the image it
should return. The sums (and the image count) can be all-reduced over ranks; `means` turns them
into the reported numbers. Validation during training and `p2p eval` both score through here.
"""

from __future__ import annotations

from typing import Iterable

import torch

from p2p.augment import step_generator
from p2p.inference import Geometry, predict
from p2p.metrics import image_metrics


def metric_names(task) -> tuple[str, ...]:
    return ("psnr", "ssim", "l1") + (("colorfulness", "colorfulness_target") if task.name == "colorize" else ())


@torch.no_grad()
def score_images(G, task, images: Iterable, geometry: Geometry, seed: int, device: torch.device,
                 precision=None) -> torch.Tensor:
    """Sums of per-image metrics (in `metric_names` order) and the image count as the last
    entry, float64 on `device`. `images` are `HeldOut`s; `G` must be in eval mode."""
    keys = metric_names(task)
    sums = torch.zeros(len(keys) + 1, dtype=torch.float64, device=device)
    for item in images:
        # restore's degradations: fixed per image, whichever rank scores it
        gen = step_generator(seed, 0, item.index, stream=99)
        inp, target = task.eval_pair(item.image[None].to(device), gen)
        out = predict(G, task, inp, geometry, precision)
        m = image_metrics(out, target, colour=task.name == "colorize")
        sums += torch.stack([m[k].sum() for k in keys] + [torch.ones((), dtype=torch.float64, device=device)])
    return sums


def means(task, sums: torch.Tensor) -> dict[str, float]:
    values = sums.tolist()  # note: host sync
    count = max(values[-1], 1.0)
    return {**{k: v / count for k, v in zip(metric_names(task), values)}, "count": int(values[-1])}
