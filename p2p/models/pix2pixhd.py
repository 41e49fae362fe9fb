"""pix2pixHD's coarse-to-fine generators (Wang et al. 2018), numerically identical to its
`GlobalGenerator` and `LocalEnhancer` with reflection padding, and laid out under its module
names so that its `latest_net_G.pth` files load without renaming.

GlobalGenerator (`model`, one Sequential):

    reflect-pad 3, conv 7x7 (ngf), norm, ReLU
    n_downsample x [conv 3x3 stride 2 (channels x2), norm, ReLU]
    n_blocks x residual block at ngf * 2**n_downsample (p2p's ResnetBlock, without dropout)
    n_downsample x [transposed conv 3x3 stride 2, output_padding 1 (channels /2), norm, ReLU]
    reflect-pad 3, conv 7x7 (out channels), tanh

LocalEnhancer: a GlobalGenerator of width ngf * 2**n_local_enhancers without its last three
layers (`model`) runs on the input average-pooled n_local_enhancers times; enhancer n (1 = the
coarsest) adds its front end `model<n>_1` (reflect-pad 3, conv 7x7, norm, ReLU, conv 3x3 stride 2,
norm, ReLU) on the input at its own scale to what came up from below, then its back end
`model<n>_2` (n_blocks_local residual blocks, transposed conv, norm, ReLU; the last one also
reflect-pad 3, conv 7x7 to the image channels, tanh).

Unlike pix2pix, every conv has a bias, whatever the norm (pix2pixHD builds them with PyTorch's
default), and there is no dropout.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F

from p2p.models.norm import norm_layer
from p2p.models.resnet import ResnetBlock


def _front(in_channels: int, ngf: int, norm: str) -> list[nn.Module]:
    return [nn.ReflectionPad2d(3), nn.Conv2d(in_channels, ngf, 7), norm_layer(norm, ngf), nn.ReLU(True)]


def _down(ch: int, norm: str) -> list[nn.Module]:
    return [nn.Conv2d(ch, ch * 2, 3, stride=2, padding=1), norm_layer(norm, ch * 2), nn.ReLU(True)]


def _up(ch: int, norm: str) -> list[nn.Module]:
    return [nn.ConvTranspose2d(ch, ch // 2, 3, stride=2, padding=1, output_padding=1), norm_layer(norm, ch // 2),
            nn.ReLU(True)]


def _head(ch: int, out_channels: int) -> list[nn.Module]:
    return [nn.ReflectionPad2d(3), nn.Conv2d(ch, out_channels, 7), nn.Tanh()]


def global_layers(in_channels: int, out_channels: int, ngf: int, n_downsample: int, n_blocks: int,
                  norm: str) -> list[nn.Module]:
    """The GlobalGenerator's layers in order (its state dict indices are their positions)."""
    layers = _front(in_channels, ngf, norm)
    ch = ngf
    for _ in range(n_downsample):
        layers += _down(ch, norm)
        ch *= 2
    layers += [ResnetBlock(ch, norm, dropout=False, bias=True) for _ in range(n_blocks)]
    for _ in range(n_downsample):
        layers += _up(ch, norm)
        ch //= 2
    return layers + _head(ch, out_channels)


def pyramid_downsample(x: torch.Tensor) -> torch.Tensor:
    """pix2pixHD's input pyramid step: 3x3 average, stride 2, padding not counted."""
    return F.avg_pool2d(x, kernel_size=3, stride=2, padding=1, count_include_pad=False)


class _Pix2PixHDGenerator(nn.Module):
    """What both generators share: a 7x7 stem at `model[1]`, residual blocks at 1/stride."""

    stride: int

    @property
    def min_side(self) -> int:
        """The (global part's) residual blocks run at 1/stride of the input and reflect-pad by 1: 2 px at least."""
        return 2 * self.stride

    @property
    def in_channels(self) -> int:
        return self.model[1].in_channels


class GlobalGenerator(_Pix2PixHDGenerator):
    """Input sides must be multiples of `stride` (2**n_downsample) for the output to have the
    input's size."""

    def __init__(self, in_channels: int, out_channels: int, ngf: int = 64, n_downsample: int = 4,
                 n_blocks: int = 9, norm: str = "instance"):
        super().__init__()
        self.model = nn.Sequential(*global_layers(in_channels, out_channels, ngf, n_downsample, n_blocks, norm))
        self.n_downsample = n_downsample

    @property
    def stride(self) -> int:
        return 1 << self.n_downsample

    @property
    def out_channels(self) -> int:
        return self.model[-2].out_channels

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x)


class LocalEnhancer(_Pix2PixHDGenerator):
    """The global generator (width ngf * 2**n_local_enhancers) at the coarsest scale and
    `n_local_enhancers` enhancers of `n_blocks_local` residual blocks above it. `global_part`
    is what a global run trained (`model`); `fix_global_steps` freezes it."""

    def __init__(self, in_channels: int, out_channels: int, ngf: int = 32, n_downsample_global: int = 4,
                 n_blocks_global: int = 9, n_local_enhancers: int = 1, n_blocks_local: int = 3,
                 norm: str = "instance"):
        super().__init__()
        width = ngf * 2 ** n_local_enhancers
        self.model = nn.Sequential(*global_layers(in_channels, out_channels, width, n_downsample_global,
                                                  n_blocks_global, norm)[:-3])
        for n in range(1, n_local_enhancers + 1):
            ch = ngf * 2 ** (n_local_enhancers - n)
            back: list[nn.Module] = [ResnetBlock(ch * 2, norm, dropout=False, bias=True)
                                     for _ in range(n_blocks_local)]
            back += _up(ch * 2, norm)
            if n == n_local_enhancers:
                back += _head(ch, out_channels)
            # pix2pixHD's attribute names, so its state dicts load as they are
            self.add_module(f"model{n}_1", nn.Sequential(*_front(in_channels, ch, norm), *_down(ch, norm)))
            self.add_module(f"model{n}_2", nn.Sequential(*back))
        self.n_local_enhancers = n_local_enhancers
        self.n_downsample_global = n_downsample_global

    @property
    def global_part(self) -> nn.Module:
        return self.model

    def enhancer(self, n: int) -> tuple[nn.Module, nn.Module]:
        return self.get_submodule(f"model{n}_1"), self.get_submodule(f"model{n}_2")

    @property
    def stride(self) -> int:
        return 1 << (self.n_downsample_global + self.n_local_enhancers)

    @property
    def out_channels(self) -> int:
        return self.enhancer(self.n_local_enhancers)[1][-2].out_channels

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        scales = [x]
        for _ in range(self.n_local_enhancers):
            scales.append(pyramid_downsample(scales[-1]))
        out = self.model(scales[-1])
        for n in range(1, self.n_local_enhancers + 1):
            front, back = self.enhancer(n)
            out = back(front(scales[self.n_local_enhancers - n]) + out)
        return out
