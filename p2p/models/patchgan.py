"""Conditional PatchGAN discriminators, numerically identical to the official pix2pix
`NLayerDiscriminator` (n_layers >= 1; 3 = the 70x70 PatchGAN) and `PixelDiscriminator`
(n_layers = 0: 1x1 PixelGAN). The caller concatenates input and output along channels.

The module layout (`model.<i>` / `net.<i>` sequentials) is the official one, so official
state dicts load without renaming.

`forward(x, features=True)` returns the activations after every LeakyReLU followed by the
logits: what discriminator feature matching (pix2pixHD) compares between real and fake pairs.
"""

from __future__ import annotations

import torch
from torch import nn

from p2p.models.norm import norm_layer, uses_bias


def run_with_features(seq: nn.Sequential, x: torch.Tensor, features: bool):
    """The sequential's output, or [activation after each LeakyReLU ..., output]. The official
    LeakyReLUs work in place on the norm's output, which nothing else keeps, so the kept
    activations are never overwritten."""
    if not features:
        return seq(x)
    out = []
    for layer in seq:
        x = layer(x)
        if isinstance(layer, nn.LeakyReLU):
            out.append(x)
    out.append(x)
    return out


class PatchDiscriminator(nn.Module):
    """Outputs one logit per overlapping patch: N x 1 x H' x W'.

    Receptive field 70x70 for n_layers=3 (16x16 for 1, 34x34 for 2, 142x142 for 4).
    """

    def __init__(self, in_channels: int, ndf: int = 64, n_layers: int = 3, norm: str = "batch"):
        super().__init__()
        bias = uses_bias(norm)
        layers: list[nn.Module] = [
            nn.Conv2d(in_channels, ndf, kernel_size=4, stride=2, padding=1),
            nn.LeakyReLU(0.2, True),
        ]
        mult = 1
        for n in range(1, n_layers + 1):
            prev, mult = mult, min(2 ** n, 8)
            # Strided convs halve the size; the last one keeps stride 1 (the official layout).
            stride = 2 if n < n_layers else 1
            layers += [
                nn.Conv2d(ndf * prev, ndf * mult, kernel_size=4, stride=stride, padding=1, bias=bias),
                norm_layer(norm, ndf * mult),
                nn.LeakyReLU(0.2, True),
            ]
        layers.append(nn.Conv2d(ndf * mult, 1, kernel_size=4, stride=1, padding=1))
        self.model = nn.Sequential(*layers)

    def forward(self, x, features: bool = False):
        return run_with_features(self.model, x, features)


class PixelDiscriminator(nn.Module):
    """1x1 PatchGAN: classifies every pixel on its own (colour statistics, no structure)."""

    def __init__(self, in_channels: int, ndf: int = 64, norm: str = "batch"):
        super().__init__()
        bias = uses_bias(norm)
        self.net = nn.Sequential(
            nn.Conv2d(in_channels, ndf, kernel_size=1),
            nn.LeakyReLU(0.2, True),
            nn.Conv2d(ndf, ndf * 2, kernel_size=1, bias=bias),
            norm_layer(norm, ndf * 2),
            nn.LeakyReLU(0.2, True),
            nn.Conv2d(ndf * 2, 1, kernel_size=1, bias=bias),
        )

    def forward(self, x, features: bool = False):
        return run_with_features(self.net, x, features)

