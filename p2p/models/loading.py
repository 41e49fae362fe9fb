"""Ready networks from files: p2p checkpoints, bare p2p state dicts and the official pix2pix
`latest_net_G.pth` / `latest_net_D.pth` (U-Net, ResnetGenerator, PatchGAN, PixelGAN), with the
architecture read off the tensors when no `arch` is recorded. Weights that fit none of these are
a `WeightsError`: one line naming what was found (the commands exit 2 on it). A file that is
missing, truncated, corrupt (p2p checksums) or holds anything else is a `CheckpointError`, of
which WeightsError is one kind: callers catch one class. pix2pixHD's `latest_net_G.pth` of its
GlobalGenerator and LocalEnhancer load too (`p2p.models.hd_layout`).

A p2p checkpoint trained with `train.ema_decay > 0` holds two generators: the raw weights
(`generator`) and their moving average (`generator_ema`). `load_generator(..., weights=)`
picks: "auto" (the default) the EMA when there is one, "ema" insists on it, "raw" the trained
weights themselves. Everything that runs a trained generator (validation, `p2p predict`,
`p2p eval`, export) goes through this choice.
"""

from __future__ import annotations

import dataclasses
import os

import torch
from torch import nn

from p2p.checkpoint_file import read_checkpoint_file
from p2p.errors import CheckpointError, UsageError, WeightsError
from p2p.models.arch import OPTIONAL_FIELDS, DiscriminatorArch, GeneratorArch, build_discriminator, build_generator
from p2p.models.official import drop_stale_norm_stats, is_resnet_layout, norm_of
from p2p.specs import load
from p2p.specs.generators import GENERATORS
from p2p.weights_check import check_finite, check_fits

WEIGHTS = ("auto", "ema", "raw")


def read_checkpoint(path: str | os.PathLike) -> dict:
    """torch.load with weights_only=True (tensors and plain containers only, no pickled code),
    the checksum of a p2p checkpoint verified; a missing, truncated, corrupt or foreign file
    raises `p2p.errors.CheckpointError` (one line naming the file)."""
    obj = read_checkpoint_file(path)
    if not isinstance(obj, dict):
        raise WeightsError(f"{os.fspath(path)}: holds a {type(obj).__name__}, not a checkpoint or a state dict",
                           os.fspath(path))
    return obj


def _found(state: dict) -> str:
    keys = list(state)
    return f"{len(keys)} entries, e.g. {', '.join(map(repr, keys[:3]))}"


def generator_arch_of(state: dict, dropout: bool = True) -> GeneratorArch:
    """Infer the architecture of a generator state dict in p2p's names from its tensors: the
    one registered generator (p2p.specs.generators) whose layout it is. A U-Net's dropout has no
    tensors; official pix2pix trains with it, so that is the default. A ResNet's dropout shows in
    its key names."""
    for spec in GENERATORS:
        arch = load(spec.layout)(state, dropout)
        if arch is not None:
            return arch
    hint = ""
    if "model.0.weight" in state or "net.0.weight" in state or any(k.startswith("scales.") for k in state):
        hint = " (this looks like a discriminator: pass latest_net_G.pth / a p2p checkpoint)"
    raise WeightsError(f"not a generator p2p supports ({', '.join(GENERATORS.names())}: p2p's, the official "
                       f"pix2pix's or pix2pixHD's){hint}; found {_found(state)}")


def in_p2p_names(state: dict) -> dict:
    """A generator state dict in p2p's names: renamed by the spec whose official layout it is."""
    for spec in GENERATORS:
        if spec.from_official and (renamed := load(spec.from_official)(state)) is not None:
            return renamed
    return state


def discriminator_arch_of(state: dict) -> DiscriminatorArch:
    if any(k.startswith("scales.") for k in state):  # p2p's multi-scale discriminator
        num_d = 1 + max(int(k.split(".")[1]) for k in state if k.startswith("scales."))
        one = discriminator_arch_of({k.split(".", 2)[2]: v for k, v in state.items() if k.startswith("scales.0.")})
        return DiscriminatorArch(one.in_channels, one.ndf, one.n_layers, one.norm, num_d)
    if any(k.startswith(("layer0.", "scale0_layer0.")) for k in state):
        raise WeightsError("a pix2pixHD multi-scale discriminator: its per-scale networks pad by 2 and keep biases "
                           "before batch norm, which its tensors cannot tell apart from p2p's pix2pix PatchGANs, "
                           "so they would compute differently here; not loaded")
    if "net.0.weight" in state:  # PixelGAN
        w = state["net.0.weight"]
        return DiscriminatorArch(w.shape[1], w.shape[0], 0, norm_of(state, "net.3.weight", "net.2.bias"))
    if "model.0.weight" in state and not is_resnet_layout(state):
        convs = [k for k in state if k.startswith("model.") and k.endswith(".weight") and state[k].dim() == 4]
        w = state["model.0.weight"]
        norm = norm_of(state, "model.3.weight", "model.2.bias")
        return DiscriminatorArch(w.shape[1], w.shape[0], len(convs) - 2, norm)
    raise WeightsError(f"not a discriminator p2p supports (PatchGAN, PixelGAN or p2p's multi-scale one); "
                       f"found {_found(state)}")


def _strip_prefix(state: dict) -> dict:
    """Weights saved from a DDP/compiled module carry `module.` / `_orig_mod.` prefixes."""
    out = {}
    for k, v in state.items():
        for p in ("module.", "_orig_mod."):
            while k.startswith(p):
                k = k[len(p):]
        out[k] = v
    return out


# what a file's `arch` may declare (the config schema's bounds for the same sizes): building
# the network allocates it, so a hostile arch is refused before it is built
_ARCH_BOUNDS = {"in_channels": (1, 64), "out_channels": (1, 64), "num_downs": (1, 12), "ngf": (1, 4096),
                "n_blocks": (0, 64), "n_local_enhancers": (1, 4), "n_blocks_local": (0, 64), "ndf": (1, 4096),
                "n_layers": (0, 8), "num_d": (1, 6)}


def arch_from(cls, saved) -> GeneratorArch | DiscriminatorArch:
    """A recorded architecture, of a registered generator kind, its numbers within
    `_ARCH_BOUNDS` (the fields its kind does not read are 0)."""
    if not isinstance(saved, dict):
        raise WeightsError(f"its arch is a {type(saved).__name__}, not a mapping")
    if cls is GeneratorArch and saved.get("kind") not in GENERATORS:
        what = "records no generator kind" if "kind" not in saved else \
            f"declares generator kind={str(saved['kind'])[:40]!r}"
        raise WeightsError(f"its arch {what}, not one of {', '.join(GENERATORS.names())}")
    arch = cls(**saved)
    unread = set(OPTIONAL_FIELDS) - set(GENERATORS[arch.kind].fields) if cls is GeneratorArch else set()
    for key, (lo, hi) in _ARCH_BOUNDS.items():
        if key in unread:
            continue
        value = getattr(arch, key, lo)
        if not isinstance(value, int) or isinstance(value, bool) or not lo <= value <= hi:
            raise WeightsError(f"its arch declares {key}={str(value)[:40]}, outside {lo}..{hi}")
    return arch


def _load_into(build, arch, state: dict) -> nn.Module:
    """`build(arch)` with `state` loaded, each tensor checked first against a skeleton built on
    the meta device (no memory): shapes that fit, nothing missing, every value finite."""
    with torch.device("meta"):
        skeleton = build(arch)
    check_fits(skeleton, state, "state dict does not fit the inferred network")  # the caller names the file
    # Checkpoints from before PyTorch 0.4.1 lack BatchNorm's num_batches_tracked; it only feeds
    # momentum=None, which pix2pix never uses, so a missing counter is not an error.
    names = skeleton.state_dict()
    missing = [k for k in names if k not in state and not k.endswith("num_batches_tracked")]
    unexpected = [k for k in state if k not in names]
    if missing or unexpected:
        raise WeightsError(f"state dict does not fit the inferred network: missing {missing[:3]}, "
                           f"unexpected {unexpected[:3]}")
    check_finite(state, "")
    net = build(arch)
    try:
        missing, unexpected = net.load_state_dict(state, strict=False)
    except RuntimeError as e:  # shapes that do not fit: name the first tensor, in one line
        first = next((ln.strip() for ln in str(e).splitlines() if "size mismatch" in ln), str(e).splitlines()[0])
        raise WeightsError(f"state dict does not fit the inferred network: {first}") from None
    missing = [k for k in missing if not k.endswith("num_batches_tracked")]
    if missing or unexpected:
        raise WeightsError(f"state dict does not fit the inferred network: missing {missing[:3]}, "
                           f"unexpected {unexpected[:3]}")
    return net.eval()


def _is_p2p(obj) -> bool:
    return isinstance(obj, dict) and obj.get("format") == "p2p"


def select_generator_weights(obj: dict, weights: str = "auto") -> tuple[dict, str]:
    """(state dict, "ema" | "raw") of a p2p checkpoint or bare state dict, as `weights` asks."""
    if weights not in WEIGHTS:
        raise ValueError(f"weights={weights!r}: choose one of {', '.join(WEIGHTS)}")
    ema = obj.get("generator_ema") if _is_p2p(obj) else None
    if weights == "ema" and ema is None:
        raise UsageError("these weights hold no EMA generator (trained with train.ema_decay=0, or not a p2p "
                         "checkpoint); load the raw weights instead")
    if ema is not None and weights != "raw":
        return ema, "ema"
    return (obj["generator"] if _is_p2p(obj) else obj), "raw"


def _load_checked(path_or_state, name: str | None, kind: str, build) -> nn.Module:
    """`build(obj)` for a path (read and verified) or an in-memory object; whatever does not make
    a network becomes one CheckpointError (a WeightsError when the tensors fit no network p2p
    supports) naming the file, or `name` for an in-memory object."""
    is_path = isinstance(path_or_state, (str, os.PathLike))
    obj = read_checkpoint(path_or_state) if is_path else path_or_state
    what = os.fspath(path_or_state) if is_path else name
    prefix = f"{what}: " if what else ""
    try:
        if not isinstance(obj, dict):
            raise WeightsError(f"it holds a {type(obj).__name__}, not a dict of tensors")
        return build(obj)
    except WeightsError as e:
        raise WeightsError(f"{prefix}{e}", what or "") from None
    except (KeyError, ValueError, TypeError, AttributeError, IndexError, RuntimeError) as e:
        detail = (str(e).splitlines() or [""])[0]
        raise CheckpointError(f"{prefix or 'the state dict: '}not a p2p checkpoint or a pix2pix {kind} state dict "
                              f"that p2p can load ({type(e).__name__}: {detail[:200]})", what or "") from None


def load_generator(path_or_state, dropout: bool | None = None, weights: str = "auto", *,
                   name: str | None = None) -> nn.Module:
    """A ready generator (eval mode, CPU) from a p2p checkpoint, a p2p state dict or an official
    `latest_net_G.pth` (U-Net or ResnetGenerator; pix2pixHD's global or local); a model folder
    is read by p2p.model_folder.load_folder (p2p.inference.load_predictor takes either). `weights`:
    see the module docstring. Anything else raises `CheckpointError` (`name`: what to call an
    in-memory `path_or_state` in it)."""
    if weights not in WEIGHTS:
        raise ValueError(f"weights={weights!r}: choose one of {', '.join(WEIGHTS)}")
    return _load_checked(path_or_state, name, "generator", lambda obj: _generator_from(obj, dropout, weights))


def _generator_from(obj: dict, dropout: bool | None, weights: str) -> nn.Module:
    state, _ = select_generator_weights(obj, weights)
    if _is_p2p(obj):
        arch = arch_from(GeneratorArch, obj["arch"]["generator"])
    else:
        state = in_p2p_names(_strip_prefix(state))
        arch = generator_arch_of(state, True if dropout is None else dropout)
    if dropout is not None:
        arch = dataclasses.replace(arch, dropout=dropout)  # checked again: a kind without dropout stays without
    state = drop_stale_norm_stats(state, arch.norm)
    return _load_into(build_generator, arch, state)


def load_discriminator(path_or_state, *, name: str | None = None) -> nn.Module:
    """A ready discriminator from a p2p checkpoint, a state dict or an official `latest_net_D.pth`
    (anything else: `CheckpointError`, as `load_generator`)."""
    return _load_checked(path_or_state, name, "discriminator", _discriminator_from)


def _discriminator_from(obj: dict) -> nn.Module:
    if _is_p2p(obj):
        arch = arch_from(DiscriminatorArch, obj["arch"]["discriminator"])
        state = obj["discriminator"]
    else:
        state = _strip_prefix(obj)
        arch = discriminator_arch_of(state)
    state = drop_stale_norm_stats(state, arch.norm)
    return _load_into(build_discriminator, arch, state)
