"""Metrics agree with scikit-image; colourfulness follows Hasler & Suesstrunk."""

import numpy as np
import torch
from skimage.metrics import peak_signal_noise_ratio, structural_similarity

from p2p.data.folder import embedded_photo
from p2p.metrics import colorfulness, psnr, ssim


def pair():
    a = embedded_photo("astronaut")[:64, :80].astype(np.float64) / 255
    rng = np.random.default_rng(0)
    b = np.clip(a + rng.normal(0, 0.05, a.shape), 0, 1)
    t = lambda x: torch.from_numpy(x).permute(2, 0, 1)[None]
    return a, b, t(a), t(b)


def test_psnr_matches_skimage():
    a, b, ta, tb = pair()
    assert abs(psnr(ta, tb).item() - peak_signal_noise_ratio(a, b, data_range=1.0)) < 1e-6


def test_ssim_matches_skimage():
    a, b, ta, tb = pair()
    ref = structural_similarity(a, b, data_range=1.0, channel_axis=-1)
    assert abs(ssim(ta, tb).item() - ref) < 1e-6
    assert abs(ssim(ta, ta).item() - 1.0) < 1e-9


def test_colorfulness():
    gray = torch.full((1, 3, 8, 8), 0.5)
    assert colorfulness(gray).item() < 1e-9
    red = torch.zeros(1, 3, 8, 8)
    red[:, 0] = 1.0
    # rg = 255, yb = 127.5, no spread: M = 0.3 * sqrt(255^2 + 127.5^2)
    assert abs(colorfulness(red).item() - 0.3 * np.hypot(255, 127.5)) < 1e-6
    photo = torch.from_numpy(embedded_photo("coffee")).permute(2, 0, 1)[None].double() / 255
    assert colorfulness(photo) > colorfulness(photo.mean(1, keepdim=True).expand(-1, 3, -1, -1))
