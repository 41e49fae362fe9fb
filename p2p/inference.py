"""Running a trained generator on images of any size, the way training showed it images.

Geometry (`Geometry.mode`):
- "scale" (the default): resize so the short side is the training scale, keeping the aspect
  ratio, pad (reflect) to a multiple of the network's stride, run, crop the padding off and
  upsample the output to the original size. The training scale is the short side the trainer
  resized images to before its random crop, the checkpoint's `data.load_size`: objects had that
  scale in every training crop, whatever `data.image_size` (the crop) was. For official pix2pix
  weights, which carry no config, it is 256, the official `test.py` load size.
- "full": the fully convolutional generator on the whole image at its own resolution (padded).
  The default for a task whose spec says so (restore: its degradations are drawn on the pixel
  grid the model sees, so the native resolution is its training scale).
- "squash": the official pix2pix test-time resize of the whole image to size x size.

How output and input become RGB is the task spec's `recombination`: colorize predicts ab at the
model's scale, upsamples it and recombines it with the original full-resolution L, so the output
keeps every detail of the input; other tasks return the upsampled output. `p2p predict`, `p2p
eval` and validation during training all go through `predict`, so a reported score is the score
of the images a user gets.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
from torch.nn import functional as F

from p2p.config import Config, TaskConfig, from_tree, load_config, with_values
from p2p.errors import CheckpointError, UsageError
from p2p.models import load_generator, read_checkpoint, select_generator_weights
from p2p.geometry import OFFICIAL_TEST_SIZE, Geometry, training_geometry
from p2p.specs.tasks import TASKS
from p2p.tasks import Task, build_task


@dataclass
class Predictor:
    """A generator (in eval mode, or train mode when asked) with the task and config it was
    trained with."""

    G: torch.nn.Module
    task: Task
    cfg: Config
    official: bool  # official pix2pix weights: no config of their own
    weights: str = "raw"  # which of a checkpoint's generators: "ema" or "raw"

    def geometry(self, size: int | None = None, full_res: bool = False, squash: bool = False) -> Geometry:
        """The default geometry for this model, or the one the flags ask for."""
        if full_res and squash:
            raise UsageError("--full-res and --squash exclude each other")
        if size is not None and size < 1:
            raise UsageError(f"--size {size} must be positive")
        if squash:
            side = size or (OFFICIAL_TEST_SIZE if self.official else self.cfg.data.image_size)
            if side % self.G.stride:
                raise UsageError(f"--size {side} must be divisible by the network's stride {self.G.stride}")
            return Geometry("squash", side)
        if full_res:
            return Geometry("full", 0)
        if size is not None:
            return Geometry("scale", size)
        return training_geometry(self.task, OFFICIAL_TEST_SIZE if self.official else self.cfg.data.load_size)


def task_channels() -> dict[str, tuple[int, int]]:
    """Each registered task's generator channels (in, out) at its default task config."""
    return {spec.name: spec.channels(TaskConfig(name=spec.name)) for spec in TASKS}


def infer_task(in_ch: int, out_ch: int) -> str | None:
    """The task of weights that record none (official pix2pix): the first registered task whose
    generator maps in_ch -> out_ch; None when no task does."""
    return next((name for name, ch in task_channels().items() if ch == (in_ch, out_ch)), None)


def load_predictor(path: str, task_name: str | None = None, direction: str | None = None, weights: str = "auto",
                   train_mode: bool = False) -> Predictor:
    """A predictor from any supported checkpoint or model folder. For official weights the task is inferred from
    the channel counts (`infer_task`: 1->2 colorize, 1->3 gray2rgb, 3->3 paired). `weights`: a checkpoint's
    EMA or raw generator (p2p.models.load_generator). `train_mode`: the paper's test-time
    behaviour, the official test.py default without --eval: dropout on and BatchNorm with the
    statistics of the batch it sees (each image, here); the global torch RNG that dropout draws
    from is seeded, so two runs give the same images."""
    from p2p.model_folder import is_model_folder, load_folder

    if is_model_folder(path):  # safetensors and config.json, read without unpickling
        G, cfg, used = load_folder(path, weights)
        tree = cfg.to_dict()
    else:
        obj = read_checkpoint(path)
        G = load_generator(obj, weights=weights, name=str(path))
        _, used = select_generator_weights(obj, weights)
        tree = obj.get("config") if isinstance(obj, dict) and obj.get("format") == "p2p" else None
        try:  # the recorded config is as untrusted as the file: the schema's bounds hold for it too
            cfg = load_config() if tree is None else from_tree(tree)
        except UsageError as e:
            raise CheckpointError(f"{path}: its recorded config is refused: {e}", str(path)) from None
    channels = (G.in_channels, G.out_channels)
    name = task_name or (cfg.task.name if tree is not None else infer_task(*channels))
    if name is None:
        known = ", ".join(f"{n} {i}->{o}" for n, (i, o) in task_channels().items())
        raise UsageError(f"{path} maps {channels[0]}->{channels[1]} channels, which no task does ({known})")
    cfg = with_values(cfg, {"task.name": name, "task.direction": direction or cfg.task.direction})
    task = build_task(cfg.task)
    if (task.in_channels, task.out_channels) != channels:
        raise UsageError(f"task {name} needs a {task.in_channels}->{task.out_channels} channel generator; "
                         f"{path} maps {channels[0]}->{channels[1]}")
    if train_mode:
        torch.manual_seed(cfg.run.seed)
    return Predictor(G.train(train_mode), task, cfg, tree is None, used)


def pad_to(x: torch.Tensor, multiple: int, at_least: int = 0) -> torch.Tensor:
    """Pad the bottom and right to a multiple, and to `at_least` (itself a multiple: pix2pixHD's
    generators need 2 px at their coarsest scale), reflecting; replicating where the image is too small."""
    h, w = x.shape[-2:]
    ph, pw = max(-h % multiple, at_least - h), max(-w % multiple, at_least - w)
    if not ph and not pw:
        return x
    return F.pad(x, (0, pw, 0, ph), mode="reflect" if min(h, w) > max(ph, pw) else "replicate")


def resize(x: torch.Tensor, size: tuple[int, int], mode: str = "bicubic") -> torch.Tensor:
    if tuple(x.shape[-2:]) == tuple(size):
        return x
    if mode.startswith("nearest"):  # label maps: ids are never blended
        return F.interpolate(x, size=size, mode=mode)
    return F.interpolate(x, size=size, mode=mode, antialias=True, align_corners=False)


def scaled_size(h: int, w: int, short: int) -> tuple[int, int]:
    """(h, w) with the short side at `short` and the aspect ratio kept."""
    s = short / min(h, w)
    return max(short, round(h * s)), max(short, round(w * s))


def _forward(G, x: torch.Tensor, precision=None) -> torch.Tensor:
    if precision is None:
        return G(x)
    with precision.autocast():
        return G(x)


@torch.no_grad()
def predict(G, task: Task, rgb: torch.Tensor, geometry: Geometry, precision=None, tiling=None) -> torch.Tensor:
    """RGB in [0, 1] (N x 3 x H x W) -> the task's output RGB in [0, 1] at H x W. `tiling`
    (p2p.tiling.Tiling) runs the model input in overlapping tiles."""
    h, w = rgb.shape[-2:]
    how = getattr(task, "input_resize", "bicubic")  # labels: nearest
    if geometry.mode == "full":
        seen = rgb
    elif geometry.mode == "squash":
        seen = resize(rgb, (geometry.size, geometry.size), how).clamp_(0, 1)
    else:
        seen = resize(rgb, scaled_size(h, w, geometry.size), how).clamp_(0, 1)
    x = task.model_input(seen)
    sh, sw = x.shape[-2:]
    padded = pad_to(x, G.stride, getattr(G, "min_side", 0))
    if tiling is None:
        out = _forward(G, padded, precision)
    else:
        from p2p.tiling import run_tiled

        out = run_tiled(G, padded, tiling, lambda net, t: _forward(net, t, precision))
    out = out[..., :sh, :sw].float()
    if task.spec.recombination == "input_lightness":  # ab at the model's scale, L at full resolution
        ab = F.interpolate(out, size=(h, w), mode="bilinear", align_corners=False) if (sh, sw) != (h, w) else out
        return task.output_rgb(task.model_input(rgb), ab)
    if (sh, sw) != (h, w):
        out = F.interpolate(out, size=(h, w), mode="bicubic", align_corners=False)
    return task.output_rgb(None, out)


def list_inputs(inputs: list[str]) -> list[Path]:
    from p2p.data.images import list_images

    files = []
    for item in inputs:
        p = Path(item)
        if p.is_dir():
            files += list_images(p)
        elif p.is_file():
            files.append(p)
        elif p.exists():  # a FIFO, socket or device: never opened (a FIFO would block)
            raise UsageError(f"input {item} is not a regular file or a folder")
        else:
            raise UsageError(f"input not found: {item}")
    if not files:
        raise UsageError("no input images found")
    return files
