"""Learning-rate schedules, as a pure function of the step: resuming needs no scheduler state,
and a CUDA graph can replay a step whose lr lives in a device tensor that is filled before it."""

from __future__ import annotations

import math

import torch


def lr_factor(step: int, cfg) -> float:
    """Learning-rate multiplier at `step`."""
    o, total = cfg.optim, cfg.train.max_steps
    if o.lr_policy == "linear":  # official pix2pix: constant, then linearly to zero
        start = total // 2 if o.decay_start < 0 else o.decay_start
        return 1.0 - max(0, step - start) / float(total - start + 1)
    if o.lr_policy == "step":
        return o.gamma ** (step // o.step_size)
    if o.lr_policy == "cosine":
        return 0.5 * (1.0 + math.cos(math.pi * min(step, total) / total))
    return 1.0


def set_lr(opt: torch.optim.Optimizer, lr: float) -> None:
    for group in opt.param_groups:
        if isinstance(group["lr"], torch.Tensor):
            group["lr"].fill_(lr)  # capturable Adam: the lr lives on the device
        else:
            group["lr"] = lr
