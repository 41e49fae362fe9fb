"""Activation checkpointing (`train.activation_checkpointing`): the generator's blocks (U-Net
levels; in the ResNet generators each residual block and each run of layers between them) and,
with `all`, each discriminator scale keep only their input for the backward pass and run their
forward again there (torch.utils.checkpoint, non-reentrant). Peak
memory falls by the activations inside those blocks; the price is one more forward of them.

Losses and gradients are the plain step's, bit for bit on a CPU in fp32:
- dropout draws the same masks again: the RNG state of the first forward is restored for the
  recompute (`preserve_rng_state`), and the step's own RNG stream does not move;
- batch norm in training mode updates its running statistics on every forward, so a recompute
  would update them twice; the recompute restores them afterwards (`context_fn`), and its output,
  which uses the batch's own statistics, is the same.

Applied where the networks are wrapped (`p2p.train.wrap`), by replacing each chosen module's
`forward` on the instance, so state dicts, checkpoints and exports do not change. It does not
combine with the CUDA-graph step or torch.compile (a notice says which runs instead).
"""

from __future__ import annotations

import contextlib
import types

import torch
from torch import nn
from torch.utils.checkpoint import checkpoint

from p2p.models.patchgan import PatchDiscriminator, PixelDiscriminator
from p2p.models.resnet import ResnetBlock
from p2p.models.unet import DownBlock, UpBlock

GENERATOR_BLOCKS = (ResnetBlock, DownBlock, UpBlock)
DISCRIMINATOR_BLOCKS = (PatchDiscriminator, PixelDiscriminator)


@contextlib.contextmanager
def _kept_buffers(modules: list[nn.Module]):
    """Whatever the modules do to their buffers (batch norm statistics) is undone on exit."""
    saved = [(b, b.clone()) for m in modules for b in m.buffers()]
    try:
        yield
    finally:
        with torch.no_grad():
            for b, copy in saved:
                b.copy_(copy)


def _checkpointed(fn, modules: list[nn.Module], *args, **kwargs):
    return checkpoint(fn, *args, use_reentrant=False, preserve_rng_state=True,
                      context_fn=lambda: (contextlib.nullcontext(), _kept_buffers(modules)), **kwargs)


def _recomputed_forward(module: nn.Module, *args, **kwargs):
    """The module's own forward under torch.utils.checkpoint; bound to the module as its
    `forward`, so a deepcopy (the EMA's) is bound to the copy."""
    forward = type(module).forward
    if not torch.is_grad_enabled():  # nothing to keep for a backward: validation, inference
        return forward(module, *args, **kwargs)
    return _checkpointed(forward, [module], module, *args, **kwargs)


def _run_layers(x, *layers):
    for layer in layers:
        x = layer(x)
    return x


def _segmented_forward(seq: nn.Sequential, x):
    """A Sequential (the ResNet generators' `model`, the local enhancers' halves) as segments, each
    recomputed: every residual block alone, every run of layers between them together (the stem,
    the up- and downsamplings: at full resolution, where most activations are). A segment's first
    layer is never in-place, or the kept input would change under the recompute."""
    if not torch.is_grad_enabled():
        return nn.Sequential.forward(seq, x)
    for segment in seq.recompute_segments:
        x = _checkpointed(_run_layers, segment, x, *segment)
    return x


def _segments(seq: nn.Sequential, blocks: tuple[type, ...]) -> list[list[nn.Module]]:
    out: list[list[nn.Module]] = []
    for layer in seq:
        if isinstance(layer, blocks) or not out or isinstance(out[-1][-1], blocks):
            out.append([layer])
        else:
            out[-1].append(layer)
    return out


def recompute_blocks(net: nn.Module, kinds: tuple[type, ...]) -> int:
    """Make every submodule of `net` of one of `kinds` recompute in the backward pass, and the
    Sequentials directly under `net` recompute segment by segment; -> how many were changed."""
    n = 0
    for seq in net.children():
        if isinstance(seq, nn.Sequential) and "forward" not in vars(seq):
            seq.recompute_segments = _segments(seq, kinds)
            seq.forward = types.MethodType(_segmented_forward, seq)
            n += 1
    inside = {id(m) for seq in net.children() if isinstance(seq, nn.Sequential) for m in seq.modules()}
    for m in net.modules():
        if isinstance(m, kinds) and "forward" not in vars(m) and id(m) not in inside:
            m.forward = types.MethodType(_recomputed_forward, m)
            n += 1
    return n


def apply_activation_checkpointing(G: nn.Module, D: nn.Module, mode: str) -> None:
    """`mode`: none, generator or all (train.activation_checkpointing)."""
    if mode in ("generator", "all"):
        recompute_blocks(G, GENERATOR_BLOCKS)
    if mode == "all":
        for m in D.modules():
            if isinstance(m, DISCRIMINATOR_BLOCKS) and "forward" not in vars(m):
                m.forward = types.MethodType(_recomputed_forward, m)
