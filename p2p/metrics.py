"""Image quality metrics on batches of RGB in [0, 1], per image (N values).

PSNR and SSIM follow `skimage.metrics.peak_signal_noise_ratio` / `structural_similarity`
with their defaults (7x7 uniform window, K1=0.01, K2=0.03, sample covariance, mean over the
window-valid region, then over channels), computed in float64 so they agree to ~1e-6.
Colourfulness is Hasler & Suesstrunk (2003), on the 0-255 scale as in the paper.
"""

from __future__ import annotations

import torch
from torch.nn import functional as F


def psnr(x: torch.Tensor, y: torch.Tensor, data_range: float = 1.0) -> torch.Tensor:
    mse = (x.double() - y.double()).pow(2).flatten(1).mean(1)
    return 10.0 * torch.log10(data_range ** 2 / mse)


def ssim(x: torch.Tensor, y: torch.Tensor, data_range: float = 1.0, win: int = 7) -> torch.Tensor:
    if min(x.shape[-2:]) < win:
        raise ValueError(f"SSIM needs images of at least {win}x{win}, got {tuple(x.shape[-2:])}")
    x, y = x.double(), y.double()

    def mean(t):  # the valid part of skimage's uniform filter equals an unpadded average pool
        return F.avg_pool2d(t, win, stride=1)

    ux, uy = mean(x), mean(y)
    cov = win * win / (win * win - 1)  # sample covariance, as skimage's default
    vx = cov * (mean(x * x) - ux * ux)
    vy = cov * (mean(y * y) - uy * uy)
    vxy = cov * (mean(x * y) - ux * uy)
    c1, c2 = (0.01 * data_range) ** 2, (0.03 * data_range) ** 2
    s = ((2 * ux * uy + c1) * (2 * vxy + c2)) / ((ux * ux + uy * uy + c1) * (vx + vy + c2))
    return s.mean(dim=(2, 3)).mean(1)


def l1(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    return (x.double() - y.double()).abs().flatten(1).mean(1)


def colorfulness(rgb: torch.Tensor) -> torch.Tensor:
    """Hasler & Suesstrunk's M: std and mean of the opponent channels rg = R-G, yb = (R+G)/2-B."""
    r, g, b = (rgb.double() * 255.0).unbind(1)
    rg, yb = r - g, 0.5 * (r + g) - b
    std = torch.sqrt(rg.flatten(1).var(1, unbiased=False) + yb.flatten(1).var(1, unbiased=False))
    mean = torch.sqrt(rg.flatten(1).mean(1) ** 2 + yb.flatten(1).mean(1) ** 2)
    return std + 0.3 * mean


def image_metrics(out_rgb: torch.Tensor, target_rgb: torch.Tensor, colour: bool = False) -> dict[str, torch.Tensor]:
    """Per-image metrics of a batch: psnr, ssim, l1 (and colourfulness of output and target)."""
    m = {"psnr": psnr(out_rgb, target_rgb), "ssim": ssim(out_rgb, target_rgb), "l1": l1(out_rgb, target_rgb)}
    if colour:
        m["colorfulness"] = colorfulness(out_rgb)
        m["colorfulness_target"] = colorfulness(target_rgb)
    return m
