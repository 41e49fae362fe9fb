"""`p2p eval CKPT --data SOURCE [--json PATH]`: PSNR, SSIM, L1 (and colourfulness for colorize)
of a generator's outputs, each image whole and through the geometry of `p2p predict`, against
the image it should produce.

A shard folder or a folder with val/ (or test/) is scored on that split; any other folder on
all of its images; `embedded` on the held-out photo. Validation during training scores the
same way (p2p.evaluation).
"""

from __future__ import annotations

import argparse
import json

from p2p.cli.predict import add_generator_arguments, weights_choice
from p2p.config import TASKS
from p2p.errors import UsageError


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("checkpoint", help="p2p checkpoint or official latest_net_G.pth")
    parser.add_argument("--data", required=True, help="image folder, shard folder or 'embedded'")
    parser.add_argument("--json", help="write the metrics here as JSON")
    parser.add_argument("--task", choices=TASKS, help="task, when the checkpoint does not record it")
    parser.add_argument("--size", type=int, help="short side the model sees (default: the training scale, as "
                        "p2p predict)")
    parser.add_argument("--full-res", action="store_true", help="score at each image's own resolution")
    parser.add_argument("--squash", action="store_true", help="score with the official square resize")
    parser.add_argument("--limit", type=int, default=0, help="score at most this many images (0 = all)")
    parser.add_argument("--batch-size", type=int, default=16, help=argparse.SUPPRESS)  # kept for old scripts
    add_generator_arguments(parser)
    parser.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N")


def run(args) -> int:
    from rich.console import Console
    from rich.table import Table

    from p2p.atomic import write_text
    from p2p.config import with_values
    from p2p.data.held_out import held_out
    from p2p.dist import resolve_device
    from p2p.evaluation import means, score_images
    from p2p.inference import load_predictor

    if args.limit < 0:
        raise UsageError("--limit must be >= 0")
    predictor = load_predictor(args.checkpoint, args.task, weights=weights_choice(args),
                               train_mode=args.train_mode)
    geometry = predictor.geometry(args.size, args.full_res, args.squash)
    device = resolve_device(args.device)
    # The data to score, whatever the checkpoint trained on: the whole of SOURCE's val split.
    cfg = with_values(predictor.cfg, {"data.source": args.data, "data.val_source": "", "data.val_fraction": 0.0,
                                      "data.backend": "auto"})
    images = held_out(cfg, limit=args.limit or 10**9)
    task, G = predictor.task, predictor.G.to(device)
    metrics = means(task, score_images(G, task, images, geometry, cfg.run.seed, device))
    if metrics["count"] == 0:
        raise UsageError(f"--data {args.data}: no images to score")
    if "colorfulness" in metrics:  # the paper's spelling, for readers who search for it
        metrics["colourfulness"] = metrics["colorfulness"]
    # Flat for scripts (result["psnr"]) and grouped under "metrics" for readers.
    result = {**metrics, "checkpoint": str(args.checkpoint), "weights": predictor.weights,
              "train_mode": args.train_mode, "source": args.data, "task": task.name,
              "geometry": {"mode": geometry.mode, "size": geometry.size}, "metrics": metrics}
    table = Table(title=f"{task.name} on {args.data} ({metrics['count']} images, {geometry.mode} {geometry.size or ''})")
    table.add_column("metric")
    table.add_column("mean", justify="right")
    for k, v in metrics.items():
        if k not in ("count", "colourfulness"):
            table.add_row(k, f"{v:.4f}")
    Console().print(table)
    if args.json:
        write_text(args.json, json.dumps(result, indent=2) + "\n")
    else:
        print(json.dumps(metrics))
    return 0
