"""A trained generator as a model folder, the layout of Hugging Face model repositories, which
`huggingface_hub` uploads and downloads as a plain folder (p2p itself never touches the network):

    model.safetensors   the generator's state dict: a checkpoint's EMA weights when it has them,
                        as every export (p2p.models.load_generator's default)
    config.json         what rebuilds it: `config`, a p2p config tree of the task, the
                        geometry (data.load_size, data.image_size), the network (model.*) and
                        run.seed; `geometry` and `channels`, what follows from it (for readers
                        that are not p2p; checked against it); the p2p version; `trained`, what
                        the model card says about training (informative only)
    README.md           the model card (p2p.model_card)

This module reads a folder; p2p.export writes one (`export_folder`).

Reading never unpickles anything and never sizes an allocation from the file: config.json is
bounded, parsed as JSON and validated by the training schema (p2p.config: the same bounds and
cross-checks as a training config); the network is built from it on the meta device (no memory)
for the names, shapes and dtypes its state dict must have; the safetensors header (8-byte
length, then JSON) is parsed here and checked against those (names, allowed dtypes, shapes,
offsets that tile the data exactly, to the file's last byte) before a byte of weight data is
read. Only then are the tensors read (the config's own sizes, which the file size has already
matched) and checked finite. Anything else is a `CheckpointError`: one line naming the file.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import torch

from p2p.errors import CheckpointError, UsageError

FORMAT = "p2p-model"
FORMAT_VERSION = 1
WEIGHTS_FILE, CONFIG_FILE, CARD_FILE = "model.safetensors", "config.json", "README.md"
# a generator's header is about 100 bytes per tensor, a few hundred tensors; the safetensors
# library itself allows 100 MB
MAX_HEADER_BYTES = 8 * 2**20
MAX_CONFIG_BYTES = 2**20
# safetensors dtype codes p2p reads: its own float32 and int64 (BatchNorm's counter), and the
# halves/doubles a user may have converted the floats to
DTYPES = {"F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16, "F64": torch.float64,
          "I64": torch.int64}
CONFIG_SECTIONS = {"task": None, "data": ("load_size", "image_size"),
                   "model": ("generator", "ngf", "num_downs", "n_blocks", "norm", "dropout", "n_downsample_global",
                             "n_blocks_global", "n_local_enhancers", "n_blocks_local"), "run": ("seed",)}


def is_model_folder(path) -> bool:
    """Whether `path` names a folder (every generator-reading command takes one)."""
    return isinstance(path, (str, os.PathLike)) and os.path.isdir(path)


# --------------------------------------------------------------------------- what the folder holds


def derived(cfg, arch) -> dict:
    """What follows from the config, written for readers that are not p2p (and checked on load)."""
    from p2p.geometry import training_geometry
    from p2p.tasks import build_task

    task = build_task(cfg.task)
    g = training_geometry(task, cfg.data.load_size)
    return {"geometry": {"mode": g.mode, "size": g.size, "stride": arch.stride},
            "channels": {"in": arch.in_channels, "out": arch.out_channels}}


# --------------------------------------------------------------------------- reading


def _fail(path, why: str) -> CheckpointError:
    return CheckpointError(f"{os.fspath(path)}: {why}", os.fspath(path))


def read_config(folder: str | os.PathLike):
    """(Config, GeneratorArch, the whole config.json) of a model folder, validated."""
    from p2p.config import from_tree
    from p2p.models import architectures
    from p2p.tasks import build_task

    path = Path(folder) / CONFIG_FILE
    if not (Path(folder) / WEIGHTS_FILE).is_file() or not path.is_file():
        raise _fail(folder, f"a folder, but not a p2p model folder (it needs {WEIGHTS_FILE} and {CONFIG_FILE}; "
                    f"give a checkpoint such as checkpoints/last.pt, or a folder from p2p export --format folder)")
    size = path.stat().st_size
    if size > MAX_CONFIG_BYTES:
        raise _fail(path, f"{size:,} bytes, more than the {MAX_CONFIG_BYTES:,} a model config may have")
    try:
        doc = json.loads(path.read_bytes().decode("utf-8"))
    except (UnicodeDecodeError, ValueError) as e:
        raise _fail(path, f"not valid JSON ({str(e).splitlines()[0][:120]})") from None
    if not isinstance(doc, dict) or doc.get("format") != FORMAT:
        raise _fail(path, f"not a p2p model config (\"format\" must be {FORMAT!r})")
    version = doc.get("format_version")
    if not isinstance(version, int) or isinstance(version, bool) or not 1 <= version <= FORMAT_VERSION:
        raise _fail(path, f"format_version {version!r}: this p2p reads 1..{FORMAT_VERSION} (a newer p2p wrote it?)")
    if doc.get("weights") not in ("ema", "raw"):
        raise _fail(path, f"\"weights\" {doc.get('weights')!r} must be \"ema\" or \"raw\"")
    tree = doc.get("config")
    if not isinstance(tree, dict) or set(tree) - set(CONFIG_SECTIONS):
        raise _fail(path, f"\"config\" must be a mapping of the sections {', '.join(CONFIG_SECTIONS)}")
    for name, keys in CONFIG_SECTIONS.items():
        extra = sorted(set(tree.get(name) or {}) - set(keys)) if keys and isinstance(tree.get(name), dict) else []
        if extra:
            raise _fail(path, f"config.{name}.{extra[0]} does not describe the model (keys: {', '.join(keys)})")
    try:
        cfg = from_tree(tree)  # the training schema: types, choices, bounds, image_size vs stride
        arch = architectures(cfg, build_task(cfg.task))[0]
    except (UsageError, TypeError, ValueError) as e:
        raise _fail(path, str(e).splitlines()[0] if str(e) else type(e).__name__) from None
    claimed = {k: doc.get(k) for k in ("geometry", "channels")}
    if claimed != derived(cfg, arch):
        raise _fail(path, f"its geometry/channels {json.dumps(claimed)} disagree with its config, which gives "
                    f"{json.dumps(derived(cfg, arch))}")
    return cfg, arch, doc


def expected_tensors(arch) -> dict[str, tuple[tuple[int, ...], torch.dtype]]:
    """Name -> (shape, dtype) of the state dict of the network `arch` describes, built on the meta
    device: no memory, whatever sizes the config declares."""
    from p2p.models import build_generator

    try:
        with torch.device("meta"):
            G = build_generator(arch)
    except (RuntimeError, ValueError, OverflowError) as e:  # sizes past what a tensor can index
        raise UsageError(f"the network its config describes cannot be built ({str(e).splitlines()[0][:120]})") \
            from None
    return {k: (tuple(v.shape), v.dtype) for k, v in G.state_dict().items()}


def _entries(path, header: dict, expected: dict, data_len: int) -> list[tuple[int, int, str, torch.dtype, tuple]]:
    """The checked (begin, end, name, dtype, shape) of every tensor, in file order."""
    meta = header.pop("__metadata__", {})
    if not isinstance(meta, dict) or not all(isinstance(k, str) and isinstance(v, str) for k, v in meta.items()):
        raise _fail(path, "safetensors __metadata__ must map strings to strings")
    missing, unexpected = sorted(set(expected) - set(header)), sorted(set(header) - set(expected))
    if missing or unexpected:
        raise _fail(path, f"its tensors do not fit the network config.json describes: missing {missing[:3]}, "
                    f"unexpected {unexpected[:3]}")
    entries = []
    for name, (shape, dtype) in expected.items():
        info = header[name]
        if not isinstance(info, dict) or set(info) != {"dtype", "shape", "data_offsets"}:
            raise _fail(path, f"tensor {name}: a safetensors entry has exactly dtype, shape and data_offsets")
        code, got, offsets = info["dtype"], info["shape"], info["data_offsets"]
        if code not in DTYPES:
            raise _fail(path, f"tensor {name}: dtype {str(code)[:20]!r} is not one p2p reads ({', '.join(DTYPES)})")
        if DTYPES[code].is_floating_point != dtype.is_floating_point:
            raise _fail(path, f"tensor {name}: dtype {code}, the network holds {dtype}")
        if not isinstance(got, list) or [type(d) for d in got] != [int] * len(got) or tuple(got) != shape:
            raise _fail(path, f"tensor {name}: shape {str(got)[:80]}, the network config.json describes has "
                        f"{list(shape)}")
        if not isinstance(offsets, list) or len(offsets) != 2 or [type(o) for o in offsets] != [int, int]:
            raise _fail(path, f"tensor {name}: data_offsets must be two integers")
        begin, end = offsets
        if not 0 <= begin <= end <= data_len:
            raise _fail(path, f"tensor {name}: data_offsets {offsets} lie outside the file's {data_len:,} data bytes")
        nbytes = DTYPES[code].itemsize * int(torch.Size(shape).numel())
        if end - begin != nbytes:
            raise _fail(path, f"tensor {name}: {end - begin:,} data bytes for a {code} tensor of shape {list(shape)} "
                        f"({nbytes:,} bytes)")
        entries.append((begin, end, name, DTYPES[code], shape))
    entries.sort()
    position = 0
    for begin, end, name, _, _ in entries:  # the spec: the data is the tensors, back to back
        if begin != position:
            raise _fail(path, f"tensor {name} starts at data byte {begin:,}, not {position:,}: tensors overlap or "
                        f"leave a gap")
        position = end
    if position != data_len:
        raise _fail(path, f"{data_len - position:,} bytes after the last tensor: not a safetensors file p2p wrote "
                    f"or reads")
    return entries


def read_weights(path: str | os.PathLike, expected: dict) -> dict[str, torch.Tensor]:
    """The tensors of a safetensors file whose names, dtypes and shapes must be `expected`'s (see
    the module docstring: everything is checked before a byte of tensor data is read)."""
    path = os.fspath(path)
    with open(path, "rb") as f:
        size = os.fstat(f.fileno()).st_size
        head = f.read(8)
        if head.startswith(b"PK\x03\x04") or head[:1] == b"\x80":
            raise _fail(path, "a PyTorch pickle/zip file, not safetensors (a checkpoint renamed?); p2p never "
                        "unpickles a model folder: export one with p2p export --format folder")
        if len(head) < 8:
            raise _fail(path, f"{size} bytes: too short for a safetensors file")
        n = int.from_bytes(head, "little")
        if n > MAX_HEADER_BYTES or n > size - 8:
            raise _fail(path, f"not a safetensors file: it declares a {n:,}-byte header (the file has {size:,} bytes; "
                        f"p2p reads headers up to {MAX_HEADER_BYTES:,})")
        raw = f.read(n)
        try:
            header = json.loads(raw.decode("utf-8"))
        except (UnicodeDecodeError, ValueError):
            raise _fail(path, "not a safetensors file: its header is not JSON") from None
        if not isinstance(header, dict):
            raise _fail(path, "not a safetensors file: its header is not a JSON object")
        entries = _entries(path, header, expected, size - 8 - n)
        state = {}
        for begin, end, name, dtype, shape in entries:
            t = torch.empty(shape, dtype=dtype)  # the checked size; read straight into it
            if f.readinto(t.reshape(-1).view(torch.uint8).numpy()) != end - begin:  # the file shrank meanwhile
                raise _fail(path, f"truncated inside tensor {name}")
            state[name] = t.to(expected[name][1])  # float16/bfloat16/float64 files: the network's dtype
    for name, t in state.items():
        # one pass, no temporary: NaN and inf survive a sum, and float64 cannot overflow on float32 values
        if t.is_floating_point() and not torch.isfinite(t.sum(dtype=torch.float64)):
            raise _fail(path, f"tensor {name} holds NaN or infinite values: damaged or diverged weights")
    return state


def load_folder(folder: str | os.PathLike, weights: str = "auto", dropout: bool | None = None):
    """(generator in eval mode on the CPU, Config, "ema" | "raw") of a model folder. `weights`
    as `load_generator`: the folder holds one generator, so "ema" and "raw" must match it."""
    from p2p.models import WEIGHTS, build_generator

    if weights not in WEIGHTS:
        raise ValueError(f"weights={weights!r}: choose one of {', '.join(WEIGHTS)}")
    cfg, arch, doc = read_config(folder)
    if weights != "auto" and weights != doc["weights"]:
        raise UsageError(f"{os.fspath(folder)} holds only the {doc['weights']} generator, not the {weights} one; "
                         f"use the checkpoint it was exported from")
    try:
        expected = expected_tensors(arch)
    except UsageError as e:
        raise _fail(Path(folder) / CONFIG_FILE, str(e)) from None
    state = read_weights(Path(folder) / WEIGHTS_FILE, expected)
    if dropout is not None:
        arch.dropout = dropout
    with torch.device("meta"):  # no random init of weights about to be replaced: the tensors read become them
        G = build_generator(arch)
    try:
        G.load_state_dict(state, strict=True, assign=True)
    except RuntimeError as e:  # dropout= renamed a ResNet's layers
        raise _fail(folder, f"weights do not fit: {str(e).splitlines()[0][:160]}") from None
    left = [name for name, t in [*G.named_parameters(), *G.named_buffers()] if t.is_meta]
    if left:  # a tensor outside the state dict would have no value
        raise _fail(folder, f"no weights for {left[:3]}")
    return G.eval(), cfg, doc["weights"]
