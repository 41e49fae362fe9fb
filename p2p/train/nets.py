"""The networks of a run and what trains them: the one place that turns `cfg.model` into a
generator and a discriminator, and (wrapped or not) networks into `Nets` with their optimizers,
loss scalers, the perceptual loss and the generator's EMA. The trainer, the step benchmark, the
scaling benchmark and the tests all build through here, so they train the same thing."""

from __future__ import annotations

import torch
from torch import nn

from p2p.models import (DiscriminatorArch, GeneratorArch, build_discriminator, build_generator, hd_arch, init_weights,
                        resnet_arch)
from p2p.train.step import Nets, Precision
from p2p.train.wrap import make_optimizer, unwrap


def architectures(cfg, task) -> tuple[GeneratorArch, DiscriminatorArch]:
    """G maps the task's input channels to its output channels; D sees both, concatenated."""
    m = cfg.model
    if m.generator == "resnet":
        g = resnet_arch(task.in_channels, task.out_channels, m.n_blocks, m.ngf, m.norm, m.dropout)
    elif m.generator in ("global", "local"):
        g = hd_arch(m.generator, task.in_channels, task.out_channels, m.ngf, m.n_downsample_global, m.n_blocks_global,
                    m.n_local_enhancers, m.n_blocks_local, m.norm)
    else:
        g = GeneratorArch(task.in_channels, task.out_channels, m.num_downs, m.ngf, m.norm, m.dropout)
    d = DiscriminatorArch(task.in_channels + task.out_channels, m.ndf, m.n_layers_d, m.norm, m.num_d)
    return g, d


def build_networks(cfg, task) -> tuple[nn.Module, nn.Module]:
    """Fresh G and D with the configured init, drawn from the global torch RNG in module order
    (seed it first for identical weights on every rank)."""
    g_arch, d_arch = architectures(cfg, task)
    m = cfg.model
    return (init_weights(build_generator(g_arch), m.init_type, m.init_gain),
            init_weights(build_discriminator(d_arch), m.init_type, m.init_gain))


def build_perceptual(cfg, task, device: torch.device) -> nn.Module | None:
    """The VGG19 loss when loss.lambda_vgg > 0; a missing or wrong weights file is a UsageError
    here, before any step runs."""
    if cfg.loss.lambda_vgg <= 0:
        return None
    from p2p.perceptual import build_perceptual_loss

    return build_perceptual_loss(cfg.loss.vgg_weights, task.output_rgb_autograd, cfg.loss.lambda_vgg, device)


def build_nets(G: nn.Module, D: nn.Module, D_frozen: nn.Module, cfg, device: torch.device, precision: Precision,
               *, capturable: bool = False, adam: str = "auto", channels_last: bool = False, notice=None,
               task=None) -> Nets:
    """Nets around networks that are already on `device` (and wrapped): one Adam and one loss
    scaler per network, the perceptual loss (needs `task`) and the EMA of G when configured.
    `adam="for-loop"` is the seed's optimizer (benchmark baseline); otherwise p2p's
    (`make_optimizer` with optim.impl, capturable for CUDA graphs). `channels_last`: the
    networks are in that memory format, and the step puts its inputs in it too."""
    skip = cfg.train.on_nonfinite == "skip"

    def optimizer(net):
        params = unwrap(net).parameters()
        if adam == "for-loop":
            o = cfg.optim
            return torch.optim.Adam(params, lr=o.lr, betas=(o.beta1, o.beta2), foreach=False)
        return make_optimizer(params, cfg, device, capturable=capturable, notice=notice)

    if cfg.loss.lambda_vgg > 0 and task is None:
        raise ValueError("loss.lambda_vgg > 0: build_nets needs the task (its outputs as RGB)")
    perceptual = build_perceptual(cfg, task, device)
    ema = None
    if cfg.train.ema_decay > 0:
        from p2p.train.ema import GeneratorEMA

        ema = GeneratorEMA(G, cfg.train.ema_decay)
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    return Nets(G, D, D_frozen, optimizer(G), optimizer(D), precision.make_scaler(skip), precision.make_scaler(skip),
                fmt, perceptual, ema)
