"""`p2p predict CKPT INPUT... --out DIR`: run a trained generator (a p2p checkpoint or official
pix2pix `latest_net_G.pth`) on images of any size; outputs keep each input's size.

By default each image is shown to the model at the training scale with its aspect ratio kept
(see p2p.inference); `--size` sets that short side, `--full-res` runs at the image's own
resolution, `--squash` resizes to a square as the official pix2pix test does.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import torch

from p2p.config import TASKS
from p2p.errors import UsageError


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("checkpoint", help="p2p checkpoint (last.pt, best.pt) or official latest_net_G.pth")
    parser.add_argument("inputs", nargs="+", help="image files or folders of images")
    parser.add_argument("--out", required=True, help="output folder (PNG files named after the inputs)")
    parser.add_argument("--task", choices=TASKS, help="task, when the checkpoint does not record it (official weights)")
    parser.add_argument("--direction", choices=("AtoB", "BtoA"), help="paired: which half of A|B inputs is the input")
    parser.add_argument("--ab", action="store_true", help="paired: inputs are A|B side-by-side images")
    parser.add_argument("--size", type=int, help="short side the model sees (default: the training scale, the "
                        "checkpoint's data.load_size; 256 for official weights); with --squash the square's side")
    parser.add_argument("--full-res", action="store_true", help="run at each image's own resolution")
    parser.add_argument("--squash", action="store_true", help="resize the whole image to size x size (the official "
                        "pix2pix test-time resize; default size: the checkpoint's data.image_size, 256 for official weights)")
    parser.add_argument("--tile", type=int, default=0, help="run the model input in overlapping tiles of N x N "
                        "pixels at the model's scale (a multiple of the stride) when it is larger; 0 = whole images")
    parser.add_argument("--overlap", type=int, help="pixels neighbouring tiles share, blended (default: --tile / 4)")
    parser.add_argument("--batch-size", type=int, default=8, help="images of one size run together")
    add_generator_arguments(parser)
    parser.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N")


def add_generator_arguments(parser: argparse.ArgumentParser) -> None:
    """Which generator of a checkpoint runs, and how (shared with `p2p eval`)."""
    parser.add_argument("--raw-weights", action="store_true", help="a checkpoint trained with train.ema_decay: "
                        "use the trained generator itself, not its moving average (the default)")
    parser.add_argument("--train-mode", action="store_true", help="dropout on and batch statistics of each image "
                        "(the paper's test-time behaviour, official test.py without --eval); default: eval mode")


def weights_choice(args) -> str:
    return "raw" if args.raw_weights else "auto"


def run(args) -> int:
    from PIL import Image
    from torchvision.utils import save_image

    from p2p.data.images import open_rgb
    from p2p.dist import resolve_device
    from p2p.cli.progress import progress_bar
    from p2p.inference import list_inputs, load_predictor, predict
    from p2p.tiling import Tiling

    if args.ab and (args.task or "paired") != "paired":
        raise UsageError("--ab only applies to --task paired")
    if args.batch_size < 1:
        raise UsageError("--batch-size must be >= 1")
    predictor = load_predictor(args.checkpoint, args.task, args.direction, weights_choice(args),
                               args.train_mode)
    geometry = predictor.geometry(args.size, args.full_res, args.squash)
    tiling = None
    if args.tile:
        tiling = Tiling(args.tile, args.tile // 4 if args.overlap is None else args.overlap)
        tiling.check(predictor.G.stride, getattr(predictor.G, "min_side", 0))
    elif args.overlap is not None:
        raise UsageError("--overlap needs --tile")
    device = resolve_device(args.device)
    G, task = predictor.G.to(device), predictor.task
    out_dir = Path(args.out)
    out_dir.mkdir(parents=True, exist_ok=True)
    files = list_inputs(args.inputs)

    def load(path):
        try:
            img = open_rgb(path)
        except (OSError, ValueError, Image.DecompressionBombError) as e:
            print(f"p2p predict: skipping {path}: {e}")
            return None
        rgb = torch.from_numpy(np.array(img)).permute(2, 0, 1)[None].float().div(255)
        if task.name == "paired" and args.ab:
            half = rgb.shape[-1] // 2
            rgb = rgb[..., :half] if task.cfg.direction == "AtoB" else rgb[..., half:2 * half]
        return rgb

    written = 0
    with progress_bar(len(files), "predict") as advance:
        # a window of files at a time, grouped by size: batches without holding a folder in memory
        window = 4 * args.batch_size
        for start in range(0, len(files), window):
            groups: dict[tuple, list] = {}
            for path in files[start:start + window]:
                rgb = load(path)
                if rgb is None:
                    advance(1)
                    continue
                groups.setdefault(tuple(rgb.shape), []).append((path, rgb))
            for group in groups.values():
                for i in range(0, len(group), args.batch_size):
                    part = group[i:i + args.batch_size]
                    out = predict(G, task, torch.cat([rgb for _, rgb in part]).to(device), geometry,
                                  tiling=tiling).cpu()
                    for (path, _), image in zip(part, out):
                        save_image(image, out_dir / f"{path.stem}.png")
                    written += len(part)
                    advance(len(part))
    how = (" (EMA weights)" if predictor.weights == "ema" else "") + (" in train mode" if args.train_mode else "")
    print(f"p2p predict: wrote {written} image(s) to {out_dir}{how}")
    return 0
