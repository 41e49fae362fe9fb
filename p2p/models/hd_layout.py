"""The architecture of a pix2pixHD generator state dict (its `latest_net_G.pth`, or a bare p2p
state dict of a `global` / `local` generator), read off its tensors. The keys are pix2pixHD's own
(`p2p.models.pix2pixhd` builds its modules under the same names), so loading needs no renaming.

What tells the layouts apart:
- LocalEnhancer: `model1_1.*` / `model1_2.*` keys beside the truncated global generator `model.*`.
- GlobalGenerator: the official pix2pix ResnetGenerator's layout (7x7 conv at `model.1`, stride-2
  convs, residual blocks under `conv_block`), without dropout (its blocks' second conv sits at
  `conv_block.5`), and either a number of stride-2 convs other than 2 or biases on every conv in
  front of a batch norm (pix2pix drops them). With two downsamplings and instance norm the two
  networks are the same computation, and the file loads as the ResnetGenerator.
Instance norm and no norm have no tensors: such files load with instance norm, pix2pixHD's default.
"""

from __future__ import annotations

import torch

from p2p.errors import WeightsError


def _convs(state: dict, prefix: str) -> list[int]:
    """Indices i of 4-d `<prefix>.<i>.weight` tensors (convs and transposed convs)."""
    return sorted(int(k.split(".")[1]) for k, v in state.items()
                  if k.startswith(prefix + ".") and k.count(".") == 2 and k.endswith(".weight")
                  and isinstance(v, torch.Tensor) and v.dim() == 4)


def _blocks(state: dict, prefix: str) -> list[int]:
    return sorted({int(k.split(".")[1]) for k in state if k.startswith(prefix + ".") and ".conv_block." in k})


def _norm(state: dict, key: str) -> str:
    return "batch" if key in state else "instance"


def is_local_layout(state: dict) -> bool:
    return "model1_1.1.weight" in state and "model1_2.0.conv_block.1.weight" in state


def is_global_layout(state: dict) -> bool:
    w = state.get("model.1.weight")
    if not (isinstance(w, torch.Tensor) and w.dim() == 4 and tuple(w.shape[-2:]) == (7, 7)):
        return False
    blocks = _blocks(state, "model")
    if not blocks or f"model.{blocks[0]}.conv_block.6.weight" in state and \
            f"model.{blocks[0]}.conv_block.5.weight" not in state:
        return False  # no residual blocks, or dropout in them: not pix2pixHD's
    downs = [i for i in _convs(state, "model") if 1 < i < blocks[0]]
    biased_batch_norm = "model.2.weight" in state and "model.1.bias" in state and \
        all(f"model.{i}.bias" in state for i in downs)
    return len(downs) != 2 or biased_batch_norm


def global_arch_of(state: dict, dropout: bool = False):
    """GeneratorArch of a GlobalGenerator state dict, or None when it is not one (it has no
    dropout, whatever `dropout` says)."""
    from p2p.models.arch import hd_arch

    if is_local_layout(state) or not is_global_layout(state):
        return None
    blocks = _blocks(state, "model")
    convs = _convs(state, "model")
    downs = [i for i in convs if 1 < i < blocks[0]]
    ups = [i for i in convs if i > blocks[-1]]
    if len(ups) != len(downs) + 1:
        raise WeightsError(f"a pix2pixHD GlobalGenerator with {len(downs)} downsamplings but {len(ups) - 1} "
                           f"upsamplings: not a layout pix2pixHD builds")
    stem, head = state["model.1.weight"], state[f"model.{ups[-1]}.weight"]
    return hd_arch("global", stem.shape[1], head.shape[0], stem.shape[0], len(downs), len(blocks), 0, 0,
                   _norm(state, "model.2.weight"))


def local_arch_of(state: dict, dropout: bool = False):
    """GeneratorArch of a LocalEnhancer state dict, or None when it is not one."""
    from p2p.models.arch import hd_arch

    if not is_local_layout(state):
        return None
    n_local = 0
    while f"model{n_local + 1}_1.1.weight" in state:
        n_local += 1
    blocks = _blocks(state, "model")
    if not blocks:
        raise WeightsError("a pix2pixHD LocalEnhancer without residual blocks in its global part (model.<i>."
                           "conv_block.*): not a layout pix2pixHD builds")
    downs = [i for i in _convs(state, "model") if 1 < i < blocks[0]]
    finest = state[f"model{n_local}_1.1.weight"]
    head = state[f"model{n_local}_2.{max(_convs(state, f'model{n_local}_2'))}.weight"]
    return hd_arch("local", finest.shape[1], head.shape[0], finest.shape[0], len(downs), len(blocks), n_local,
                   len(_blocks(state, "model1_2")), _norm(state, "model.2.weight"))
