"""The ResNet generator of the official pix2pix / CycleGAN code (`resnet_9blocks`,
`resnet_6blocks`; Johnson et al. 2016), numerically identical to the official
`ResnetGenerator` with its default reflection padding:

    reflect-pad 3, conv 7x7 (ngf), norm, ReLU
    2 x [conv 3x3 stride 2 (channels x2), norm, ReLU]
    n_blocks x residual block at 4ngf: x + [reflect-pad 1, conv 3x3, norm, ReLU,
                                            (dropout 0.5), reflect-pad 1, conv 3x3, norm]
    2 x [transposed conv 3x3 stride 2, output_padding 1 (channels /2), norm, ReLU]
    reflect-pad 3, conv 7x7 (out channels, with bias), tanh

Convs before a norm have a bias only with instance norm (the official `use_bias` rule, which
also leaves them without one under `norm=none`). The layer order is kept as one Sequential
named `model` with `conv_block` Sequentials inside the residual blocks, so official state dicts
load without renaming; as in the official network, dropout shifts the second conv of each block
from `conv_block.5` to `conv_block.6`.
"""

from __future__ import annotations

import torch
from torch import nn

from p2p.models.norm import norm_layer, uses_bias

DOWNSAMPLINGS = 2  # fixed in the official network


class ResnetBlock(nn.Module):
    def __init__(self, channels: int, norm: str, dropout: bool, bias: bool):
        super().__init__()
        layers: list[nn.Module] = [nn.ReflectionPad2d(1), nn.Conv2d(channels, channels, 3, bias=bias),
                                   norm_layer(norm, channels), nn.ReLU(True)]
        if dropout:
            layers.append(nn.Dropout(0.5))
        layers += [nn.ReflectionPad2d(1), nn.Conv2d(channels, channels, 3, bias=bias), norm_layer(norm, channels)]
        self.conv_block = nn.Sequential(*layers)

    def forward(self, x):
        return x + self.conv_block(x)


class ResnetGenerator(nn.Module):
    """Two stride-2 downsamplings, `n_blocks` residual blocks at 4 x ngf channels, two
    upsamplings; tanh output in [-1, 1]. Input sides should be multiples of `stride` (4) for
    the output to have the input's size."""

    def __init__(self, in_channels: int = 3, out_channels: int = 3, n_blocks: int = 9, ngf: int = 64,
                 norm: str = "batch", dropout: bool = False):
        super().__init__()
        bias = uses_bias(norm)
        layers: list[nn.Module] = [nn.ReflectionPad2d(3), nn.Conv2d(in_channels, ngf, 7, bias=bias),
                                   norm_layer(norm, ngf), nn.ReLU(True)]
        ch = ngf
        for _ in range(DOWNSAMPLINGS):
            layers += [nn.Conv2d(ch, ch * 2, 3, stride=2, padding=1, bias=bias), norm_layer(norm, ch * 2), nn.ReLU(True)]
            ch *= 2
        layers += [ResnetBlock(ch, norm, dropout, bias) for _ in range(n_blocks)]
        for _ in range(DOWNSAMPLINGS):
            layers += [nn.ConvTranspose2d(ch, ch // 2, 3, stride=2, padding=1, output_padding=1, bias=bias),
                       norm_layer(norm, ch // 2), nn.ReLU(True)]
            ch //= 2
        layers += [nn.ReflectionPad2d(3), nn.Conv2d(ch, out_channels, 7), nn.Tanh()]
        self.model = nn.Sequential(*layers)
        self.n_blocks = n_blocks

    @property
    def stride(self) -> int:
        return 2 ** DOWNSAMPLINGS

    @property
    def in_channels(self) -> int:
        return self.model[1].in_channels

    @property
    def out_channels(self) -> int:
        return self.model[-2].out_channels

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x)
