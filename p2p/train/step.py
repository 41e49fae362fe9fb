"""One pix2pix training step, as the official `optimize_parameters()`: generator forward,
discriminator update on (input, real) and (input, detached fake), generator update against the
frozen discriminator (adversarial + lambda * L1), and the optional terms of pix2pixHD / SPADE:
a multi-scale discriminator (losses averaged over scales), discriminator feature matching,
the VGG19 perceptual loss, and after the G update the generator's moving average (EMA).

The loss terms are the ones registered in `p2p.specs.losses.LOSSES`: the step runs the passes
they share (D on the real and the fake pair, D on the fake pair in the G update), then adds up
the terms that the loss config switches on, in registration order (`StepView` is what a term
reads). Which terms run is decided from the config alone, never from a tensor's value.

The step only computes: it returns detached loss tensors and never calls `.item()`, logs or
saves, so it can run many times without a host sync and can be captured in a CUDA graph.
With none of the optional terms it is the official step operation for operation, which is
what makes `optim.impl=plain` bit-exact with the official code on CPU.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass, field

import torch
from torch import nn

from p2p.config import LossConfig
from p2p.losses import per_scale
from p2p.precision import Precision
from p2p.specs import load
from p2p.specs.losses import LOSSES


@dataclass
class Nets:
    """What a step updates. `D` may be DDP-wrapped (its gradients are all-reduced); `D_frozen`
    is the same module unwrapped, used as the frozen critic in the G update so that DDP does not
    wait for gradients that frozen weights never produce. `loss_modules` (by loss term name: the
    modules a term needs, e.g. G_VGG's frozen VGG19) and `ema` (the generator's moving average,
    `p2p.train.ema`) are there when configured."""

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
    loss_modules: dict[str, nn.Module] = field(default_factory=dict)  # loss term name -> its module
    ema: object | None = None  # p2p.train.ema.GeneratorEMA (train.ema_decay > 0)
    # G's parameters this step does not update (p2p.train.coarse_to_fine: a frozen global part)
    frozen_g: tuple = ()

    @property
    def perceptual(self) -> nn.Module | None:
        """The VGG19 loss (loss.lambda_vgg > 0)."""
        return self.loss_modules.get("G_VGG")


def set_requires_grad(net: nn.Module, flag: bool) -> None:
    for p in net.parameters():
        p.requires_grad_(flag)


def _in_format(fmt: torch.memory_format):
    """x -> x in the networks' memory format (a no-op when it already is). The default format
    leaves tensors as they are: colorization's strided L/ab views go in unchanged."""
    if fmt == torch.contiguous_format:
        return lambda x: x
    return lambda x: x.contiguous(memory_format=fmt)


@dataclass
class StepView:
    """What the loss terms of one step read, filled in phase by phase: the D update sets
    `fake_pair` (the fake detached), `pred_fake` and `pred_real` (D's logits per scale), the G
    update sets `fake_pair` again (with gradients) and `pred` (the frozen D's output per scale:
    lists of activations ending in the logits when `d_features`)."""

    nets: Nets
    loss: LossConfig
    precision: Precision
    inp: torch.Tensor
    target: torch.Tensor
    fake: torch.Tensor  # G(inp) in float32, with gradients
    real_pair: torch.Tensor
    fake_pair: torch.Tensor
    pred_fake: list = field(default_factory=list)
    pred_real: list = field(default_factory=list)
    pred: list = field(default_factory=list)
    d_features: bool = False


@functools.lru_cache(maxsize=16)
def active_terms(loss: LossConfig) -> tuple[tuple, tuple]:
    """(G terms, D terms) that `loss` switches on, each (spec, forward, weight), in registration
    order: resolved once per config, not per step."""
    on = [(spec, load(spec.forward), spec.weight(loss)) for spec in LOSSES if spec.on(loss)]
    return tuple(t for t in on if t[0].network == "G"), tuple(t for t in on if t[0].network == "D")


def _total(terms: tuple, view: StepView, out: dict) -> torch.Tensor:
    """The terms' weighted sum (each entering with its share), their values recorded in `out`."""
    total = None
    for spec, forward, weight in terms:
        value = forward(view, weight)
        out[spec.name] = value.detach()
        part = value * spec.share if spec.share != 1.0 else value
        total = part if total is None else total + part
    return total


def train_step(nets: Nets, inp: torch.Tensor, target: torch.Tensor, loss: LossConfig,
               precision: Precision) -> dict[str, torch.Tensor]:
    g_terms, d_terms = active_terms(loss)
    layout = _in_format(nets.memory_format)
    inp, target = layout(inp), layout(target)
    with precision.autocast():
        fake = nets.G(inp)
    fake = fake.float()

    # Discriminator: real pairs -> 1, fake pairs -> 0; its loss is halved as in the paper.
    set_requires_grad(nets.D_frozen, True)
    nets.opt_d.zero_grad(set_to_none=True)
    view = StepView(nets, loss, precision, inp, target, fake, real_pair=layout(torch.cat([inp, target], 1)),
                    fake_pair=layout(torch.cat([inp, fake.detach()], 1)))
    with precision.autocast():
        view.pred_fake = per_scale(nets.D(view.fake_pair))
        view.pred_real = per_scale(nets.D(view.real_pair))
    out: dict[str, torch.Tensor] = {}
    loss_d = _total(d_terms, view, out)
    nets.scaler_d.scale(loss_d).backward()
    nets.scaler_d.step(nets.opt_d)
    nets.scaler_d.update()

    # Generator: fool the frozen discriminator and stay close to the target in L1 (and, when
    # configured, in the discriminator's and VGG19's features).
    set_requires_grad(nets.D_frozen, False)
    nets.opt_g.zero_grad(set_to_none=True)
    view.fake_pair = layout(torch.cat([inp, fake], 1))
    view.d_features = feat = any(spec.d_features for spec, _, _ in g_terms)
    with precision.autocast():
        view.pred = per_scale(nets.D_frozen(view.fake_pair, features=True) if feat else nets.D_frozen(view.fake_pair),
                              feat)
    loss_g = _total(g_terms, view, out)
    nets.scaler_g.scale(loss_g).backward()
    for p in nets.frozen_g:  # Adam skips a parameter without a gradient
        p.grad = None
    nets.scaler_g.step(nets.opt_g)
    nets.scaler_g.update()
    if nets.ema is not None:
        nets.ema.update()
    return out
