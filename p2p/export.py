"""A trained generator for use outside p2p: ONNX, TorchScript, or the official pix2pix layout.

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

import json
import os
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch

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
    if fmt not in FORMATS or fmt == "folder":  # a folder needs more than G: p2p.model_folder.export_folder
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
