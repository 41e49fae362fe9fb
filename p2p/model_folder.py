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

import dataclasses
import json
import os
import shutil
from pathlib import Path

import torch
from torch import nn

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


def generator_arch(G: nn.Module):
    """The GeneratorArch of a built p2p generator, read off its tensors; a U-Net's dropout has
    none, so it is whether the module holds dropout layers."""
    from p2p.models import generator_arch_of

    return generator_arch_of(G.state_dict(), dropout=any(isinstance(m, nn.Dropout) for m in G.modules()))


def config_tree(arch, cfg, official: bool = False) -> dict:
    """The config sections that rebuild `arch` and show images to it as `cfg` does (`official`:
    weights without a config, which p2p shows images at the official test size)."""
    from p2p.specs.generators import GENERATORS

    model = {"generator": arch.kind, "ngf": arch.ngf, "norm": arch.norm, "dropout": arch.dropout}
    model.update({key.partition(".")[2]: getattr(arch, field) for key, field in GENERATORS[arch.kind].reads})
    data = {"load_size": cfg.data.load_size, "image_size": cfg.data.image_size}
    if official:
        from p2p.inference import OFFICIAL_TEST_SIZE

        data = {"load_size": OFFICIAL_TEST_SIZE, "image_size": OFFICIAL_TEST_SIZE}
    return {"task": dataclasses.asdict(cfg.task), "data": data, "model": model, "run": {"seed": cfg.run.seed}}


def derived(cfg, arch) -> dict:
    """What follows from the config, written for readers that are not p2p (and checked on load)."""
    from p2p.inference import training_geometry
    from p2p.tasks import build_task

    task = build_task(cfg.task)
    g = training_geometry(task, cfg.data.load_size)
    return {"geometry": {"mode": g.mode, "size": g.size, "stride": arch.stride},
            "channels": {"in": arch.in_channels, "out": arch.out_channels}}


def folder_config(predictor, trained: dict) -> dict:
    from p2p import __version__
    from p2p.config import from_tree

    arch = generator_arch(predictor.G)
    return {"format": FORMAT, "format_version": FORMAT_VERSION, "p2p_version": __version__,
            "weights": predictor.weights, "config": (tree := config_tree(arch, predictor.cfg, predictor.official)),
            **derived(from_tree(tree), arch), "trained": trained}


# --------------------------------------------------------------------------- reading


def _fail(path, why: str) -> CheckpointError:
    return CheckpointError(f"{os.fspath(path)}: {why}", os.fspath(path))


def read_config(folder: str | os.PathLike):
    """(Config, GeneratorArch, the whole config.json) of a model folder, validated."""
    from p2p.config import from_tree
    from p2p.train.nets import architectures
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


# --------------------------------------------------------------------------- writing


def check_out_folder(out: str | os.PathLike) -> None:
    """`out` can become the model folder: new or empty, in a writable folder (else one line)."""
    from p2p.outputs import writable_parent

    out = Path(out)
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise UsageError(f"--out {out} exists and is not an empty folder; give a new folder (nothing was written)")
    writable_parent(out)


def export_folder(predictor, source: str | os.PathLike, out: str | os.PathLike) -> Path:
    """Write the predictor's generator as a model folder at `out` (a new or empty folder):
    everything goes to a temporary folder beside it, is read back through `load_folder` and
    compared, and the folder is renamed into place, so `out` never holds a partial model."""
    from safetensors.torch import save

    from p2p.atomic import fsync_dir, write_bytes, write_text
    from p2p.model_card import model_card, training_record

    out = Path(out)
    check_out_folder(out)
    G = predictor.G
    doc = folder_config(predictor, training_record(source, predictor))
    state = {k: v.detach().cpu().contiguous().clone() for k, v in G.state_dict().items()}
    tmp = out.parent / f".{out.name}.{os.getpid()}.tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    try:
        write_bytes(tmp / WEIGHTS_FILE, save(state, metadata={"format": "pt"}))
        write_text(tmp / CONFIG_FILE, json.dumps(doc, indent=2) + "\n")
        write_text(tmp / CARD_FILE, model_card(doc, out.name, sum(p.numel() for p in G.parameters())))
        back, _, _ = load_folder(tmp)
        same = repr(back) == repr(G) and all(torch.equal(back.state_dict()[k], v) for k, v in state.items())
        if not same:
            raise UsageError(f"--out {out}: the folder read back differs from the generator; nothing written")
        fsync_dir(tmp)
        try:
            os.rename(tmp, out)  # replaces an empty folder; a non-empty one (made meanwhile) fails
        except OSError as e:
            raise UsageError(f"--out {out}: cannot move the finished folder there ({e.strerror}); nothing "
                             f"written") from None
        fsync_dir(out.parent if str(out.parent) else ".")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return out
