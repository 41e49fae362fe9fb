"""pix2pixHD's coarse-to-fine schedule for a `local` run: start its global part from a trained
global generator (`model.init_global`), train the local enhancers alone for the first
`train.fix_global_steps` steps, then everything together.

Freezing drops the global part's gradients after the backward pass (its parameters keep
`requires_grad`, so DDP's buckets, and the all-reduce of every step, stay as they were built);
Adam skips a parameter without a gradient, so the frozen weights, and their optimizer state, do not
change. When they thaw, Adam starts on them from zero moments, as pix2pixHD's fresh optimizer
does. Whether a step is frozen depends only on the step number, so a resumed run freezes exactly
the steps the uninterrupted run would.
"""

from __future__ import annotations

import os

import torch
from torch import nn

from p2p.errors import UsageError
from p2p.models.pix2pixhd import GlobalGenerator, LocalEnhancer
from p2p.models.resnet import ResnetGenerator


def frozen_parameters(G: nn.Module, cfg, step: int) -> tuple[torch.Tensor, ...]:
    """The parameters whose gradients step `step` (0-based) drops: the global part of a local
    enhancer while step < train.fix_global_steps; none otherwise."""
    if step >= cfg.train.fix_global_steps:
        return ()
    from p2p.train.wrap import unwrap

    net = unwrap(G)
    if not isinstance(net, LocalEnhancer):
        return ()
    return tuple(net.global_part.parameters())


def start_global_part(G: nn.Module, path: str | os.PathLike) -> None:
    """Copy a trained global generator (a p2p `global` checkpoint or pix2pixHD's global
    latest_net_G.pth) into the global part of the local enhancer `G`, all but its last three
    layers (the 7x7 head the enhancers replace). A file that is no global generator, or one whose
    widths do not fit, is a UsageError, one line."""
    from p2p.models.loading import load_generator

    if not isinstance(G, LocalEnhancer):
        raise UsageError(f"model.init_global={os.fspath(path)!r}: only a local generator has a global part")
    source = load_generator(path, weights="raw")
    # with two downsamplings and instance norm a global generator's file loads as the (same) ResnetGenerator
    same_layout = isinstance(source, ResnetGenerator) and not any(isinstance(m, nn.Dropout) for m in source.modules())
    if not (isinstance(source, GlobalGenerator) or same_layout):
        raise UsageError(f"model.init_global={os.fspath(path)!r}: holds a {type(source).__name__}, not a global "
                         f"generator (train one with model.generator=global first)")
    keep = len(source.model) - 3
    state = {k: v for k, v in source.model.state_dict().items() if int(k.split(".")[0]) < keep}
    theirs = {k: tuple(v.shape) for k, v in state.items()}
    ours = {k: tuple(v.shape) for k, v in G.global_part.state_dict().items()}
    bad = sorted(set(theirs) ^ set(ours)) or [k for k in ours if theirs[k] != ours[k]]
    if bad:
        k = bad[0]
        raise UsageError(f"model.init_global={os.fspath(path)!r}: its global generator does not fit this run's "
                         f"(at model.{k}: {theirs.get(k, 'missing')} there, {ours.get(k, 'missing')} here); the "
                         f"global run needs ngf = 2**model.n_local_enhancers x model.ngf and the same "
                         f"n_downsample_global, n_blocks_global, norm and channels")
    with torch.no_grad():
        G.global_part.load_state_dict(state)
