"""`p2p predict CKPT INPUT... --out DIR`: run a trained generator (a p2p checkpoint, official
pix2pix `latest_net_G.pth` or a model folder) on images of any size; outputs keep each input's
size. The library it runs is the Python API's (p2p.api).

By default each image is shown to the model at the training scale with its aspect ratio kept
(see p2p.inference); `--size` sets that short side, `--full-res` runs at the image's own
resolution, `--squash` resizes to a square as the official pix2pix test does.
"""

from __future__ import annotations

import argparse
import sys

import torch

from p2p.errors import UsageError
from p2p.specs.tasks import TASKS


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("checkpoint", help="p2p checkpoint (last.pt, best.pt), official latest_net_G.pth or a "
                        "model folder")
    parser.add_argument("inputs", nargs="+", help="image files or folders of images")
    parser.add_argument("--out", required=True, help="output folder: OUT/<stem>.png per input; inputs sharing a "
                        "stem keep their extension (a.jpg.png, a.png.png)")
    parser.add_argument("--task", choices=TASKS.names(),
                        help="task, when the checkpoint does not record it (official weights)")
    parser.add_argument("--direction", choices=("AtoB", "BtoA"), help="paired: which half of A|B inputs is the input")
    parser.add_argument("--ab", action="store_true", help="paired: inputs are A|B side-by-side images")
    parser.add_argument("--instances", help="labels: the folder of instance maps (PNG) matched to the label maps by "
                        "name, for a model trained with task.instance_boundaries")
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


def _paired_names() -> str:
    return " or ".join(s.name for s in TASKS if s.image_pairs)


def run(args) -> int:
    from torchvision.utils import save_image

    from p2p.api import load_model, rgb_batch
    from p2p.data.images import ImageRejected, read_rgb
    from p2p.cli.progress import progress_bar
    from p2p.inference import list_inputs
    from p2p.outputs import output_folder, prediction_paths

    if args.ab and args.task is not None and not TASKS[args.task].image_pairs:
        raise UsageError(f"--ab only applies to a task of A|B pairs (--task {_paired_names()}), not --task {args.task}")
    if args.batch_size < 1:
        raise UsageError("--batch-size must be >= 1")
    # the Python API (p2p.api) is this command's library: the same loading, geometry and pixels
    model = load_model(args.checkpoint, device=args.device, task=args.task, direction=args.direction,
                       weights=weights_choice(args), train_mode=args.train_mode)
    predictor = model.predictor
    geometry = model.geometry(args.size, args.full_res, args.squash)
    tiling = model.tiling(args.tile, args.overlap)
    task = model.task
    files = list_inputs(args.inputs)
    targets = prediction_paths(files, args.out)  # decided before anything runs: no result lost
    from p2p.label_task import instance_maps, label_input

    instances = instance_maps(args.instances, task)  # labels: inputs are label maps (docs/label-maps.md)
    out_dir = output_folder(args.out)

    skipped = 0

    def load(path):
        nonlocal skipped
        try:
            if task.spec.input_kind == "labels":
                return label_input(path, instances, geometry, task, predictor.cfg.data.max_pixels)
            img = read_rgb(path, predictor.cfg.data.max_pixels)
        except ImageRejected as e:  # one line each; a run that writes nothing is an input error
            print(f"p2p predict: skipping {path}: {e.reason}: {e}", file=sys.stderr)
            skipped += 1
            return None
        rgb = rgb_batch(img)
        if task.spec.image_pairs and args.ab:
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
                    out = model.run(torch.cat([rgb for _, rgb in part]), geometry, tiling)
                    for (path, _), image in zip(part, out):
                        save_image(image, targets[path])
                    written += len(part)
                    advance(len(part))
    if written == 0:
        raise UsageError(f"no image could be read: all {skipped} input(s) skipped (see the lines above)")
    how = (" (EMA weights)" if predictor.weights == "ema" else "") + (" in train mode" if args.train_mode else "")
    print(f"p2p predict: wrote {written} image(s) to {out_dir}{how}")
    return 0
