"""GAN objectives as in the official pix2pix: vanilla (BCE on logits, the numerically stable
form of sigmoid + BCE), LSGAN (MSE to 1/0), WGAN-GP (critic means, plus the gradient penalty).
Losses are computed in float32 whatever the autocast dtype of the logits."""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F


def gan_loss(pred: torch.Tensor, target_is_real: bool, mode: str) -> torch.Tensor:
    pred = pred.float()
    if mode == "vanilla":
        target = torch.ones_like(pred) if target_is_real else torch.zeros_like(pred)
        return F.binary_cross_entropy_with_logits(pred, target)
    if mode == "lsgan":
        target = torch.ones_like(pred) if target_is_real else torch.zeros_like(pred)
        return F.mse_loss(pred, target)
    if mode == "wgangp":
        return -pred.mean() if target_is_real else pred.mean()
    raise ValueError(f"unknown gan mode {mode!r}")


def gradient_penalty(critic: nn.Module, real: torch.Tensor, fake: torch.Tensor, weight: float) -> torch.Tensor:
    """WGAN-GP (Gulrajani et al. 2017), the official 'mixed' form: the critic's gradient norm on
    random per-sample interpolations of real and fake pairs, pushed towards 1."""
    alpha = torch.rand(real.shape[0], 1, 1, 1, device=real.device, dtype=real.dtype)
    mix = (alpha * real + (1 - alpha) * fake).requires_grad_(True)
    out = critic(mix).float()
    (grad,) = torch.autograd.grad(out, mix, grad_outputs=torch.ones_like(out), create_graph=True)
    norm = (grad.flatten(1) + 1e-16).norm(2, dim=1)
    return ((norm - 1.0) ** 2).mean() * weight
