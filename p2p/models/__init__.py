"""Models: the U-Net generator, the PatchGAN discriminators, weight init and loading.

`build_generator` / `build_discriminator` make plain modules from an architecture dict (or the
`model` section of the config); nothing here knows about DDP, AMP or devices.
`load_generator(path)` / `load_discriminator(path)` accept a p2p checkpoint, a bare p2p state
dict or an official pix2pix `latest_net_G.pth` / `latest_net_D.pth`, infer the architecture
from the tensors, and return a ready module in eval mode. A file that is missing, truncated,
corrupt (p2p checksums) or holds anything else raises `p2p.errors.CheckpointError`, one line.
"""

from __future__ import annotations

import os
from dataclasses import asdict, dataclass

import torch
from torch import nn
from torch.nn import init

from p2p.checkpoint_file import read_checkpoint_file
from p2p.errors import CheckpointError
from p2p.models.official import drop_stale_norm_stats, generator_from_official, is_official_generator
from p2p.models.patchgan import PatchDiscriminator, PixelDiscriminator
from p2p.models.unet import UNetGenerator

__all__ = [
    "GeneratorArch", "DiscriminatorArch", "UNetGenerator", "PatchDiscriminator", "PixelDiscriminator",
    "build_generator", "build_discriminator", "init_weights", "load_generator", "load_discriminator",
    "read_checkpoint", "generator_arch_of", "discriminator_arch_of",
]


@dataclass
class GeneratorArch:
    in_channels: int
    out_channels: int
    num_downs: int = 8
    ngf: int = 64
    norm: str = "batch"
    dropout: bool = True


@dataclass
class DiscriminatorArch:
    in_channels: int
    ndf: int = 64
    n_layers: int = 3
    norm: str = "batch"


def build_generator(arch: GeneratorArch) -> UNetGenerator:
    return UNetGenerator(arch.in_channels, arch.out_channels, arch.num_downs, arch.ngf, arch.norm, arch.dropout)


def build_discriminator(arch: DiscriminatorArch) -> nn.Module:
    if arch.n_layers == 0:
        return PixelDiscriminator(arch.in_channels, arch.ndf, arch.norm)
    return PatchDiscriminator(arch.in_channels, arch.ndf, arch.n_layers, arch.norm)


def init_weights(net: nn.Module, init_type: str = "normal", gain: float = 0.02) -> nn.Module:
    """The official init: conv weights N(0, gain) (or xavier/kaiming/orthogonal), biases 0,
    BatchNorm weights N(1, gain) and biases 0. Draws from the global torch RNG in module order."""
    for m in net.modules():
        if isinstance(m, (nn.Conv2d, nn.ConvTranspose2d, nn.Linear)):
            if init_type == "normal":
                init.normal_(m.weight, 0.0, gain)
            elif init_type == "xavier":
                init.xavier_normal_(m.weight, gain=gain)
            elif init_type == "kaiming":
                init.kaiming_normal_(m.weight, a=0, mode="fan_in")
            elif init_type == "orthogonal":
                init.orthogonal_(m.weight, gain=gain)
            else:
                raise ValueError(f"unknown init_type {init_type!r}")
            if m.bias is not None:
                init.zeros_(m.bias)
        elif isinstance(m, nn.modules.batchnorm._BatchNorm) and m.affine:
            init.normal_(m.weight, 1.0, gain)
            init.zeros_(m.bias)
    return net


# --------------------------------------------------------------------------- loading


def read_checkpoint(path: str | os.PathLike) -> dict:
    """torch.load with weights_only=True (tensors and plain containers only, no pickled code),
    the checksum of a p2p checkpoint verified; a missing, truncated, corrupt or foreign file
    raises `p2p.errors.CheckpointError` (one line naming the file)."""
    return read_checkpoint_file(path)


def _norm_of(state: dict, norm_keys: tuple[str, ...], bias_key: str) -> str:
    if any(k in state for k in norm_keys):
        return "batch"
    return "instance" if bias_key in state else "none"


def generator_arch_of(state: dict, dropout: bool = True) -> GeneratorArch:
    """Infer depth, channels and norm of a p2p-named U-Net state dict from its tensors.
    Dropout has no tensors; official pix2pix trains with it, so that is the default."""
    num_downs = sum(1 for k in state if k.startswith("down.") and k.endswith(".conv.weight"))
    first, last = state["down.0.conv.weight"], state["up.0.conv.weight"]
    norm = _norm_of(state, ("up.1.norm.weight", "up.1.norm.running_mean"), "down.1.conv.bias")
    return GeneratorArch(first.shape[1], last.shape[1], num_downs, first.shape[0], norm, dropout)


def discriminator_arch_of(state: dict) -> DiscriminatorArch:
    if "net.0.weight" in state:  # PixelGAN
        w = state["net.0.weight"]
        return DiscriminatorArch(w.shape[1], w.shape[0], 0, _norm_of(state, ("net.3.weight", "net.3.running_mean"), "net.2.bias"))
    convs = [k for k in state if k.startswith("model.") and k.endswith(".weight") and state[k].dim() == 4]
    w = state["model.0.weight"]
    norm = _norm_of(state, ("model.3.weight", "model.3.running_mean"), "model.2.bias")
    return DiscriminatorArch(w.shape[1], w.shape[0], len(convs) - 2, norm)


def _strip_prefix(state: dict) -> dict:
    """Weights saved from a DDP/compiled module carry `module.` / `_orig_mod.` prefixes."""
    out = {}
    for k, v in state.items():
        for p in ("module.", "_orig_mod."):
            while k.startswith(p):
                k = k[len(p):]
        out[k] = v
    return out


def _load_into(net: nn.Module, state: dict) -> nn.Module:
    # Checkpoints from before PyTorch 0.4.1 lack BatchNorm's num_batches_tracked; it only feeds
    # momentum=None, which pix2pix never uses, so a missing counter is not an error.
    try:
        missing, unexpected = net.load_state_dict(state, strict=False)
    except RuntimeError as e:  # shapes that do not fit: name the first tensor, in one line
        first = next((ln.strip() for ln in str(e).splitlines() if "size mismatch" in ln), str(e).splitlines()[0])
        raise ValueError(f"state dict does not fit the inferred network: {first}") from None
    missing = [k for k in missing if not k.endswith("num_batches_tracked")]
    if missing or unexpected:
        raise ValueError(f"state dict does not fit the inferred network: missing {missing[:3]}, "
                         f"unexpected {unexpected[:3]}")
    return net.eval()


def _load_checked(path_or_state, name: str | None, kind: str, build):
    """`build(obj)` for a path (read and verified) or an in-memory object; whatever does not
    make a network becomes one CheckpointError naming the file."""
    is_path = isinstance(path_or_state, (str, os.PathLike))
    obj = read_checkpoint(path_or_state) if is_path else path_or_state
    what = os.fspath(path_or_state) if is_path else (name or "the state dict")
    try:
        if not isinstance(obj, dict):
            raise TypeError(f"it holds a {type(obj).__name__}, not a dict of tensors")
        return build(obj)
    except (KeyError, ValueError, TypeError, AttributeError, IndexError, RuntimeError) as e:
        detail = (str(e).splitlines() or [""])[0]
        raise CheckpointError(f"{what}: not a p2p checkpoint or a pix2pix {kind} state dict that p2p can load "
                              f"({type(e).__name__}: {detail[:200]})", str(what)) from None


def load_generator(path_or_state, dropout: bool | None = None, *, name: str | None = None) -> UNetGenerator:
    """A ready generator (eval mode, CPU) from a p2p checkpoint, a p2p state dict or an
    official `latest_net_G.pth`. Anything else raises `CheckpointError` (`name`: what to call
    an in-memory `path_or_state` in that message)."""
    return _load_checked(path_or_state, name, "generator", lambda obj: _generator_from(obj, dropout))


def _generator_from(obj: dict, dropout: bool | None) -> UNetGenerator:
    arch = None
    if obj.get("format") == "p2p":
        arch = GeneratorArch(**obj["arch"]["generator"])
        state = obj["generator"]
    else:
        state = _strip_prefix(obj)
        if is_official_generator(state):
            state = generator_from_official(state)
    if arch is None:
        arch = generator_arch_of(state, True if dropout is None else dropout)
    elif dropout is not None:
        arch.dropout = dropout
    state = drop_stale_norm_stats(state, arch.norm)
    return _load_into(build_generator(arch), state)


def load_discriminator(path_or_state, *, name: str | None = None) -> nn.Module:
    """A ready discriminator from a p2p checkpoint, a state dict or an official `latest_net_D.pth`
    (anything else: `CheckpointError`, as `load_generator`)."""
    return _load_checked(path_or_state, name, "discriminator", _discriminator_from)


def _discriminator_from(obj: dict) -> nn.Module:
    if obj.get("format") == "p2p":
        arch = DiscriminatorArch(**obj["arch"]["discriminator"])
        state = obj["discriminator"]
    else:
        state = _strip_prefix(obj)
        arch = discriminator_arch_of(state)
    state = drop_stale_norm_stats(state, arch.norm)
    return _load_into(build_discriminator(arch), state)


def arch_dict(g: GeneratorArch, d: DiscriminatorArch) -> dict:
    """What a p2p checkpoint records so `load_*` needs no config."""
    return {"generator": asdict(g), "discriminator": asdict(d)}
