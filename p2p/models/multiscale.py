"""pix2pixHD's multi-scale discriminator (Wang et al. 2018): `num_d` PatchGANs, the first on the
full-resolution pair, each further one on the pair downsampled once more (3x3 average pooling,
stride 2, padding 1, `count_include_pad=False`, as pix2pixHD). Coarse scales see global
structure, the full-resolution one detail, at the cost of one PatchGAN per scale.

Each scale is p2p's PatchGAN (`p2p.models.patchgan`: the official pix2pix 70x70 network, or
the PixelGAN), so `num_d=1` is exactly the pix2pix discriminator and every scale's state dict is
an official pix2pix `NLayerDiscriminator` one under `scales.<s>.`. pix2pixHD's own per-scale
network differs in two ways that leave no trace in its tensors (padding 2 instead of 1, and
biases before batch norm), so its discriminator files are not taken for these.

`forward(x)` returns one logit map per scale (full resolution first); `forward(x,
features=True)` one list per scale: the activations after each LeakyReLU, then the logits.
"""

from __future__ import annotations

from torch import nn
from torch.nn import functional as F

from p2p.models.patchgan import PatchDiscriminator, PixelDiscriminator


def downsample(x):
    return F.avg_pool2d(x, kernel_size=3, stride=2, padding=1, count_include_pad=False)


class MultiscaleDiscriminator(nn.Module):
    def __init__(self, in_channels: int, ndf: int = 64, n_layers: int = 3, norm: str = "batch", num_d: int = 2):
        super().__init__()

        def one():
            if n_layers == 0:
                return PixelDiscriminator(in_channels, ndf, norm)
            return PatchDiscriminator(in_channels, ndf, n_layers, norm)

        self.scales = nn.ModuleList(one() for _ in range(num_d))

    def forward(self, x, features: bool = False) -> list:
        out = []
        for s, net in enumerate(self.scales):
            if s:
                x = downsample(x)
            out.append(net(x, features))
        return out
