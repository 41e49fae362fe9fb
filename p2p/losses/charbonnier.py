"""The Charbonnier loss (Charbonnier et al. 1994; LapSRN, EDVR): mean sqrt((G(x) - y)^2 + eps^2),
L1 with a smooth minimum, so its gradient shrinks near a perfect pixel instead of keeping a
constant size. A loss term (`loss.lambda_charbonnier`, 0 = off), registered in
`p2p.specs.losses`."""

from __future__ import annotations

import torch

EPS = 1e-3  # in the image range [-1, 1]: below this a pixel's error is "exact"


def charbonnier(view, weight: float) -> torch.Tensor:
    return torch.sqrt((view.fake - view.target) ** 2 + EPS * EPS).mean() * weight
