"""The pix2pix U-Net generator (Isola et al. 2017), numerically identical to the official
PyTorch `UnetGenerator`, written as flat encoder/decoder lists instead of nested blocks.

Level k = 0 is the outermost (full resolution), k = num_downs-1 the innermost (1x1 at 256 with
num_downs=8). Channels: ngf, 2ngf, 4ngf, then 8ngf for every deeper level.

Two details of the official network that this file keeps on purpose:
- The official encoder applies LeakyReLU *in place* to a block's input before its conv, and that
  same tensor is the skip connection. So skips carry leaky_relu(e_k), not e_k.
- Bias: convs followed by batch norm have no bias; with instance norm they do; with no norm
  they also have none (the official `use_bias` is False unless the norm is InstanceNorm).
  That rule covers the very first conv too; only the final transposed conv always has a bias.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F

from p2p.models.norm import norm_layer, uses_bias


class DownBlock(nn.Module):
    """conv 4x4 stride 2 (+ norm). The LeakyReLU before it is applied by the caller."""

    def __init__(self, in_ch: int, out_ch: int, norm: str, use_norm: bool, bias: bool):
        super().__init__()
        self.conv = nn.Conv2d(in_ch, out_ch, kernel_size=4, stride=2, padding=1, bias=bias)
        self.norm = norm_layer(norm, out_ch) if use_norm else nn.Identity()

    def forward(self, x):
        return self.norm(self.conv(x))


class UpBlock(nn.Module):
    """ReLU, transposed conv 4x4 stride 2, then norm (inner levels) or tanh (outermost)."""

    def __init__(self, in_ch: int, out_ch: int, norm: str, outermost: bool, bias: bool, dropout: bool):
        super().__init__()
        self.conv = nn.ConvTranspose2d(in_ch, out_ch, kernel_size=4, stride=2, padding=1, bias=bias)
        self.norm = nn.Identity() if outermost else norm_layer(norm, out_ch)
        self.outermost = outermost
        self.dropout = nn.Dropout(0.5) if dropout else nn.Identity()

    def forward(self, x):
        x = self.norm(self.conv(F.relu(x)))
        return torch.tanh(x) if self.outermost else self.dropout(x)


def level_channels(num_downs: int, ngf: int) -> list[int]:
    """Encoder output channels per level: ngf, 2ngf, 4ngf, 8ngf, 8ngf, ..."""
    return [ngf * min(2 ** k, 8) for k in range(num_downs)]


class UNetGenerator(nn.Module):
    """U-Net with skip connections between mirrored levels; tanh output in [-1, 1].

    Args:
        in_channels / out_channels: e.g. 1 -> 2 for colorization (L -> ab).
        num_downs: number of 2x downsamplings; the input side must be divisible by 2**num_downs.
        ngf: channels of the first level.
        norm: "batch" | "syncbatch" | "instance" | "none".
        dropout: dropout 0.5 in the decoder blocks of the 8ngf levels between the innermost
            level and the first three (as the official `use_dropout`).
    """

    def __init__(self, in_channels: int = 3, out_channels: int = 3, num_downs: int = 8, ngf: int = 64,
                 norm: str = "batch", dropout: bool = True):
        super().__init__()
        self.num_downs = num_downs
        chans = level_channels(num_downs, ngf)
        bias = uses_bias(norm)
        inner = num_downs - 1
        self.down = nn.ModuleList()
        self.up = nn.ModuleList()
        for k in range(num_downs):
            in_ch = in_channels if k == 0 else chans[k - 1]
            # Level 0 and the innermost level have no norm after the down conv.
            self.down.append(DownBlock(in_ch, chans[k], norm, use_norm=0 < k < inner, bias=bias))
        for k in range(num_downs):
            out_ch = out_channels if k == 0 else chans[k - 1]
            in_ch = chans[k] if k == inner else 2 * chans[k]
            # Official: dropout sits in the 8ngf blocks built by the `num_downs - 5` loop, i.e.
            # levels 4 .. num_downs-2 (never the innermost, never the first four).
            drop = dropout and 4 <= k < inner
            self.up.append(UpBlock(in_ch, out_ch, norm, outermost=k == 0,
                                   bias=k == 0 or bias, dropout=drop))

    @property
    def stride(self) -> int:
        """Input sides must be multiples of this."""
        return 2 ** self.num_downs

    @property
    def in_channels(self) -> int:
        return self.down[0].conv.in_channels

    @property
    def out_channels(self) -> int:
        return self.up[0].conv.out_channels

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        skips = []
        h = self.down[0](x)
        for block in self.down[1:]:
            # This activation doubles as the skip: the official in-place LeakyReLU does the same.
            h = F.leaky_relu(h, 0.2)
            skips.append(h)
            h = block(h)
        h = self.up[-1](h)
        for k in range(self.num_downs - 2, -1, -1):
            h = self.up[k](torch.cat([skips[k], h], dim=1))
        return h
