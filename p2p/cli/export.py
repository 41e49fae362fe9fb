"""`p2p export CKPT --format onnx|torchscript|official|folder --out PATH`: the generator of a
checkpoint (its EMA weights when it has them) as an ONNX file, a TorchScript file, an official
pix2pix `latest_net_G.pth` (p2p.export) or a model folder of safetensors weights, config and
model card (p2p.model_folder; an existing non-empty folder is refused). ONNX and TorchScript are
checked against PyTorch on two input sizes before the file is written; the largest difference is
printed, and above 1e-4 the command fails (exit 1) without writing. An existing --out file is
never replaced without --force (exit 2); a model folder is never replaced.
"""

from __future__ import annotations

import argparse
import time

from p2p.errors import UsageError
from p2p.specs.tasks import TASKS


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from p2p.export import FORMATS

    parser.add_argument("checkpoint", help="p2p checkpoint (last.pt, best.pt), official latest_net_G.pth or a model "
                        "folder")
    parser.add_argument("--format", required=True, help=f"one of {', '.join(FORMATS)}")
    parser.add_argument("--out", required=True, help="file to write (official: conventionally latest_net_G.pth; "
                        "folder: a new or empty folder)")
    parser.add_argument("--task", choices=TASKS.names(), help="task, when the checkpoint does not record it")
    parser.add_argument("--force", action="store_true", help="replace --out when it is an existing file "
                        "(without it, that is an error and nothing is written; a non-empty folder is never replaced)")


def run(args) -> int:
    import sys

    from p2p.export import FORMATS, ExportMismatch, export_generator
    from p2p.inference import load_predictor

    if args.format not in FORMATS:  # before loading anything
        raise UsageError(f"--format {args.format!r}: choose one of {', '.join(FORMATS)}")
    if args.format == "folder":  # a non-empty --out is refused before anything is loaded
        from p2p.export import check_out_folder

        check_out_folder(args.out)
    try:
        predictor = load_predictor(args.checkpoint, args.task)
    except (UsageError, KeyboardInterrupt):
        raise
    except Exception as e:  # a truncated or foreign file: one line, not a traceback
        raise UsageError(f"{args.checkpoint}: not a readable p2p or official generator checkpoint "
                         f"({type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''})") from None
    t0 = time.perf_counter()
    if args.format == "folder":
        from p2p.export import export_folder

        out = export_folder(predictor, args.checkpoint, args.out)
        print(f"p2p export: wrote {out}/ (model.safetensors, config.json, README.md; {predictor.task.name}, "
              f"{predictor.weights} weights, {time.perf_counter() - t0:.1f} s)")
        return 0
    meta = {"task": predictor.task.name, "checkpoint": str(args.checkpoint)}
    try:
        report = export_generator(predictor.G, args.format, args.out, meta, force=args.force)
    except ExportMismatch as e:
        print(f"p2p export: error: {e}", file=sys.stderr)
        return 1
    seconds = time.perf_counter() - t0
    if report.max_abs_diff is None:
        print(f"p2p export: wrote {report.path} ({args.format}, {predictor.task.name}, {seconds:.1f} s)")
    else:
        shapes = ", ".join("x".join(map(str, s)) for s in report.sizes)
        print(f"p2p export: wrote {report.path} ({args.format}, {predictor.task.name}, {seconds:.1f} s); "
              f"max |{args.format} - pytorch| = {report.max_abs_diff:.2e} on inputs {shapes}")
    return 0
