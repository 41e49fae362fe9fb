"""The one place where plain models become training models: device, SyncBatchNorm,
channels_last, DDP (through Accelerate), torch.compile. Models never do any of this themselves.

GPU-only speed-ups degrade to eager on CPU with one notice each, so one config runs anywhere.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn.parallel import DistributedDataParallel


def unwrap(net: nn.Module) -> nn.Module:
    """The plain module under DDP and torch.compile wrappers."""
    while True:
        if isinstance(net, DistributedDataParallel):
            net = net.module
        elif hasattr(net, "_orig_mod"):
            net = net._orig_mod
        else:
            return net


def wrap_models(G: nn.Module, D: nn.Module, cfg, accel, notice) -> tuple[nn.Module, nn.Module, nn.Module]:
    """-> (G for training, D for its own update, D without DDP for the frozen-critic pass)."""
    t, cuda = cfg.train, accel.device.type == "cuda"
    if cfg.model.norm == "syncbatch":
        if accel.num_processes > 1 and cuda:
            G = nn.SyncBatchNorm.convert_sync_batchnorm(G)
            D = nn.SyncBatchNorm.convert_sync_batchnorm(D)
        elif accel.num_processes > 1:
            notice("model.norm=syncbatch needs CUDA (SyncBatchNorm has no CPU kernel): using per-rank "
                   "batch norm with running stats averaged at checkpoints")
    G, D = G.to(accel.device), D.to(accel.device)
    if cuda and t.channels_last:
        G, D = G.to(memory_format=torch.channels_last), D.to(memory_format=torch.channels_last)
    G, D = accel.prepare(G, D)
    D_plain = unwrap(D)
    if t.compile:
        if cuda:
            G, D, D_plain = torch.compile(G), torch.compile(D), torch.compile(D_plain)
        else:
            notice("train.compile=true: torch.compile is used on GPU only; running eager on CPU")
    return G, D, D_plain


def average_buffers(net: nn.Module, accel) -> None:
    """Make BatchNorm running stats identical on every rank (their mean), before they are
    validated with or saved; DDP here does not broadcast them (see p2p.dist.start)."""
    if accel.num_processes == 1:
        return
    for buf in unwrap(net).buffers():
        if buf.is_floating_point():
            torch.distributed.all_reduce(buf, op=torch.distributed.ReduceOp.SUM)
            buf.div_(accel.num_processes)


def make_optimizer(params, cfg, device: torch.device, capturable: bool = False) -> torch.optim.Adam:
    """Adam with the fused kernel where it exists (CUDA, and CPU in recent PyTorch) else foreach."""
    o = cfg.optim
    kw = dict(lr=o.lr, betas=(o.beta1, o.beta2))
    if capturable:  # CUDA graphs: state and lr live on the device, no host reads in step()
        return torch.optim.Adam(params, lr=torch.tensor(o.lr, device=device), betas=(o.beta1, o.beta2),
                                capturable=True, foreach=True)
    try:
        return torch.optim.Adam(params, fused=True, **kw)
    except (RuntimeError, TypeError):
        return torch.optim.Adam(params, foreach=True, **kw)
