"""State dicts of the official PyTorch pix2pix (junyanz/pytorch-CycleGAN-and-pix2pix) in and out.

The official `UnetGenerator` nests one `UnetSkipConnectionBlock` per level, so level k's layers
live under `model.` + `model.1.` * k + `model.<i>`; which <i> holds which layer depends on
whether the level is the outermost, a middle or the innermost block. `p2p.models.unet` stores
the same tensors flat as `down.<k>.conv|norm` and `up.<k>.conv|norm`. The discriminators use
the official layout already, so only the generator needs renaming.
"""

from __future__ import annotations

import re

import torch

_OFFICIAL_G = re.compile(r"^model\.((?:model\.1\.)*)model\.(\d+)\.(\w+)$")


def _layer_slots(k: int, inner: int) -> dict[int, str]:
    """Official sequential index -> p2p layer name, for level k of a U-Net with innermost `inner`."""
    if k == 0:
        return {0: "down.0.conv", 3: "up.0.conv"}
    if k == inner:
        return {1: f"down.{k}.conv", 3: f"up.{k}.conv", 4: f"up.{k}.norm"}
    return {1: f"down.{k}.conv", 2: f"down.{k}.norm", 5: f"up.{k}.conv", 6: f"up.{k}.norm"}


def is_official_generator(state: dict) -> bool:
    return "model.model.0.weight" in state


def official_generator_depth(state: dict) -> int:
    levels = {len(m.group(1)) // len("model.1.") for m in map(_OFFICIAL_G.match, state) if m}
    return max(levels) + 1


def generator_from_official(state: dict) -> dict[str, torch.Tensor]:
    """Rename an official UnetGenerator state dict to p2p's `UNetGenerator` names."""
    inner = official_generator_depth(state) - 1
    out = {}
    for key, value in state.items():
        m = _OFFICIAL_G.match(key)
        if not m:
            raise ValueError(f"unexpected key {key!r} in an official U-Net state dict")
        k = len(m.group(1)) // len("model.1.")
        slot = _layer_slots(k, inner).get(int(m.group(2)))
        if slot is None:
            raise ValueError(f"unexpected layer {key!r} at level {k} of an official U-Net")
        out[f"{slot}.{m.group(3)}"] = value
    return out


def generator_to_official(state: dict) -> dict[str, torch.Tensor]:
    """Inverse of `generator_from_official`: lets official code load p2p weights."""
    inner = max(int(k.split(".")[1]) for k in state if k.startswith("down."))
    names = {}
    for k in range(inner + 1):
        prefix = "model." + "model.1." * k + "model."
        for idx, slot in _layer_slots(k, inner).items():
            names[slot] = f"{prefix}{idx}"
    out = {}
    for key, value in state.items():
        slot, field = key.rsplit(".", 1)
        out[f"{names[slot]}.{field}"] = value
    return out


def drop_stale_norm_stats(state: dict, norm: str) -> dict:
    """Old official checkpoints carry running stats for InstanceNorm (then tracked by default);
    the official loader deletes them, and so do we."""
    if norm != "instance":
        return state
    return {k: v for k, v in state.items() if not k.endswith(("running_mean", "running_var", "num_batches_tracked"))}

