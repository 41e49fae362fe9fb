"""The networks of a run and what trains them: the one place that turns `cfg.model` into a
generator and a discriminator, and (wrapped or not) networks into `Nets` with their optimizers,
loss scalers, the perceptual loss and the generator's EMA. The trainer, the step benchmark, the
scaling benchmark and the tests all build through here, so they train the same thing."""

from __future__ import annotations

import torch
from torch import nn

from p2p.models import architectures, build_discriminator, build_generator, init_weights
from p2p.specs import load
from p2p.specs.losses import LOSSES
from p2p.precision import Precision
from p2p.train.step import Nets
from p2p.train.wrap import make_optimizer, unwrap


def build_networks(cfg, task) -> tuple[nn.Module, nn.Module]:
    """Fresh G and D with the configured init, drawn from the global torch RNG in module order
    (seed it first for identical weights on every rank)."""
    g_arch, d_arch = architectures(cfg, task)
    m = cfg.model
    return (init_weights(build_generator(g_arch), m.init_type, m.init_gain),
            init_weights(build_discriminator(d_arch), m.init_type, m.init_gain))


def build_loss_modules(cfg, task, device: torch.device) -> dict[str, nn.Module]:
    """The modules of the loss terms that are on and need one (p2p.specs.losses: e.g. G_VGG's
    VGG19), by term name; a missing or wrong weights file is a UsageError here, before any step
    runs."""
    modules = {}
    for spec in LOSSES:
        if spec.module and spec.on(cfg.loss):
            if task is None:
                raise ValueError(f"loss term {spec.name} is on: build_nets needs the task (its outputs as RGB)")
            modules[spec.name] = load(spec.module)(cfg.loss, task, device)
    return modules


def build_nets(G: nn.Module, D: nn.Module, D_frozen: nn.Module, cfg, device: torch.device, precision: Precision,
               *, capturable: bool = False, adam: str = "auto", channels_last: bool = False, notice=None,
               task=None) -> Nets:
    """Nets around networks that are already on `device` (and wrapped): one Adam and one loss
    scaler per network, the modules of the loss terms (needs `task`) and the EMA of G when configured.
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

    loss_modules = build_loss_modules(cfg, task, device)
    ema = None
    if cfg.train.ema_decay > 0:
        from p2p.train.ema import GeneratorEMA

        ema = GeneratorEMA(G, cfg.train.ema_decay)
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    return Nets(G, D, D_frozen, optimizer(G), optimizer(D), precision.make_scaler(skip), precision.make_scaler(skip),
                fmt, loss_modules, ema)
