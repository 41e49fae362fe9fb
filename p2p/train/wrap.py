"""The one place where plain models become training models: device, SyncBatchNorm,
channels_last, DDP (through Accelerate), torch.compile. Models never do any of this themselves.

GPU-only speed-ups degrade to eager on CPU with one notice each, so one config runs anywhere.
"""

from __future__ import annotations

import contextlib

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


def uses_channels_last(cfg, device: torch.device) -> bool:
    """train.channels_last means "on GPU": on a CPU it is slower or equal (benchmarks/RESULTS.md)."""
    return device.type == "cuda" and cfg.train.channels_last


def uses_compile(cfg, device: torch.device) -> bool:
    # activation checkpointing restores batch-norm statistics in its recompute, which dynamo does not trace
    return device.type == "cuda" and cfg.train.compile and cfg.train.activation_checkpointing == "none"


def uses_sync_batchnorm(cfg, device: torch.device, world: int) -> bool | None:
    """None when model.norm is not syncbatch; else whether SyncBatchNorm really runs."""
    if cfg.model.norm != "syncbatch":
        return None
    return world > 1 and device.type == "cuda"


def wrap_models(G: nn.Module, D: nn.Module, cfg, accel, notice,
                counters: dict | None = None) -> tuple[nn.Module, nn.Module, nn.Module]:
    """-> (G for training, D for its own update, D without DDP for the frozen-critic pass).
    With torch.compile, `counters` gets each network's GraphCounter ("G"; "D" counts both of
    D's compiled forms), which says whether that network really compiled."""
    device = accel.device
    if uses_sync_batchnorm(cfg, device, accel.num_processes):
        G = nn.SyncBatchNorm.convert_sync_batchnorm(G)
        D = nn.SyncBatchNorm.convert_sync_batchnorm(D)
    elif cfg.model.norm == "syncbatch" and accel.num_processes > 1:
        notice("model.norm=syncbatch needs CUDA (SyncBatchNorm has no CPU kernel): using per-rank "
               "batch norm with running stats averaged at checkpoints")
    G, D = G.to(device), D.to(device)
    if cfg.train.activation_checkpointing != "none":
        from p2p.train.recompute import apply_activation_checkpointing

        apply_activation_checkpointing(G, D, cfg.train.activation_checkpointing)
    if uses_channels_last(cfg, device):
        G, D = G.to(memory_format=torch.channels_last), D.to(memory_format=torch.channels_last)
    G, D = accel.prepare(G, D)
    D_frozen = unwrap(D)
    if uses_compile(cfg, device):
        from p2p.train.compiled import GraphCounter

        g, d = GraphCounter("G"), GraphCounter("D")
        G, D, D_frozen = torch.compile(G, backend=g), torch.compile(D, backend=d), torch.compile(D_frozen, backend=d)
        if counters is not None:
            counters.update(G=g, D=d)
    elif cfg.train.compile and device.type == "cuda":
        notice(f"train.compile=true: not with train.activation_checkpointing={cfg.train.activation_checkpointing} "
               f"(its recompute is not traced); running eager")
    elif cfg.train.compile:
        notice("train.compile=true: torch.compile is used on GPU only; running eager on CPU")
    return G, D, D_frozen


def local_buffers(net: nn.Module) -> dict[str, torch.Tensor]:
    """This rank's floating-point buffers (BatchNorm running stats), copied to the CPU."""
    return {k: b.detach().cpu().clone() for k, b in unwrap(net).named_buffers() if b.is_floating_point()}


def restore_buffers(net: nn.Module, saved: dict[str, torch.Tensor]) -> None:
    buffers = dict(unwrap(net).named_buffers())
    for k, v in saved.items():
        buffers[k].copy_(v)


@contextlib.contextmanager
def averaged_buffers(accel, *nets: nn.Module):
    """Every rank's BatchNorm running stats replaced by their mean over ranks while the block runs
    (validation, checkpoints), then each rank's own stats put back. DDP here does not broadcast
    buffers (see p2p.dist.start), so ranks drift apart; averaging for a moment instead of for
    good keeps the training itself independent of when it was validated or saved, which exact
    resume relies on. Collective: every rank must enter it."""
    bufs = [b for n in nets for b in unwrap(n).buffers() if b.is_floating_point()]
    if accel.num_processes == 1 or not bufs:
        yield
        return
    local = [b.clone() for b in bufs]
    for b in bufs:
        torch.distributed.all_reduce(b, op=torch.distributed.ReduceOp.SUM)
        b.div_(accel.num_processes)
    try:
        yield
    finally:
        for b, mine in zip(bufs, local):
            b.copy_(mine)


def make_optimizer(params, cfg, device: torch.device, capturable: bool = False, notice=None) -> torch.optim.Adam:
    """Adam as `optim.impl` asks: `fused` (one kernel; foreach, with a notice, where this PyTorch
    has no fused Adam for the device), `foreach` (multi-tensor), or `plain`: `torch.optim.Adam`
    with nothing chosen, i.e. PyTorch's own default, which is what the official code runs (on CPU
    the per-tensor loop), so the step is bit-exact with it there."""
    o = cfg.optim
    kw = dict(lr=o.lr, betas=(o.beta1, o.beta2))
    if capturable:  # CUDA graphs: state and lr live on the device, no host reads in step()
        return torch.optim.Adam(params, lr=torch.tensor(o.lr, device=device), betas=(o.beta1, o.beta2),
                                capturable=True, foreach=True)
    if o.impl == "plain":
        return torch.optim.Adam(params, **kw)
    if o.impl == "foreach":
        return torch.optim.Adam(params, foreach=True, **kw)
    params = list(params)
    try:
        return torch.optim.Adam(params, fused=True, **kw)
    except (RuntimeError, TypeError) as e:
        if notice is not None:
            notice(f"fused Adam is not available on {device.type} in this PyTorch ({str(e).splitlines()[0]}); "
                   f"using the foreach kernel")
        return torch.optim.Adam(params, foreach=True, **kw)
