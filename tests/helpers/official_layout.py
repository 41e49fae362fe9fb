"""An independent re-statement of the official pix2pix networks' *layout* (nested U-Net blocks,
in-place activations, module indices), written for the tests from the published architecture.
Its state dicts have the official key names, e.g. `model.model.1.model.3.weight`, so tests can
check that p2p imports official weights and reproduces official outputs."""

from __future__ import annotations

import torch
from torch import nn


def _norm(kind):
    if kind == "batch":
        return lambda c: nn.BatchNorm2d(c, affine=True, track_running_stats=True)
    if kind == "instance":
        return lambda c: nn.InstanceNorm2d(c, affine=False, track_running_stats=False)
    return lambda c: nn.Identity()


class Block(nn.Module):
    def __init__(self, outer, inner, in_ch=None, sub=None, outermost=False, innermost=False, norm="batch",
                 dropout=False):
        super().__init__()
        self.outermost = outermost
        bias = norm == "instance"
        in_ch = outer if in_ch is None else in_ch
        mk = _norm(norm)
        down = nn.Conv2d(in_ch, inner, 4, 2, 1, bias=bias)
        if outermost:
            layers = [down, sub, nn.ReLU(True), nn.ConvTranspose2d(inner * 2, outer, 4, 2, 1), nn.Tanh()]
        elif innermost:
            layers = [nn.LeakyReLU(0.2, True), down, nn.ReLU(True),
                      nn.ConvTranspose2d(inner, outer, 4, 2, 1, bias=bias), mk(outer)]
        else:
            layers = [nn.LeakyReLU(0.2, True), down, mk(inner), sub, nn.ReLU(True),
                      nn.ConvTranspose2d(inner * 2, outer, 4, 2, 1, bias=bias), mk(outer)]
            if dropout:
                layers.append(nn.Dropout(0.5))
        self.model = nn.Sequential(*layers)

    def forward(self, x):
        return self.model(x) if self.outermost else torch.cat([x, self.model(x)], 1)


class OfficialUnet(nn.Module):
    def __init__(self, in_ch, out_ch, num_downs, ngf=64, norm="batch", dropout=False):
        super().__init__()
        b = Block(ngf * 8, ngf * 8, innermost=True, norm=norm)
        for _ in range(num_downs - 5):
            b = Block(ngf * 8, ngf * 8, sub=b, norm=norm, dropout=dropout)
        b = Block(ngf * 4, ngf * 8, sub=b, norm=norm)
        b = Block(ngf * 2, ngf * 4, sub=b, norm=norm)
        b = Block(ngf, ngf * 2, sub=b, norm=norm)
        self.model = Block(out_ch, ngf, in_ch=in_ch, sub=b, outermost=True, norm=norm)

    def forward(self, x):
        return self.model(x)


class OfficialNLayerD(nn.Module):
    def __init__(self, in_ch, ndf=64, n_layers=3, norm="batch"):
        super().__init__()
        bias, mk = norm == "instance", _norm(norm)
        seq = [nn.Conv2d(in_ch, ndf, 4, 2, 1), nn.LeakyReLU(0.2, True)]
        mult = 1
        for n in range(1, n_layers):
            prev, mult = mult, min(2 ** n, 8)
            seq += [nn.Conv2d(ndf * prev, ndf * mult, 4, 2, 1, bias=bias), mk(ndf * mult), nn.LeakyReLU(0.2, True)]
        prev, mult = mult, min(2 ** n_layers, 8)
        seq += [nn.Conv2d(ndf * prev, ndf * mult, 4, 1, 1, bias=bias), mk(ndf * mult), nn.LeakyReLU(0.2, True)]
        seq += [nn.Conv2d(ndf * mult, 1, 4, 1, 1)]
        self.model = nn.Sequential(*seq)

    def forward(self, x):
        return self.model(x)


class OfficialPixelD(nn.Module):
    def __init__(self, in_ch, ndf=64, norm="batch"):
        super().__init__()
        bias, mk = norm == "instance", _norm(norm)
        self.net = nn.Sequential(nn.Conv2d(in_ch, ndf, 1), nn.LeakyReLU(0.2, True),
                                 nn.Conv2d(ndf, ndf * 2, 1, bias=bias), mk(ndf * 2), nn.LeakyReLU(0.2, True),
                                 nn.Conv2d(ndf * 2, 1, 1, bias=bias))

    def forward(self, x):
        return self.net(x)


def randomize(net: nn.Module, seed: int = 0) -> nn.Module:
    """Non-trivial weights and running stats, so a wrong mapping cannot go unnoticed."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, t in net.state_dict().items():
            if t.is_floating_point():
                if name.endswith("running_var"):
                    t.copy_(torch.rand(t.shape, generator=g) + 0.5)
                else:
                    t.copy_(torch.randn(t.shape, generator=g) * 0.1)
    return net
