"""Learning-rate schedules, as a pure function of the position (the step, and for the official
per-epoch rule the data's epoch): resuming needs no scheduler state, and a CUDA graph can replay
a step whose lr lives in a device tensor that is filled before it."""

from __future__ import annotations

import math

import torch


def official_factor(epoch: int, n_epochs: int, n_epochs_decay: int) -> float:
    """The official pix2pix rule for the 0-based epoch: 1 for `n_epochs` epochs, then
    1 - (epoch + 1 - n_epochs) / (n_epochs_decay + 1), i.e. down to 1 / (n_epochs_decay + 1) in
    the last of the n_epochs + n_epochs_decay epochs (the official LambdaLR stepped once at the
    end of every epoch; its value during epoch e). It never reaches zero: epochs past the end,
    where the official run has stopped, keep the last value."""
    epoch = min(epoch, n_epochs + n_epochs_decay - 1)
    return 1.0 - max(0, epoch + 1 - n_epochs) / float(n_epochs_decay + 1)


def lr_factor(step: int, cfg, epoch: int | None = None) -> float:
    """Learning-rate multiplier at `step`; the official policy follows `epoch`, the data epoch
    the step's batch comes from, and needs it."""
    o, total = cfg.optim, cfg.train.max_steps
    if o.lr_policy == "official":
        if epoch is None:
            raise ValueError("optim.lr_policy=official follows the data epoch: pass epoch=")
        return official_factor(epoch, o.n_epochs, o.n_epochs_decay)
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


def official_schedule_notice(cfg, batches_per_epoch: int) -> str | None:
    """With lr_policy=official, a note when train.max_steps does not end where the official
    schedule does (its n_epochs + n_epochs_decay epochs of this data)."""
    o = cfg.optim
    if o.lr_policy != "official":
        return None
    steps = (o.n_epochs + o.n_epochs_decay) * batches_per_epoch
    if steps == cfg.train.max_steps:
        return None
    return (f"optim.lr_policy=official spans optim.n_epochs + optim.n_epochs_decay = {o.n_epochs + o.n_epochs_decay} "
            f"epochs = {steps} steps of {batches_per_epoch} batches, but train.max_steps={cfg.train.max_steps}"
            + ("; the lr stays at its last value after that" if cfg.train.max_steps > steps else
               "; the run ends before the decay does"))
