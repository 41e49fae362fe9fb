"""GAN objectives as in the official pix2pix: vanilla (BCE on logits, the numerically stable
form of sigmoid + BCE), LSGAN (MSE to 1/0), WGAN-GP (critic means, plus the gradient penalty),
and hinge (SPADE / imaginaire: max(0, 1 -+ D) for the discriminator, -D for the generator).
Losses are computed in float32 whatever the autocast dtype of the logits.

Multi-scale discriminators give one prediction per scale; `gan_loss_over_scales` averages the
per-scale losses (as SPADE does; pix2pixHD sums them, i.e. num_d times this), so num_d=1 is the
single-discriminator loss and lambda_l1 keeps its meaning whatever num_d is.
`feature_matching` is pix2pixHD's discriminator feature loss.

The terms a training step adds up are registered in `p2p.specs.losses.LOSSES`; their forwards
are in `p2p.losses.terms` (and, one module each, the terms added since, e.g. `charbonnier`)."""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F


def per_scale(out, features: bool = False) -> list:
    """A discriminator's output as one entry per scale: a single PatchGAN gives a tensor (or,
    with features, one list of tensors), a multi-scale one a list of those."""
    single = isinstance(out, torch.Tensor) if not features else isinstance(out[0], torch.Tensor)
    return [out] if single else list(out)


def gan_loss(pred: torch.Tensor, target_is_real: bool, mode: str, for_discriminator: bool = True) -> torch.Tensor:
    """The loss of one prediction map. Only hinge tells the two players apart: the generator's
    hinge loss is -mean(D), not the discriminator's max(0, 1 - D)."""
    pred = pred.float()
    if mode == "vanilla":
        target = torch.ones_like(pred) if target_is_real else torch.zeros_like(pred)
        return F.binary_cross_entropy_with_logits(pred, target)
    if mode == "lsgan":
        target = torch.ones_like(pred) if target_is_real else torch.zeros_like(pred)
        return F.mse_loss(pred, target)
    if mode == "wgangp":
        return -pred.mean() if target_is_real else pred.mean()
    if mode == "hinge":
        if not for_discriminator:
            return -pred.mean()
        return F.relu(1.0 - pred).mean() if target_is_real else F.relu(1.0 + pred).mean()
    raise ValueError(f"unknown gan mode {mode!r}")


def gan_loss_over_scales(preds: list[torch.Tensor], target_is_real: bool, mode: str,
                         for_discriminator: bool = True) -> torch.Tensor:
    losses = [gan_loss(p, target_is_real, mode, for_discriminator) for p in preds]
    return losses[0] if len(losses) == 1 else torch.stack(losses).mean()


def feature_matching(fake: list[list[torch.Tensor]], real: list[list[torch.Tensor]], weight: float) -> torch.Tensor:
    """pix2pixHD's feature matching: per scale, the L1 distance between the discriminator's
    activations on the fake and on the real pair (the logits, each list's last entry, left out),
    each layer weighted 4 / (its number of layers) and each scale 1 / (number of scales); times
    `weight` (pix2pixHD's lambda_feat). Real activations are constants (detached)."""
    total = torch.zeros((), device=fake[0][0].device)
    for fake_scale, real_scale in zip(fake, real):
        layers = len(fake_scale) - 1
        for f, r in zip(fake_scale[:-1], real_scale[:-1]):
            total = total + F.l1_loss(f.float(), r.detach().float()) * (4.0 / layers / len(fake))
    return total * weight


def gradient_penalty(critic: nn.Module, real: torch.Tensor, fake: torch.Tensor, weight: float) -> torch.Tensor:
    """WGAN-GP (Gulrajani et al. 2017), the official 'mixed' form: the critic's gradient norm on
    random per-sample interpolations of real and fake pairs, pushed towards 1. A multi-scale
    critic gets one penalty per scale (each scale's gradient with respect to the full-size pair),
    averaged."""
    alpha = torch.rand(real.shape[0], 1, 1, 1, device=real.device, dtype=real.dtype)
    mix = (alpha * real + (1 - alpha) * fake).requires_grad_(True)
    outs = critic(mix)
    outs = [outs] if isinstance(outs, torch.Tensor) else outs
    penalties = []
    for out in outs:
        out = out.float()
        (grad,) = torch.autograd.grad(out, mix, grad_outputs=torch.ones_like(out), create_graph=True)
        norm = (grad.flatten(1) + 1e-16).norm(2, dim=1)
        penalties.append(((norm - 1.0) ** 2).mean() * weight)
    return penalties[0] if len(penalties) == 1 else torch.stack(penalties).mean()
