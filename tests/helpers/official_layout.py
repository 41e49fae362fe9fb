"""An independent re-statement of the official pix2pix networks' *layout* (nested U-Net blocks,
the ResnetGenerator, in-place activations, module indices), of pix2pixHD's multi-scale
discriminator, and of the official training step, written for the tests from the published
architectures and code. Its state dicts have the official key names, e.g.
`model.model.1.model.3.weight`, so tests can check that p2p imports official weights,
reproduces official outputs and takes the official step."""

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


class OfficialResnetBlock(nn.Module):
    def __init__(self, dim, norm, dropout, bias):
        super().__init__()
        mk = _norm(norm)
        seq = [nn.ReflectionPad2d(1), nn.Conv2d(dim, dim, kernel_size=3, padding=0, bias=bias), mk(dim), nn.ReLU(True)]
        if dropout:
            seq += [nn.Dropout(0.5)]
        seq += [nn.ReflectionPad2d(1), nn.Conv2d(dim, dim, kernel_size=3, padding=0, bias=bias), mk(dim)]
        self.conv_block = nn.Sequential(*seq)

    def forward(self, x):
        return x + self.conv_block(x)


class OfficialResnet(nn.Module):
    """The official ResnetGenerator (padding_type='reflect'). `n_downsampling` is fixed at 2
    there; other values stand in for networks p2p must refuse (pix2pixHD's GlobalGenerator has 4)."""

    def __init__(self, in_ch, out_ch, ngf=64, norm="batch", dropout=False, n_blocks=9, n_downsampling=2):
        super().__init__()
        bias, mk = norm == "instance", _norm(norm)
        seq = [nn.ReflectionPad2d(3), nn.Conv2d(in_ch, ngf, kernel_size=7, padding=0, bias=bias), mk(ngf), nn.ReLU(True)]
        for i in range(n_downsampling):
            m = 2 ** i
            seq += [nn.Conv2d(ngf * m, ngf * m * 2, kernel_size=3, stride=2, padding=1, bias=bias), mk(ngf * m * 2),
                    nn.ReLU(True)]
        m = 2 ** n_downsampling
        seq += [OfficialResnetBlock(ngf * m, norm, dropout, bias) for _ in range(n_blocks)]
        for i in range(n_downsampling):
            m = 2 ** (n_downsampling - i)
            seq += [nn.ConvTranspose2d(ngf * m, ngf * m // 2, kernel_size=3, stride=2, padding=1, output_padding=1,
                                       bias=bias), mk(ngf * m // 2), nn.ReLU(True)]
        seq += [nn.ReflectionPad2d(3), nn.Conv2d(ngf, out_ch, kernel_size=7, padding=0), nn.Tanh()]
        self.model = nn.Sequential(*seq)

    def forward(self, x):
        return self.model(x)


class OfficialMultiscaleD(nn.Module):
    """pix2pixHD's MultiscaleDiscriminator (getIntermFeat=False naming): discriminators
    `layer0` .. `layer<num_D-1>`, of which the LAST sees the full-resolution input and each
    earlier one the input average-pooled once more (3x3, stride 2, padding 1, without the
    padding in the average); outputs come full resolution first. The per-scale network is the
    official pix2pix NLayerDiscriminator / PixelDiscriminator restated above (p2p's choice)."""

    def __init__(self, in_ch, ndf=64, n_layers=3, norm="batch", num_D=2):
        super().__init__()
        self.num_D = num_D
        for i in range(num_D):
            net = OfficialPixelD(in_ch, ndf, norm) if n_layers == 0 else OfficialNLayerD(in_ch, ndf, n_layers, norm)
            setattr(self, f"layer{i}", net)
        self.downsample = nn.AvgPool2d(3, stride=2, padding=[1, 1], count_include_pad=False)

    @staticmethod
    def intermediate(net, x):
        """pix2pixHD's getIntermFeat outputs: the output of each conv[-norm]-LeakyReLU group, then the logits."""
        seq = net.model if hasattr(net, "model") else net.net
        groups, out = [], x
        for layer in seq.children():
            out = layer(out)
            if isinstance(layer, nn.LeakyReLU):
                groups.append(out)
        return groups + [out]

    def forward(self, x, intermediate=False):
        result, down = [], x
        for i in range(self.num_D):
            net = getattr(self, f"layer{self.num_D - 1 - i}")
            result.append(self.intermediate(net, down) if intermediate else net(down))
            if i != self.num_D - 1:
                down = self.downsample(down)
        return result


def official_set_requires_grad(net, requires_grad):
    for param in net.parameters():
        param.requires_grad = requires_grad


def official_optimize_parameters(netG, netD, optimizer_G, optimizer_D, real_A, real_B, lambda_L1=100.0):
    """The official pix2pix_model.py optimize_parameters() with gan_mode='vanilla', restated:
    forward; D update on the detached fake and the real pair, loss (fake + real) * 0.5; G update
    against the frozen D, loss GAN + lambda_L1 * L1. Returns the four losses."""
    criterion_gan, criterion_l1 = nn.BCEWithLogitsLoss(), nn.L1Loss()
    real_label, fake_label = torch.tensor(1.0), torch.tensor(0.0)
    fake_B = netG(real_A)
    official_set_requires_grad(netD, True)
    optimizer_D.zero_grad()
    fake_AB = torch.cat((real_A, fake_B), 1)
    pred_fake = netD(fake_AB.detach())
    loss_D_fake = criterion_gan(pred_fake, fake_label.expand_as(pred_fake))
    real_AB = torch.cat((real_A, real_B), 1)
    pred_real = netD(real_AB)
    loss_D_real = criterion_gan(pred_real, real_label.expand_as(pred_real))
    loss_D = (loss_D_fake + loss_D_real) * 0.5
    loss_D.backward()
    optimizer_D.step()
    official_set_requires_grad(netD, False)
    optimizer_G.zero_grad()
    fake_AB = torch.cat((real_A, fake_B), 1)
    pred_fake = netD(fake_AB)
    loss_G_GAN = criterion_gan(pred_fake, real_label.expand_as(pred_fake))
    loss_G_L1 = criterion_l1(fake_B, real_B) * lambda_L1
    loss_G = loss_G_GAN + loss_G_L1
    loss_G.backward()
    optimizer_G.step()
    return {"G_GAN": loss_G_GAN.detach(), "G_L1": loss_G_L1.detach(), "D_real": loss_D_real.detach(),
            "D_fake": loss_D_fake.detach()}


def assert_same_outputs(ours: nn.Module, official: nn.Module, x: torch.Tensor) -> None:
    """Equal outputs in eval mode, and in train mode (batch statistics) with dropout off in both
    (its masks would differ by module order, not by the networks)."""
    with torch.no_grad():
        ours.eval(), official.eval()
        torch.testing.assert_close(ours(x), official(x), rtol=1e-5, atol=1e-6)
        ours.train(), official.train()
        for m in list(ours.modules()) + list(official.modules()):
            if isinstance(m, nn.Dropout):
                m.p = 0.0
        torch.testing.assert_close(ours(x), official(x), rtol=1e-5, atol=1e-6)
