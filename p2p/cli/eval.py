"""`p2p eval CKPT --data SOURCE [--json PATH]`: PSNR, SSIM, L1, colourfulness and ΔCF (and FID,
KID, LPIPS with their weights files) of a generator's outputs, each image whole and through the
geometry of `p2p predict`, against the image it should produce (p2p.evaluation).

A shard folder or a folder with val/ (or test/) is scored on that split; any other folder on
all of its images; `embedded` on the held-out photo. Under torchrun or Slurm each process
scores its share and rank 0 reports. `--json` gets exactly the metric keys (null = not
computed or not a number); what was scored and how goes to `<PATH stem>.meta.json` beside it.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path

from p2p.cli.predict import add_generator_arguments, weights_choice
from p2p.errors import UsageError
from p2p.specs.tasks import TASKS


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("checkpoint", help="p2p checkpoint, official latest_net_G.pth or a model folder")
    parser.add_argument("--data", required=True, help="image folder, shard folder or 'embedded'")
    parser.add_argument("--json", help="write the metrics here as JSON (and what was scored to <stem>.meta.json)")
    parser.add_argument("--task", choices=TASKS.names(), help="task, when the checkpoint does not record it")
    parser.add_argument("--size", type=int, help="short side the model sees (default: the training scale, as "
                        "p2p predict)")
    parser.add_argument("--full-res", action="store_true", help="score at each image's own resolution")
    parser.add_argument("--squash", action="store_true", help="score with the official square resize")
    parser.add_argument("--limit", type=int, default=0, help="score at most this many images (0 = all)")
    parser.add_argument("--fid-weights", help="FID Inception weights (pytorch-fid's pt_inception-2015-12-05-6726825d"
                        ".pth); default: the checkpoint's eval.fid_weights, else $P2P_FID_WEIGHTS")
    parser.add_argument("--fid-ref", help="reference statistics .npz of the targets (pytorch-fid layout): read "
                        "when it exists, else computed and written")
    parser.add_argument("--lpips-weights", help="LPIPS backbone (torchvision's alexnet-owt-7be5be79.pth, vgg16 or "
                        "squeezenet1_1); default: eval.lpips_weights, else $P2P_LPIPS_WEIGHTS")
    parser.add_argument("--batch-size", type=int, help="images of one size per batch (default: eval.batch_size)")
    parser.add_argument("--kid-subsets", type=int, help="KID: random subsets averaged (default: eval.kid_subsets)")
    parser.add_argument("--kid-subset-size", type=int, help="KID: images per subset (default: eval.kid_subset_size)")
    parser.add_argument("--precision", choices=("fp32", "bf16"), default="fp32",
                        help="generator autocast (the FID/LPIPS networks always run in float32)")
    add_generator_arguments(parser)
    parser.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N")


def run(args) -> int:
    from p2p import dist
    from p2p.atomic import write_text
    from p2p.cli.progress import progress_bar
    from p2p.config import with_values
    from p2p.data.held_out import held_out
    from p2p.evaluation import build_scorer, evaluate, load_reference
    from p2p.inference import load_predictor
    from p2p.precision import Precision

    if args.limit < 0:
        raise UsageError("--limit must be >= 0")
    if args.batch_size is not None and args.batch_size < 1:
        raise UsageError("--batch-size must be >= 1")
    reference = load_reference(args.fid_ref or "")
    predictor = load_predictor(args.checkpoint, args.task, weights=weights_choice(args),
                               train_mode=args.train_mode)
    geometry = predictor.geometry(args.size, args.full_res, args.squash)
    dist.resolve_device(args.device)  # a bad --device is a usage error before any process group starts
    accel = dist.start(args.device)
    device, rank, world = accel.device, accel.process_index, accel.num_processes
    # The data to score, whatever the checkpoint trained on: the whole of SOURCE's val split.
    kid = {f"eval.{k}": v for k, v in (("kid_subsets", args.kid_subsets), ("kid_subset_size", args.kid_subset_size))
           if v is not None}
    cfg = with_values(predictor.cfg, {"data.source": args.data, "data.val_source": "", "data.val_fraction": 0.0,
                                      "data.backend": "auto", **kid})
    scorer = build_scorer(cfg.eval, args.fid_weights, args.lpips_weights, args.batch_size).to(device)
    if args.fid_ref and scorer.fid is None:
        raise UsageError("--fid-ref needs FID weights (--fid-weights, eval.fid_weights or $P2P_FID_WEIGHTS)")
    scorer.reference = reference
    images = held_out(cfg, rank, world, limit=args.limit or 10**9)
    for key, reason in images.skipped:  # every rank names its own; the count is summed below
        print(f"p2p eval: skipping {key}: {reason}", file=sys.stderr)
    task, G = predictor.task, predictor.G.to(device)
    precision = Precision(args.precision, device) if args.precision != "fp32" else None
    t0 = time.perf_counter()
    label = f"scoring {args.data}" + (" (rank 0's share)" if world > 1 else "")
    with progress_bar(len(images), label, enabled=rank == 0) as advance:
        metrics = evaluate(G, task, images, geometry, cfg.run.seed, device, scorer, precision, world, advance)
    seconds = time.perf_counter() - t0
    skipped = _summed(len(images.skipped), device) if world > 1 else len(images.skipped)
    if metrics["count"] == 0:
        raise UsageError(f"--data {args.data}: no images to score" + (f" ({skipped} skipped)" if skipped else ""))
    if rank != 0:
        return 0
    if args.fid_ref and reference is None:
        scorer.reference.save(args.fid_ref)
    meta = {"checkpoint": str(args.checkpoint), "weights": predictor.weights, "train_mode": args.train_mode,
            "source": args.data, "task": task.name,
            "geometry": {"mode": geometry.mode, "size": geometry.size}, "generator_precision": args.precision,
            "fid_weights": getattr(scorer.fid, "weights_path", None),
            "lpips_weights": getattr(scorer.lpips, "weights_path", None),
            "fid_ref": args.fid_ref or None, "processes": world, "device": str(device), "seconds": round(seconds, 3),
            "skipped": skipped}
    _print_table(metrics, meta)
    if args.json:
        write_text(args.json, json.dumps(_json_ready(metrics), indent=2, allow_nan=False) + "\n")
        meta_path = Path(args.json).with_suffix(".meta.json")
        write_text(meta_path, json.dumps(meta, indent=2) + "\n")
    else:
        print(json.dumps(_json_ready(metrics), allow_nan=False))
    return 0


def _json_ready(obj):
    """NaN and infinities (a score of images that came out non-finite) as null: the file stays
    JSON that every reader accepts (json.dumps would write the non-standard NaN)."""
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    if isinstance(obj, dict):
        return {k: _json_ready(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_json_ready(v) for v in obj]
    return obj
def _summed(n: int, device) -> int:
    """`n` summed over the ranks (collective)."""
    import torch

    t = torch.tensor([n], dtype=torch.int64, device=device)
    torch.distributed.all_reduce(t)
    return int(t.item())


def _print_table(metrics: dict, meta: dict) -> None:
    from rich.console import Console
    from rich.table import Table

    g = meta["geometry"]
    skipped = f", {meta['skipped']} skipped" if meta.get("skipped") else ""
    table = Table(title=f"{meta['task']} on {meta['source']} ({metrics['count']} images{skipped}, {g['mode']} "
                        f"{g['size'] or ''}"
                        f", {meta['processes']} process(es), {meta['seconds']:.1f} s)")
    table.add_column("metric")
    table.add_column("mean", justify="right")
    for k, v in metrics.items():
        if k != "count":
            table.add_row(k, "not computed" if v is None else f"{v:.4f}")
    Console().print(table)
