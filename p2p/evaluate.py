"""`p2p eval CKPT --data SOURCE [--json PATH]`: PSNR, SSIM, L1 (and colourfulness for
colorize) of a generator over a data source, with the centre crop used for validation.

A shard folder or a folder with val/ (or test/) is scored on that split; any other folder on
all of its images; `embedded` on the held-out photo. The same scoring runs during training.
"""

from __future__ import annotations

import argparse
import json
from typing import Iterable

import torch

from p2p.augment import step_generator
from p2p.config import TASKS
from p2p.errors import UsageError
from p2p.metrics import image_metrics


def metric_names(task) -> tuple[str, ...]:
    return ("psnr", "ssim", "l1") + (("colorfulness", "colorfulness_target") if task.name == "colorize" else ())


@torch.no_grad()
def score(net, task, batches: Iterable[torch.Tensor], image_size: int, seed: int, precision=None) -> torch.Tensor:
    """Sums of per-image metrics (in `metric_names` order) and the image count as the last entry.
    `net` must be in eval mode; batches are uint8 at load size, centre-cropped here."""
    keys = metric_names(task)
    sums = None
    for i, images in enumerate(batches):
        gen = step_generator(seed, 0, i, stream=99)  # fixed degradations (restore) for every call
        inp, target = task.prepare(images, image_size, gen, crop_gen=None)
        if precision is not None:
            with precision.autocast():
                out = net(inp)
        else:
            out = net(inp)
        m = image_metrics(task.output_rgb(inp, out.float()), task.output_rgb(inp, target),
                          colour=task.name == "colorize")
        row = torch.stack([m[k].sum() for k in keys] + [torch.tensor(float(inp.shape[0]), dtype=torch.float64,
                                                                       device=inp.device)])
        sums = row if sums is None else sums + row
    if sums is None:
        sums = torch.zeros(len(keys) + 1, dtype=torch.float64)
    return sums


def means(task, sums: torch.Tensor) -> dict[str, float]:
    values = sums.tolist()  # note: host sync
    count = max(values[-1], 1.0)
    return {**{k: v / count for k, v in zip(metric_names(task), values)}, "count": int(values[-1])}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("checkpoint", help="p2p checkpoint or official latest_net_G.pth")
    parser.add_argument("--data", required=True, help="image folder, shard folder or 'embedded'")
    parser.add_argument("--json", help="write the metrics here as JSON")
    parser.add_argument("--task", choices=TASKS, help="task, when the checkpoint does not record it")
    parser.add_argument("--size", type=int, help="model input size (default: the checkpoint's)")
    parser.add_argument("--limit", type=int, default=0, help="score at most this many images (0 = all)")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--device", default="auto")


def run(args) -> int:
    from p2p.bench.common import write_json
    from p2p.data import build_loader
    from p2p.predict import _device, load_predictor

    G, task, cfg = load_predictor(args.checkpoint, args.task, args.size)
    device = _device(args.device)
    cfg.data.source, cfg.data.val_source, cfg.data.val_fraction = args.data, "", 0.0
    cfg.data.backend = "auto"
    # The embedded source is endless random crops: score its usual fixed held-out set.
    cfg.data.val_images = args.limit or (cfg.data.val_images if args.data == "embedded" else 10**9)
    cfg.data.workers = min(cfg.data.workers, 2)
    cfg.train.batch_size = args.batch_size
    if args.batch_size < 1:
        raise UsageError("--batch-size must be >= 1")
    loader = build_loader(cfg, "val", 0, 1, device)
    G = G.to(device).eval()
    sums = score(G, task, (b.images.to(device) for b in loader.epoch(0)), cfg.data.image_size, cfg.run.seed)
    metrics = means(task, sums)
    if "colorfulness" in metrics:  # the paper's spelling, for readers who search for it
        metrics["colourfulness"] = metrics["colorfulness"]
    # Flat for scripts (result["psnr"]) and grouped under "metrics" for readers.
    result = {**metrics, "checkpoint": str(args.checkpoint), "source": args.data, "task": task.name,
              "image_size": cfg.data.image_size, "metrics": metrics}
    if result["metrics"]["count"] == 0:
        raise UsageError(f"--data {args.data}: no images to score")
    from rich.console import Console
    from rich.table import Table

    table = Table(title=f"{task.name} on {args.data} ({result['metrics']['count']} images)")
    table.add_column("metric")
    table.add_column("mean", justify="right")
    for k, v in result["metrics"].items():
        if k not in ("count", "colourfulness"):
            table.add_row(k, f"{v:.4f}")
    Console().print(table)
    if args.json:
        write_json(args.json, result)
    else:
        print(json.dumps(result["metrics"]))
    return 0
