"""`p2p predict CKPT INPUT... --out DIR`: run a trained generator (a p2p checkpoint or official
pix2pix `latest_net_G.pth`) on images of any size.

Colorization predicts ab at the model's size, upsamples it and recombines it with the original
full-resolution L, so the output keeps every detail of the input. Other tasks run at the model
size and resize back, or with `--full-res` run the fully convolutional generator on the whole
image (padded to a multiple of 2**num_downs), which suits restoration.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import torch
from torch.nn import functional as F

from p2p import color
from p2p.config import TASKS, Config, TaskConfig, from_tree, load_config
from p2p.errors import UsageError
from p2p.models import load_generator, read_checkpoint
from p2p.tasks import Task, build_task, gray


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("checkpoint", help="p2p checkpoint (last.pt, best.pt) or official latest_net_G.pth")
    parser.add_argument("inputs", nargs="+", help="image files or folders of images")
    parser.add_argument("--out", required=True, help="output folder (PNG files named after the inputs)")
    parser.add_argument("--task", choices=TASKS, help="task, when the checkpoint does not record it (official weights)")
    parser.add_argument("--direction", choices=("AtoB", "BtoA"), help="paired: which half of A|B inputs is the input")
    parser.add_argument("--ab", action="store_true", help="paired: inputs are A|B side-by-side images")
    parser.add_argument("--size", type=int, help="model input size (default: the checkpoint's data.image_size, else 256)")
    parser.add_argument("--full-res", action="store_true", help="run at full resolution instead of model size")
    parser.add_argument("--device", default="auto", help="auto, cpu or cuda")


def _device(name: str) -> torch.device:
    from p2p.dist import use_cuda

    if name.startswith("cuda:"):  # a particular GPU
        use_cuda("cuda", "--device")
        return torch.device(name)
    if name not in ("auto", "cpu", "cuda"):
        raise UsageError(f"--device {name!r}: choose auto, cpu, cuda or cuda:N")
    return torch.device("cuda" if use_cuda(name, "--device") else "cpu")


def infer_task(in_ch: int, out_ch: int) -> str:
    return {(1, 2): "colorize", (1, 3): "gray2rgb"}.get((in_ch, out_ch), "paired")


def load_predictor(path: str, task_name: str | None = None, size: int | None = None,
                   direction: str | None = None) -> tuple[torch.nn.Module, Task, Config]:
    """(generator in eval mode, task, config) from any supported checkpoint. For official weights
    the task is inferred from channel counts (1->2 colorize, 1->3 gray2rgb, else paired)."""
    obj = read_checkpoint(path)
    G = load_generator(obj)
    tree = obj.get("config") if isinstance(obj, dict) and obj.get("format") == "p2p" else None
    cfg = load_config() if tree is None else from_tree(tree)
    name = task_name or (cfg.task.name if tree is not None else infer_task(G.down[0].conv.in_channels,
                                                                          G.up[0].conv.out_channels))
    size = size or (cfg.data.image_size if tree is not None else 256)
    if size % (2 ** G.num_downs):
        raise UsageError(f"--size {size} must be divisible by 2**num_downs = {2 ** G.num_downs}")
    task_cfg = TaskConfig(**{**cfg.task.__dict__, "name": name, "direction": direction or cfg.task.direction})
    task = build_task(task_cfg)
    if (task.in_channels, task.out_channels) != (G.down[0].conv.in_channels, G.up[0].conv.out_channels):
        raise UsageError(f"task {name} needs a {task.in_channels}->{task.out_channels} channel generator; "
                         f"{path} maps {G.down[0].conv.in_channels}->{G.up[0].conv.out_channels}")
    cfg.task, cfg.data.image_size = task_cfg, size
    cfg.data.load_size = max(cfg.data.load_size, size)
    return G, task, cfg


def list_inputs(inputs: list[str]) -> list[Path]:
    from p2p.data.folder import list_images

    files = []
    for item in inputs:
        p = Path(item)
        if p.is_dir():
            files += list_images(p)
        elif p.is_file():
            files.append(p)
        else:
            raise UsageError(f"input not found: {item}")
    if not files:
        raise UsageError("no input images found")
    return files


def _pad_to(x: torch.Tensor, multiple: int) -> tuple[torch.Tensor, tuple[int, int]]:
    h, w = x.shape[-2:]
    ph, pw = -h % multiple, -w % multiple
    return F.pad(x, (0, pw, 0, ph), mode="reflect" if min(h, w) > max(ph, pw) else "replicate"), (h, w)


@torch.no_grad()
def predict_image(G, task: Task, rgb: torch.Tensor, size: int, full_res: bool) -> torch.Tensor:
    """One RGB image (1 x 3 x H x W float in [0,1]) -> output RGB at H x W."""
    h, w = rgb.shape[-2:]
    if task.name == "colorize":
        lab = color.rgb_to_lab(rgb)
        l_full = color.normalize_l(lab[:, :1])
        if full_res:
            l_in, _ = _pad_to(l_full, 2 ** G.num_downs)
            ab = G(l_in)[..., :h, :w]
        else:
            ab = F.interpolate(G(F.interpolate(l_full, size=(size, size), mode="bilinear", antialias=True,
                                               align_corners=False)),
                               size=(h, w), mode="bilinear", align_corners=False)
        return color.model_to_rgb(l_full, ab)
    inp = gray(rgb) * 2 - 1 if task.in_channels == 1 else rgb * 2 - 1
    if full_res:
        x, _ = _pad_to(inp, 2 ** G.num_downs)
        out = G(x)[..., :h, :w]
    else:
        small = F.interpolate(inp, size=(size, size), mode="bicubic", antialias=True, align_corners=False)
        out = F.interpolate(G(small), size=(h, w), mode="bicubic", align_corners=False)
    return ((out + 1) / 2).clamp(0, 1)


def run(args) -> int:
    from PIL import Image
    from torchvision.utils import save_image

    from p2p.data.folder import open_rgb

    if args.ab and (args.task or "paired") != "paired":
        raise UsageError("--ab only applies to --task paired")
    G, task, cfg = load_predictor(args.checkpoint, args.task, args.size, args.direction)
    device = _device(args.device)
    G = G.to(device)
    out_dir = Path(args.out)
    out_dir.mkdir(parents=True, exist_ok=True)
    files = list_inputs(args.inputs)
    full_res = args.full_res or task.name == "restore"
    for path in files:
        try:
            img = open_rgb(path)
        except (OSError, ValueError, Image.DecompressionBombError) as e:
            print(f"p2p predict: skipping {path}: {e}")
            continue
        rgb = torch.from_numpy(np.array(img)).permute(2, 0, 1)[None].float().div(255)
        if task.name == "paired" and args.ab:
            half = rgb.shape[-1] // 2
            rgb = rgb[..., :half] if cfg.task.direction == "AtoB" else rgb[..., half:2 * half]
        out = predict_image(G, task, rgb.to(device), cfg.data.image_size, full_res)
        save_image(out.cpu(), out_dir / f"{path.stem}.png")
    print(f"p2p predict: wrote {len(files)} image(s) to {out_dir}")
    return 0
