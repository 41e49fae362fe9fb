"""One pix2pix training step, as the official `optimize_parameters()`: generator forward,
discriminator update on (input, real) and (input, detached fake), generator update against the
frozen discriminator (adversarial + lambda * L1), and the optional terms of pix2pixHD / SPADE:
a multi-scale discriminator (losses averaged over scales), discriminator feature matching,
the VGG19 perceptual loss, and after the G update the generator's moving average (EMA).

The step only computes: it returns detached loss tensors and never calls `.item()`, logs or
saves, so it can run many times without a host sync and can be captured in a CUDA graph.
With none of the optional terms it is the official step operation for operation, which is
what makes `optim.impl=plain` bit-exact with the official code on CPU.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass

import torch
from torch import nn
from torch.nn import functional as F

from p2p.config import LossConfig
from p2p.losses import feature_matching, gan_loss_over_scales, gradient_penalty

# Every loss a step can return (the optional ones only when their term is on).
LOSS_NAMES = ("G_GAN", "G_L1", "D_real", "D_fake", "D_gp", "G_feat", "G_VGG")


@dataclass
class Nets:
    """What a step updates. `D` may be DDP-wrapped (its gradients are all-reduced); `D_frozen`
    is the same module unwrapped, used as the frozen critic in the G update so that DDP does not
    wait for gradients that frozen weights never produce. `perceptual` (a frozen VGG19 loss) and
    `ema` (the generator's moving average, `p2p.train.ema`) are there when configured."""

    G: nn.Module
    D: nn.Module
    D_frozen: nn.Module
    opt_g: torch.optim.Optimizer
    opt_d: torch.optim.Optimizer
    scaler_g: torch.amp.GradScaler
    scaler_d: torch.amp.GradScaler
    # the networks' memory format; the step's inputs and D's input pairs are put in it too, or
    # every convolution that meets a mismatched input converts it first
    memory_format: torch.memory_format = torch.contiguous_format
    perceptual: nn.Module | None = None  # the VGG19 loss (loss.lambda_vgg > 0)
    ema: object | None = None  # p2p.train.ema.GeneratorEMA (train.ema_decay > 0)
    # G's parameters this step does not update (p2p.train.coarse_to_fine: a frozen global part)
    frozen_g: tuple = ()


class Precision:
    """Autocast for the model forwards; losses, Lab and the optimizers stay float32."""

    DTYPES = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}

    def __init__(self, precision: str, device: torch.device):
        self.name = precision
        self.dtype = self.DTYPES[precision]
        self.device_type = device.type

    def autocast(self):
        if self.dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(self.device_type, dtype=self.dtype)

    def make_scaler(self, skip_nonfinite: bool) -> torch.amp.GradScaler:
        """fp16: dynamic loss scaling, one scaler per network (their losses differ by orders of
        magnitude, so one shared scale would be wrong for one of them).
        `skip_nonfinite` in fp32/bf16: a scaler fixed at 1.0 whose only job is to skip updates
        with non-finite gradients; it can only shrink by powers of two, which is exact."""
        if self.name == "fp16":
            return torch.amp.GradScaler(self.device_type)
        if skip_nonfinite:
            return torch.amp.GradScaler(self.device_type, init_scale=1.0, growth_interval=2**30)
        return torch.amp.GradScaler(self.device_type, enabled=False)


def set_requires_grad(net: nn.Module, flag: bool) -> None:
    for p in net.parameters():
        p.requires_grad_(flag)


def per_scale(out, features: bool = False) -> list:
    """A discriminator's output as one entry per scale: a single PatchGAN gives a tensor (or,
    with features, one list of tensors), a multi-scale one a list of those."""
    single = isinstance(out, torch.Tensor) if not features else isinstance(out[0], torch.Tensor)
    return [out] if single else list(out)


def _in_format(fmt: torch.memory_format):
    """x -> x in the networks' memory format (a no-op when it already is). The default format
    leaves tensors as they are: colorization's strided L/ab views go in unchanged."""
    if fmt == torch.contiguous_format:
        return lambda x: x
    return lambda x: x.contiguous(memory_format=fmt)


def train_step(nets: Nets, inp: torch.Tensor, target: torch.Tensor, loss: LossConfig,
               precision: Precision) -> dict[str, torch.Tensor]:
    layout = _in_format(nets.memory_format)
    inp, target = layout(inp), layout(target)
    with precision.autocast():
        fake = nets.G(inp)
    fake = fake.float()

    # Discriminator: real pairs -> 1, fake pairs -> 0; its loss is halved as in the paper.
    set_requires_grad(nets.D_frozen, True)
    nets.opt_d.zero_grad(set_to_none=True)
    fake_pair = layout(torch.cat([inp, fake.detach()], 1))
    real_pair = layout(torch.cat([inp, target], 1))
    with precision.autocast():
        pred_fake = per_scale(nets.D(fake_pair))
        pred_real = per_scale(nets.D(real_pair))
    d_fake = gan_loss_over_scales(pred_fake, False, loss.gan_mode)
    d_real = gan_loss_over_scales(pred_real, True, loss.gan_mode)
    loss_d = 0.5 * (d_fake + d_real)
    out = {}
    if loss.gan_mode == "wgangp":
        with precision.autocast():
            gp = gradient_penalty(nets.D, real_pair, fake_pair, loss.lambda_gp)
        loss_d = loss_d + gp
        out["D_gp"] = gp.detach()
    nets.scaler_d.scale(loss_d).backward()
    nets.scaler_d.step(nets.opt_d)
    nets.scaler_d.update()

    # Generator: fool the frozen discriminator and stay close to the target in L1 (and, when
    # configured, in the discriminator's and VGG19's features).
    set_requires_grad(nets.D_frozen, False)
    nets.opt_g.zero_grad(set_to_none=True)
    fake_pair = layout(torch.cat([inp, fake], 1))
    feat = loss.lambda_feat > 0
    with precision.autocast():
        pred = per_scale(nets.D_frozen(fake_pair, features=True) if feat else nets.D_frozen(fake_pair), feat)
        if feat:  # the real pair's features under the same (just updated) discriminator: constants
            with torch.no_grad():
                real_features = per_scale(nets.D_frozen(real_pair, features=True), True)
    g_gan = gan_loss_over_scales([p[-1] for p in pred] if feat else pred, True, loss.gan_mode,
                                 for_discriminator=False)
    g_l1 = F.l1_loss(fake, target) * loss.lambda_l1
    loss_g = g_gan + g_l1
    if feat:
        g_feat = feature_matching(pred, real_features, loss.lambda_feat)
        loss_g = loss_g + g_feat
        out["G_feat"] = g_feat.detach()
    if nets.perceptual is not None:
        with precision.autocast():
            g_vgg = nets.perceptual(inp, fake, target)
        loss_g = loss_g + g_vgg
        out["G_VGG"] = g_vgg.detach()
    nets.scaler_g.scale(loss_g).backward()
    for p in nets.frozen_g:  # Adam skips a parameter without a gradient
        p.grad = None
    nets.scaler_g.step(nets.opt_g)
    nets.scaler_g.update()
    if nets.ema is not None:
        nets.ema.update()

    out.update(G_GAN=g_gan.detach(), G_L1=g_l1.detach(), D_real=d_real.detach(), D_fake=d_fake.detach())
    return out
