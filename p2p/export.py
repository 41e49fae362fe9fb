"""A trained generator for use outside p2p: ONNX, TorchScript, the official pix2pix layout, or a
model folder (p2p.model_folder, written by `export_folder`).

The exported network is the generator itself in eval mode (BatchNorm with its running
statistics, no dropout: what `p2p predict` runs), from `p2p.models.load_generator(path)` with
its default weights (the EMA weights when a checkpoint has them). Its input is what the model
sees (`Task.model_input`: colorize L/50-1, 1 channel; other tasks RGB in [-1, 1]), its output
tanh in [-1, 1] (colorize ab/110); the Lab conversion and geometry of `p2p predict` are not part
of it. Height and width must be multiples of the network's stride (2**num_downs).

- onnx: dynamic batch, height and width (height = stride x a free integer), one self-contained
  file (no external data); p2p's task, stride and channel meaning in its metadata.
- torchscript: `torch.jit.trace` (neither generator has shape-dependent Python, so the trace holds for
  every size; the check below proves it on two). `torch.jit.script` cannot compile
  `UNetGenerator.stride`, whose `2 ** n` TorchScript types as float.
- official: the state dict under the official `UnetGenerator` names (`latest_net_G.pth`), which
  the official `define_G(..., netG='unet_256')` loads with `load_state_dict(strict=True)`.

ONNX and TorchScript files are checked before they are kept: run on two input sizes (a batch of
2 at stride x 2*stride, and 1 at 2*stride x stride) against the PyTorch module; the largest
absolute difference is reported and above `tolerance` the file is not written.
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch
from torch import nn

from p2p.errors import UsageError
from p2p.outputs import writable_parent

FORMATS = ("onnx", "torchscript", "official", "folder")  # folder: p2p.model_folder (safetensors, config, card)
TOLERANCE = 1e-4


class ExportMismatch(Exception):
    """The exported model's outputs differ from PyTorch's by more than the tolerance."""


@dataclass
class ExportReport:
    path: Path
    format: str
    max_abs_diff: float | None  # None: nothing to run (official weights are a state dict)
    sizes: list[tuple[int, ...]]


def base_side(G) -> int:
    """The smallest side the checks use: a multiple of the stride and at least 16, because a
    ResNet's residual blocks reflect-pad by 1 at a quarter of the input's size (a 4-pixel input
    would leave 1 pixel there, which reflection padding refuses); pix2pixHD's generators pad at
    1/stride of it, so they say their own `min_side`."""
    return max(G.stride * -(-16 // G.stride), getattr(G, "min_side", 0))


def check_shapes(G) -> list[tuple[int, ...]]:
    """The two input shapes the check runs: different batch, height and width, both legal."""
    s, c = base_side(G), G.in_channels
    return [(2, c, s, 2 * s), (1, c, 2 * s, s)]


def _max_diff(run, G, shapes) -> float:
    worst = 0.0
    gen = torch.Generator().manual_seed(0)
    for shape in shapes:
        x = torch.rand(shape, generator=gen) * 2 - 1
        with torch.no_grad():
            expected = G(x)
        got = torch.as_tensor(run(x))
        if got.shape != expected.shape:
            raise ExportMismatch(f"output shape {tuple(got.shape)} for input {shape}, PyTorch gives "
                                 f"{tuple(expected.shape)}")
        worst = max(worst, (got.float() - expected).abs().max().item())
    return worst


def _writable(out: Path, force: bool = False) -> None:
    if out.is_dir():
        raise UsageError(f"--out {out} is a folder; give a file name")
    writable_parent(out)
    if (out.exists() or out.is_symlink()) and not force:  # never replaced silently: it may be the only copy
        raise UsageError(f"--out {out} exists; nothing was written (pass --force to replace it)")


def _onnx(G, tmp: Path, metadata: dict) -> Callable:
    import onnx
    import onnxruntime as ort

    s, c = G.stride, G.in_channels
    b = base_side(G)
    dim = torch.export.Dim
    shapes = {"x": {0: dim("batch", min=1, max=65536), 2: s * dim("height_blocks", min=1, max=4096),
                    3: s * dim("width_blocks", min=1, max=4096)}}
    # the example must not be 1 anywhere (batch 1, or one block where the innermost level is 1x1):
    # torch.export specialises such sizes to constants
    torch.onnx.export(G, (torch.zeros(2, c, 2 * b, 3 * b),), str(tmp), input_names=["input"], output_names=["output"],
                      dynamic_shapes=shapes, dynamo=True, external_data=False, verbose=False)
    model = onnx.load(str(tmp))
    for k, v in metadata.items():
        entry = model.metadata_props.add()
        entry.key, entry.value = f"p2p.{k}", str(v)
    onnx.save(model, str(tmp))
    session = ort.InferenceSession(str(tmp), providers=["CPUExecutionProvider"])
    return lambda x: session.run(None, {"input": x.numpy()})[0]


def _torchscript(G, tmp: Path, metadata: dict) -> Callable:
    s, c = base_side(G), G.in_channels
    # this torch (2.14) marks trace/save/load deprecated (FutureWarning, one per call): the user asked
    # for this format, so four warnings on stderr only hide the one line that matters
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=r"`torch\.jit\.\w+` is deprecated", category=FutureWarning)
        with torch.no_grad():
            traced = torch.jit.trace(G, torch.zeros(1, c, s, s), check_trace=False)
        torch.jit.save(traced, str(tmp), _extra_files={"p2p.json": json.dumps(metadata)})
        loaded = torch.jit.load(str(tmp), map_location="cpu")
    return lambda x: loaded(x)


def export_generator(G, fmt: str, out: str | os.PathLike, metadata: dict | None = None,
                     tolerance: float = TOLERANCE, force: bool = False) -> ExportReport:
    """Write `G` (a p2p U-Net or ResNet generator, on the CPU, eval mode) as `fmt` to `out`, atomically: the file
    appears only once the check passed. Raises ExportMismatch above `tolerance`; an existing
    `out` is a UsageError unless `force`."""
    if fmt not in FORMATS or fmt == "folder":  # a folder needs more than G: export_folder
        raise UsageError(f"--format {fmt!r}: choose one of {', '.join(FORMATS)}")
    out = Path(out)
    _writable(out, force)
    G = G.cpu().eval()
    metadata = {"stride": G.stride, "in_channels": G.in_channels,
                "out_channels": G.out_channels, **(metadata or {})}
    if fmt == "official":
        from p2p.atomic import replace_with
        from p2p.models.official import generator_to_official

        state = generator_to_official(G.state_dict())
        replace_with(out, lambda f: torch.save(state, f))
        return ExportReport(out, fmt, None, [])
    from p2p.atomic import write_bytes

    # exported and checked under a private name; `out` only ever holds a checked file
    tmp = out.with_name(f".{out.name}.{os.getpid()}.export")
    try:
        run = (_onnx if fmt == "onnx" else _torchscript)(G, tmp, metadata)
        shapes = check_shapes(G)
        diff = _max_diff(run, G, shapes)
        if not diff <= tolerance:  # also catches NaN
            raise ExportMismatch(f"{fmt} output differs from PyTorch by {diff:.3g} (> {tolerance:g}); "
                                 f"nothing written to {out}")
        write_bytes(out, tmp.read_bytes())
    finally:
        tmp.unlink(missing_ok=True)
    return ExportReport(out, fmt, diff, shapes)


# --------------------------------------------------------------------------- a model folder (p2p.model_folder)


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
        from p2p.geometry import OFFICIAL_TEST_SIZE

        data = {"load_size": OFFICIAL_TEST_SIZE, "image_size": OFFICIAL_TEST_SIZE}
    return {"task": dataclasses.asdict(cfg.task), "data": data, "model": model, "run": {"seed": cfg.run.seed}}


def folder_config(predictor, trained: dict) -> dict:
    from p2p.version import __version__
    from p2p.config import from_tree
    from p2p.model_folder import FORMAT, FORMAT_VERSION, derived

    arch = generator_arch(predictor.G)
    return {"format": FORMAT, "format_version": FORMAT_VERSION, "p2p_version": __version__,
            "weights": predictor.weights, "config": (tree := config_tree(arch, predictor.cfg, predictor.official)),
            **derived(from_tree(tree), arch), "trained": trained}


def check_out_folder(out: str | os.PathLike) -> None:
    """`out` can become the model folder: new or empty, in a writable folder (else one line)."""
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
    from p2p.model_folder import CARD_FILE, CONFIG_FILE, WEIGHTS_FILE, load_folder

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
