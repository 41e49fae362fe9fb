"""The training payload of a checkpoint, checked before a resume uses any of it.

The checksum (p2p.checkpoint_file) proves a file is what was saved, not that what was saved is
sound: a file re-sealed by hand (or by another program) can hold `step: 'abc'`, a tensor of
another shape or optimizer moments that fit no parameter, each of which would surface deep in a
resume as a traceback, or not at all (a buffer that broadcasts). `check_training_payload` checks
every field a resume reads, its type, range and, for tensors, the shape the recorded
architecture gives (built on the meta device: nothing is allocated), and raises one
CheckpointError naming the first field that is wrong; p2p.train.checkpoint then treats the
file as unreadable, like a corrupt one.
"""

from __future__ import annotations

import math
from numbers import Real

import torch

from p2p.config.quoting import shown
from p2p.config.section import MAX_COUNT
from p2p.errors import CheckpointError
from p2p.models.arch import DiscriminatorArch, GeneratorArch, build_discriminator, build_generator
from p2p.models.loading import arch_from
from p2p.weights_check import all_finite, check_finite, check_fits

MAX_WORLD = 1_000_000


class _Bad(Exception):
    pass


def _count(value, what: str, lo: int = 0, hi: int = MAX_COUNT) -> None:
    if not isinstance(value, int) or isinstance(value, bool) or not lo <= value <= hi:
        raise _Bad(f"{what}={shown(value, 40)} is not a whole number in {lo}..{hi}")


def _real(value, what: str, optional: bool = False) -> None:
    if optional and value is None:
        return
    if isinstance(value, torch.Tensor) and value.numel() == 1:
        value = float(value)
    if not isinstance(value, Real) or isinstance(value, bool) or not math.isfinite(value):
        raise _Bad(f"{what}={shown(value, 40)} is not a finite number")


def _mapping(value, what: str) -> dict:
    if not isinstance(value, dict):
        raise _Bad(f"{what} is a {type(value).__name__}, not a mapping")
    return value


def _state_dict(net: torch.nn.Module, saved, what: str) -> None:
    """`saved` holds exactly `net`'s tensors, each of its shape and finite."""
    saved = _mapping(saved, what)
    names = net.state_dict()
    missing = [k for k in names if k not in saved]
    unexpected = [str(k)[:60] for k in saved if k not in names]
    if missing or unexpected:
        raise _Bad(f"{what} does not fit its arch: missing {missing[:3]}, unexpected {unexpected[:3]}")
    try:
        check_fits(net, saved, what)
        check_finite(saved, what)
    except CheckpointError as e:
        raise _Bad(str(e)) from None


def _buffers(net: torch.nn.Module, saved, what: str) -> None:
    """A rank's own BatchNorm statistics (p2p.train.wrap.local_buffers): a subset of `net`'s."""
    buffers = dict(net.named_buffers())
    for k, v in _mapping(saved, what).items():
        if k not in buffers or not isinstance(v, torch.Tensor) or v.shape != buffers[k].shape:
            raise _Bad(f"{what}: {str(k)[:60]!r} is no buffer of its arch or has another shape")


def _optimizer(net: torch.nn.Module, saved, what: str) -> None:
    """An Adam state_dict for `net`'s parameters, in their order: group sizes that add up to the
    parameters, and moments of each parameter's shape."""
    saved = _mapping(saved, what)
    groups, state = saved.get("param_groups"), _mapping(saved.get("state"), f"{what}.state")
    if not isinstance(groups, list) or not all(isinstance(g, dict) and isinstance(g.get("params"), list)
                                               for g in groups):
        raise _Bad(f"{what}.param_groups is not a list of parameter groups")
    ids = [i for g in groups for i in g["params"]]
    params = list(net.parameters())
    if len(ids) != len(params) or len(set(map(repr, ids))) != len(ids):
        raise _Bad(f"{what} holds {len(ids)} parameter ids for the {len(params)} parameters of its arch")
    for g in groups:
        for key in ("lr", "eps", "weight_decay"):
            if key in g:
                _real(g[key], f"{what}.param_groups.{key}")
        betas = g.get("betas", (0.5, 0.999))
        if not isinstance(betas, (list, tuple)) or len(betas) != 2:
            raise _Bad(f"{what}.param_groups.betas is not a pair")
        for b in betas:
            _real(b, f"{what}.param_groups.betas")
    shape_of = dict(zip(ids, (p.shape for p in params)))
    for pid, moments in state.items():
        if pid not in shape_of:
            raise _Bad(f"{what}.state has an entry for {str(pid)[:20]!r}, no parameter of its groups")
        for key, t in _mapping(moments, f"{what}.state[{pid}]").items():
            if key == "step":
                _real(t, f"{what}.state[{pid}].step")
            elif not isinstance(t, torch.Tensor) or t.shape != shape_of[pid] or not all_finite(t):
                raise _Bad(f"{what}.state[{pid}].{str(key)[:20]} is not a finite tensor of its parameter's shape "
                           f"{list(shape_of[pid])}")


def _rng(saved, what: str) -> None:
    """One rank's RNG streams as p2p.train.checkpoint.capture_rng writes them."""
    saved = _mapping(saved, what)
    py, np_state = _mapping(saved.get("python"), f"{what}.python"), _mapping(saved.get("numpy"), f"{what}.numpy")
    state = py.get("state")
    if not isinstance(state, torch.Tensor) or state.shape != (625,) or not isinstance(py.get("version"), int):
        raise _Bad(f"{what}.python is not Python's Mersenne Twister state")
    keys = np_state.get("keys")
    if not isinstance(keys, torch.Tensor) or keys.shape != (624,):
        raise _Bad(f"{what}.numpy is not numpy's Mersenne Twister state")
    _count(np_state.get("pos"), f"{what}.numpy.pos", 0, 624)
    _count(np_state.get("has_gauss"), f"{what}.numpy.has_gauss", 0, 1)
    _real(np_state.get("gauss"), f"{what}.numpy.gauss")
    _real(py.get("gauss"), f"{what}.python.gauss", optional=True)
    cuda = saved.get("cuda", [])
    if not isinstance(cuda, list) or not all(isinstance(t, torch.Tensor) and t.dtype == torch.uint8 for t in cuda):
        raise _Bad(f"{what}.cuda is not a list of CUDA generator states")
    torch_state = saved.get("torch")
    expected = torch.get_rng_state()
    if not isinstance(torch_state, torch.Tensor) or torch_state.dtype != expected.dtype \
            or torch_state.shape != expected.shape:
        raise _Bad(f"{what}.torch is not torch's CPU generator state")


def check_training_payload(payload: dict, path) -> None:
    """Raise CheckpointError ("<path> holds ...: <field> ...") unless every field a resume reads
    is sound (see the module docstring)."""
    try:
        _check(payload)
    except (_Bad, CheckpointError) as e:  # CheckpointError: an arch out of bounds (p2p.models.loading)
        raise CheckpointError(f"{path} holds an unusable training payload: {e}", str(path)) from None
    except (TypeError, ValueError, KeyError, RuntimeError) as e:  # an arch that builds no network
        raise CheckpointError(f"{path} holds an unusable training payload: {type(e).__name__}: "
                              f"{(str(e).splitlines() or [''])[0][:160]}", str(path)) from None


def _check(payload: dict) -> None:
    for key in ("step", "epoch", "batch_in_epoch"):
        _count(payload[key], key)
    _count(payload["batch_size"], "batch_size", 1)
    if "images_in_epoch" in payload:
        _count(payload["images_in_epoch"], "images_in_epoch")
    if "world_size" in payload:
        _count(payload["world_size"], "world_size", 1, MAX_WORLD)
    _real(payload.get("best"), "best", optional=True)
    if "lr_factor" in payload:
        _real(payload["lr_factor"], "lr_factor")
    if not isinstance(payload.get("best_metric", "psnr"), str):
        raise _Bad("best_metric is not a name")
    history = payload.get("epoch_history", [])
    if not isinstance(history, list) or len(history) > 10_000:
        raise _Bad("epoch_history is not a list of (world size, batch size, batches)")
    for entry in history:
        if not isinstance(entry, (list, tuple)) or len(entry) != 3:
            raise _Bad("epoch_history is not a list of (world size, batch size, batches)")
        for value in entry:
            _count(value, "epoch_history entry")
    for key in ("config", "scaler_g", "scaler_d"):
        if payload.get(key) is not None:
            _mapping(payload[key], key)
    arch = _mapping(payload["arch"], "arch")
    with torch.device("meta"):  # the skeletons allocate nothing
        G = build_generator(arch_from(GeneratorArch, arch.get("generator")))
        D = build_discriminator(arch_from(DiscriminatorArch, arch.get("discriminator")))
    _state_dict(G, payload["generator"], "generator")
    _state_dict(D, payload["discriminator"], "discriminator")
    if payload.get("generator_ema") is not None:
        _state_dict(G, payload["generator_ema"], "generator_ema")
    _optimizer(G, payload["opt_g"], "opt_g")
    _optimizer(D, payload["opt_d"], "opt_d")
    rngs, local = payload.get("rng") or [], payload.get("rank_buffers") or []
    if not isinstance(rngs, list) or not isinstance(local, list) or len(rngs) > MAX_WORLD:
        raise _Bad("rng and rank_buffers are not lists, one entry per rank")
    for i, r in enumerate(rngs):
        _rng(r, f"rng[{i}]")
    for i, b in enumerate(local):
        b = _mapping(b, f"rank_buffers[{i}]")
        _buffers(G, b.get("generator"), f"rank_buffers[{i}].generator")
        _buffers(D, b.get("discriminator"), f"rank_buffers[{i}].discriminator")
