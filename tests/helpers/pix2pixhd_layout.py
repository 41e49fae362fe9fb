"""An independent re-statement, for the tests, of pix2pixHD's generators' layout as its
published models/networks.py builds them (NVIDIA/pix2pixHD): `GlobalGenerator` (one Sequential
`model`), `LocalEnhancer` (the global generator of width ngf * 2**n_local_enhancers minus its last
three layers as `model`, and per enhancer n the Sequentials `model<n>_1` / `model<n>_2`), its
`ResnetBlock` (reflection padding, no dropout), every conv with a bias, norm_layer batch
(affine) or instance (no affine), and the input pyramid of 3x3 stride-2 average pools that do
not count the padding. Its state dicts carry pix2pixHD's key names."""

from __future__ import annotations

import torch
from torch import nn


def _norm(kind, c):
    return nn.BatchNorm2d(c, affine=True) if kind == "batch" else nn.InstanceNorm2d(c, affine=False)


class HDResnetBlock(nn.Module):
    def __init__(self, dim, norm):
        super().__init__()
        self.conv_block = nn.Sequential(
            nn.ReflectionPad2d(1), nn.Conv2d(dim, dim, kernel_size=3, padding=0), _norm(norm, dim), nn.ReLU(True),
            nn.ReflectionPad2d(1), nn.Conv2d(dim, dim, kernel_size=3, padding=0), _norm(norm, dim))

    def forward(self, x):
        return x + self.conv_block(x)


class HDGlobal(nn.Module):
    def __init__(self, input_nc, output_nc, ngf=64, n_downsampling=4, n_blocks=9, norm="instance"):
        super().__init__()
        seq = [nn.ReflectionPad2d(3), nn.Conv2d(input_nc, ngf, kernel_size=7, padding=0), _norm(norm, ngf),
               nn.ReLU(True)]
        for i in range(n_downsampling):
            c = ngf * 2 ** i
            seq += [nn.Conv2d(c, 2 * c, kernel_size=3, stride=2, padding=1), _norm(norm, 2 * c), nn.ReLU(True)]
        c = ngf * 2 ** n_downsampling
        seq += [HDResnetBlock(c, norm) for _ in range(n_blocks)]
        for i in range(n_downsampling):
            c = ngf * 2 ** (n_downsampling - i)
            seq += [nn.ConvTranspose2d(c, c // 2, kernel_size=3, stride=2, padding=1, output_padding=1),
                    _norm(norm, c // 2), nn.ReLU(True)]
        seq += [nn.ReflectionPad2d(3), nn.Conv2d(ngf, output_nc, kernel_size=7, padding=0), nn.Tanh()]
        self.model = nn.Sequential(*seq)

    def forward(self, x):
        return self.model(x)


class HDLocal(nn.Module):
    def __init__(self, input_nc, output_nc, ngf=32, n_downsample_global=4, n_blocks_global=9, n_local_enhancers=1,
                 n_blocks_local=3, norm="instance"):
        super().__init__()
        self.n_local_enhancers = n_local_enhancers
        full = HDGlobal(input_nc, output_nc, ngf * 2 ** n_local_enhancers, n_downsample_global, n_blocks_global,
                        norm).model
        self.model = nn.Sequential(*[full[i] for i in range(len(full) - 3)])
        for n in range(1, n_local_enhancers + 1):
            c = ngf * 2 ** (n_local_enhancers - n)
            down = [nn.ReflectionPad2d(3), nn.Conv2d(input_nc, c, kernel_size=7, padding=0), _norm(norm, c),
                    nn.ReLU(True), nn.Conv2d(c, 2 * c, kernel_size=3, stride=2, padding=1), _norm(norm, 2 * c),
                    nn.ReLU(True)]
            up = [HDResnetBlock(2 * c, norm) for _ in range(n_blocks_local)]
            up += [nn.ConvTranspose2d(2 * c, c, kernel_size=3, stride=2, padding=1, output_padding=1), _norm(norm, c),
                   nn.ReLU(True)]
            if n == n_local_enhancers:
                up += [nn.ReflectionPad2d(3), nn.Conv2d(ngf, output_nc, kernel_size=7, padding=0), nn.Tanh()]
            setattr(self, f"model{n}_1", nn.Sequential(*down))
            setattr(self, f"model{n}_2", nn.Sequential(*up))
        self.downsample = nn.AvgPool2d(3, stride=2, padding=[1, 1], count_include_pad=False)

    def forward(self, x):
        pyramid = [x]
        for _ in range(self.n_local_enhancers):
            pyramid.append(self.downsample(pyramid[-1]))
        out = self.model(pyramid[-1])
        for n in range(1, self.n_local_enhancers + 1):
            x_n = pyramid[self.n_local_enhancers - n]
            out = getattr(self, f"model{n}_2")(getattr(self, f"model{n}_1")(x_n) + out)
        return out


def hd_state_dict(net: nn.Module) -> dict[str, torch.Tensor]:
    """What pix2pixHD's save_network writes: the network's state dict (on the CPU)."""
    return {k: v.detach().cpu().clone() for k, v in net.state_dict().items()}
