"""`p2p export CKPT --format onnx|torchscript|official --out PATH`: the generator of a checkpoint
(its EMA weights when it has them) as an ONNX file, a TorchScript file or an official pix2pix
`latest_net_G.pth` (p2p.export). ONNX and TorchScript are checked against PyTorch on two input
sizes before the file is written; the largest difference is printed, and above 1e-4 the command
fails (exit 1) without writing. An existing --out is never replaced without --force (exit 2).
"""

from __future__ import annotations

import argparse
import time

from p2p.config import TASKS
from p2p.errors import UsageError


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from p2p.export import FORMATS

    parser.add_argument("checkpoint", help="p2p checkpoint (last.pt, best.pt) or official latest_net_G.pth")
    parser.add_argument("--format", required=True, help=f"one of {', '.join(FORMATS)}")
    parser.add_argument("--out", required=True, help="file to write (official: conventionally latest_net_G.pth)")
    parser.add_argument("--task", choices=TASKS, help="task, when the checkpoint does not record it")
    parser.add_argument("--force", action="store_true", help="replace --out when it exists (without it, an "
                        "existing file is an error and nothing is written)")


def run(args) -> int:
    import sys

    from p2p.export import FORMATS, ExportMismatch, export_generator
    from p2p.inference import load_predictor

    if args.format not in FORMATS:  # before loading anything
        raise UsageError(f"--format {args.format!r}: choose one of {', '.join(FORMATS)}")
    try:
        predictor = load_predictor(args.checkpoint, args.task)
    except (UsageError, KeyboardInterrupt):
        raise
    except Exception as e:  # a truncated or foreign file: one line, not a traceback
        raise UsageError(f"{args.checkpoint}: not a readable p2p or official generator checkpoint "
                         f"({type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''})") from None
    meta = {"task": predictor.task.name, "checkpoint": str(args.checkpoint)}
    t0 = time.perf_counter()
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
