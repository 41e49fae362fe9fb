"""State dicts of the official PyTorch pix2pix (junyanz/pytorch-CycleGAN-and-pix2pix) in and out.

The official `UnetGenerator` nests one `UnetSkipConnectionBlock` per level, each a Sequential
named `model`. The next level sits at index 1 of the outermost block (after its conv) and at
index 3 of a middle block (after LeakyReLU, conv, norm), so level k's layers live under
`model.model.` + `1.model.` (k >= 1) + `3.model.` * (k - 1) + `<i>`; which <i> holds which
layer depends on whether the level is the outermost, a middle or the innermost block. `p2p.models.unet` stores
the same tensors flat as `down.<k>.conv|norm` and `up.<k>.conv|norm`. The official
`ResnetGenerator` and the discriminators have p2p's layout already (`p2p.models.resnet`,
`p2p.models.patchgan`), so only the U-Net needs renaming. `unet_arch_of` and `resnet_arch_of`
read the architecture off the tensors (the `layout` of their specs in p2p.specs.generators).
"""

from __future__ import annotations

import torch

from p2p.errors import WeightsError


def _layer_slots(k: int, inner: int) -> dict[int, str]:
    """Official sequential index -> p2p layer name, for level k of a U-Net with innermost `inner`."""
    if k == 0:
        return {0: "down.0.conv", 3: "up.0.conv"}
    if k == inner:
        return {1: f"down.{k}.conv", 3: f"up.{k}.conv", 4: f"up.{k}.norm"}
    return {1: f"down.{k}.conv", 2: f"down.{k}.norm", 5: f"up.{k}.conv", 6: f"up.{k}.norm"}


def is_official_generator(state: dict) -> bool:
    return "model.model.0.weight" in state


def unet_from_official(state: dict) -> dict[str, torch.Tensor] | None:
    """An official UnetGenerator state dict in p2p's names, or None when it is not one."""
    return generator_from_official(state) if is_official_generator(state) else None


def norm_of(state: dict, norm_weight: str, bias_key: str) -> str:
    """batch when the norm has (affine) weights; the official InstanceNorm has none, though files
    from before PyTorch 0.4 carry running statistics for it (dropped on loading)."""
    if norm_weight in state:
        return "batch"
    return "instance" if bias_key in state else "none"


def unet_arch_of(state: dict, dropout: bool = True):
    """The GeneratorArch of a U-Net state dict in p2p's names, or None when it is not one. Its
    dropout has no tensors: `dropout` says (official pix2pix trains with it)."""
    from p2p.models.arch import GeneratorArch

    if "down.0.conv.weight" not in state or "up.0.conv.weight" not in state:
        return None
    num_downs = sum(1 for k in state if k.startswith("down.") and k.endswith(".conv.weight"))
    first, last = state["down.0.conv.weight"], state["up.0.conv.weight"]
    norm = norm_of(state, "up.1.norm.weight", "down.1.conv.bias")
    return GeneratorArch(first.shape[1], last.shape[1], num_downs, first.shape[0], norm, dropout)


def _level_prefix(k: int) -> str:
    return "model.model." + ("1.model." if k >= 1 else "") + "3.model." * max(0, k - 1)


def _parse(key: str) -> tuple[int, int, str]:
    """'model.model.1.model.3.model.5.weight' -> (level 2, index 5, 'weight')."""
    parts = key.split(".")
    if parts[:2] != ["model", "model"] or len(parts) < 4:
        raise WeightsError(f"unexpected key {key!r} in an official U-Net state dict")
    level, pos = 0, 2
    while len(parts) - pos > 2:  # more than "<index>.<field>" left: descend one level
        if parts[pos] != ("1" if level == 0 else "3") or parts[pos + 1] != "model":
            raise WeightsError(f"unexpected key {key!r} in an official U-Net state dict")
        level, pos = level + 1, pos + 2
    return level, int(parts[pos]), parts[pos + 1]


def official_generator_depth(state: dict) -> int:
    return max(_parse(k)[0] for k in state) + 1


def generator_from_official(state: dict) -> dict[str, torch.Tensor]:
    """Rename an official UnetGenerator state dict to p2p's `UNetGenerator` names."""
    inner = official_generator_depth(state) - 1
    out = {}
    for key, value in state.items():
        k, index, field = _parse(key)
        slot = _layer_slots(k, inner).get(index)
        if slot is None:
            raise WeightsError(f"unexpected layer {key!r} at level {k} of an official U-Net")
        out[f"{slot}.{field}"] = value
    return out


def generator_to_official(state: dict) -> dict[str, torch.Tensor]:
    """Inverse of `generator_from_official`: lets official code load p2p weights. A ResNet's
    state dict is in the official layout already and comes back as it is."""
    if not any(k.startswith("down.") for k in state):
        return dict(state)
    inner = max(int(k.split(".")[1]) for k in state if k.startswith("down."))
    names = {}
    for k in range(inner + 1):
        for idx, slot in _layer_slots(k, inner).items():
            names[slot] = f"{_level_prefix(k)}{idx}"
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



# --------------------------------------------------------------------------- ResnetGenerator


def is_resnet_layout(state: dict) -> bool:
    """The official ResnetGenerator's (and p2p's) first conv: `model.1`, 7x7, after a reflection pad."""
    w = state.get("model.1.weight")
    return isinstance(w, torch.Tensor) and w.dim() == 4 and tuple(w.shape[-2:]) == (7, 7)


def _top_index(key: str) -> int:
    return int(key.split(".")[1])


def resnet_arch_of(state: dict, dropout: bool = True):
    """Channels, width, blocks, dropout and norm of a ResnetGenerator state dict in the official
    layout: model.1 the 7x7 stem, stride-2 convs up to the first residual block, the blocks'
    second conv at `conv_block.6` (not `.5`) when they have dropout, the last conv's output the
    image channels. None when it is not that layout, or pix2pixHD's (`p2p.models.hd_layout`);
    anything else that starts with a 7x7 conv is refused in one line. Its dropout shows in its
    key names, so `dropout` is not needed."""
    from p2p.models.arch import resnet_arch
    from p2p.models.hd_layout import is_global_layout, is_local_layout
    from p2p.models.resnet import DOWNSAMPLINGS

    if not is_resnet_layout(state) or is_local_layout(state) or is_global_layout(state):
        return None

    blocks = sorted({_top_index(k) for k in state if ".conv_block." in k})
    if not blocks:
        raise WeightsError("a generator that starts like a ResnetGenerator (7x7 conv at model.1) but has no "
                           "residual blocks (model.<i>.conv_block.*): not a supported architecture")
    convs = sorted(_top_index(k) for k, v in state.items() if k.startswith("model.") and k.count(".") == 2
                   and k.endswith(".weight") and v.dim() == 4)
    downs = [i for i in convs if 1 < i < blocks[0]]
    if len(downs) != DOWNSAMPLINGS:
        raise WeightsError(f"a ResNet generator with {len(downs)} stride-2 downsamplings before its residual "
                           f"blocks and dropout in them: neither the official ResnetGenerator (resnet_9blocks / "
                           f"resnet_6blocks: {DOWNSAMPLINGS}) nor pix2pixHD's GlobalGenerator (no dropout)")
    stem, head = state["model.1.weight"], state[f"model.{convs[-1]}.weight"]
    if "model.2.weight" in state:  # affine BatchNorm; the official InstanceNorm has no weights
        norm = "batch"
    else:
        norm = "instance" if "model.1.bias" in state else "none"
    # with dropout at index 4 the second conv moves from conv_block.5 to .6 (and .5 is a pad);
    # a batch norm's weight sits at .6 without dropout, so look for the conv at .5
    dropout = f"model.{blocks[0]}.conv_block.5.weight" not in state
    return resnet_arch(stem.shape[1], head.shape[0], len(blocks), stem.shape[0], norm, dropout)
