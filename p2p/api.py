"""The Python API: a trained generator in three lines, the library `p2p predict` itself runs.

    import p2p
    model = p2p.load_model("runs/demo/checkpoints/last.pt")   # or latest_net_G.pth, or a model folder
    out = model.predict(Image.open("photo.jpg"))              # a PIL image back, the input's size

`load_model` reads a p2p checkpoint, official pix2pix `latest_net_G.pth` or a model folder
(p2p.model_folder) through `p2p.inference.load_predictor`, as every command does; `Model.run` is
`p2p.inference.predict` on the chosen device and precision; `p2p predict` is `load_model`,
`rgb_batch` of each decoded image, `Model.run` and torchvision's `save_image`, whose rounding
`to_uint8` repeats, so the API's pixels are the command's. Nothing is printed unless
`verbose=True`; errors are `p2p.errors.UsageError` (a `CheckpointError` for a file that cannot be
used), one line each.

`Model.predict` takes a PIL image (EXIF orientation applied, converted to RGB, as `p2p predict`
reads files), an H x W x 3 uint8 NumPy array or an N x 3 x H x W tensor (uint8, or float in
[0, 1]), and answers in kind: a PIL RGB image, an H x W x 3 uint8 array, a uint8 tensor, or a
float tensor in [0, 1] (not rounded).
"""

from __future__ import annotations

import os
import sys

import numpy as np
import torch

from p2p.errors import UsageError

PRECISIONS = ("fp32", "bf16", "fp16")


def rgb_batch(image) -> torch.Tensor:
    """A PIL image, an H x W x 3 uint8 array or an N x 3 x H x W uint8/float tensor -> float RGB in
    [0, 1], N x 3 x H x W on the CPU: what `p2p.inference.predict` takes."""
    from PIL import Image, ImageOps

    if isinstance(image, Image.Image):
        image = np.array(ImageOps.exif_transpose(image).convert("RGB"))
    if isinstance(image, np.ndarray):
        if image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3:
            raise UsageError(f"a NumPy image must be H x W x 3 uint8; got {image.dtype} of shape {image.shape}")
        # a copy: a caller's array may be read-only (np.asarray of a PIL image), which torch warns about
        return torch.from_numpy(np.array(image)).permute(2, 0, 1)[None].float().div(255)
    if not isinstance(image, torch.Tensor):
        raise UsageError(f"predict takes a PIL image, a NumPy array or a tensor; got {type(image).__name__}")
    if image.dim() != 4 or image.shape[1] != 3:
        raise UsageError(f"a tensor must be an N x 3 x H x W batch; got shape {tuple(image.shape)} "
                         f"(one image: image[None])")
    if image.dtype == torch.uint8:
        return image.detach().cpu().float().div(255)
    if not image.is_floating_point():
        raise UsageError(f"a tensor must be uint8 or float in [0, 1]; got {image.dtype}")
    x = image.detach().cpu().float()
    if x.numel() and not (torch.isfinite(x).all() and x.min() >= 0 and x.max() <= 1):
        raise UsageError("a float tensor must hold RGB values in [0, 1] (divide uint8 images by 255)")
    return x


def to_uint8(rgb: torch.Tensor) -> torch.Tensor:
    """[0, 1] -> uint8, rounded as torchvision's `save_image` does (what `p2p predict` writes)."""
    return rgb.mul(255).add_(0.5).clamp_(0, 255).to(torch.uint8)


class Model:
    """A loaded generator with its task, training config and default geometry, on a device."""

    def __init__(self, predictor, device: torch.device, precision: str = "fp32"):
        from p2p.precision import Precision

        if precision not in PRECISIONS:
            raise UsageError(f"precision={precision!r}: choose one of {', '.join(PRECISIONS)}")
        self.predictor = predictor
        self.device = device
        self.precision = precision
        self._autocast = Precision(precision, device) if precision != "fp32" else None
        self.G = predictor.G.to(device)

    @property
    def task(self):
        return self.predictor.task

    @property
    def weights(self) -> str:
        """Which generator of the file runs: "ema" or "raw"."""
        return self.predictor.weights

    def geometry(self, size: int | None = None, full_res: bool = False, squash: bool = False):
        """How images are shown to the model (p2p.inference.Geometry): the training scale by default."""
        return self.predictor.geometry(size, full_res, squash)

    def tiling(self, tile: int = 0, overlap: int | None = None):
        """p2p.tiling.Tiling of `tile` x `tile` pixels (0: whole images), checked against the stride (and the coarsest
        scale's smallest side)."""
        from p2p.tiling import Tiling

        if not tile:
            if overlap is not None:
                raise UsageError("--overlap needs --tile")
            return None
        tiling = Tiling(tile, tile // 4 if overlap is None else overlap)
        tiling.check(self.G.stride, getattr(self.G, "min_side", 0))
        return tiling

    def run(self, rgb: torch.Tensor, geometry, tiling=None) -> torch.Tensor:
        """Float RGB in [0, 1] (N x 3 x H x W) -> the task's output RGB in [0, 1], same size, on the CPU."""
        from p2p.inference import predict

        return predict(self.G, self.task, rgb.to(self.device), geometry, self._autocast, tiling).cpu()

    def predict(self, image, *, size: int | None = None, full_res: bool = False, squash: bool = False,
                tile: int = 0, overlap: int | None = None):
        """The model's output for `image`, in the input's kind (see the module docstring); the
        keywords are `p2p predict`'s --size, --full-res, --squash, --tile and --overlap."""
        from PIL import Image

        geometry, tiling = self.geometry(size, full_res, squash), self.tiling(tile, overlap)
        out = self.run(rgb_batch(image), geometry, tiling)
        if isinstance(image, torch.Tensor):
            return to_uint8(out) if image.dtype == torch.uint8 else out
        pixels = to_uint8(out[0]).permute(1, 2, 0).numpy()
        return Image.fromarray(pixels) if isinstance(image, Image.Image) else pixels


def load_model(path: str | os.PathLike, *, device: str | torch.device = "auto", precision: str = "fp32",
               task: str | None = None, direction: str | None = None, weights: str = "auto",
               train_mode: bool = False, verbose: bool = False) -> Model:
    """A `Model` from a p2p checkpoint, an official `latest_net_G.pth` or a model folder.

    device: auto (CUDA when present), cpu, cuda or cuda:N. precision: fp32, or bf16/fp16
    autocast of the generator. task/direction: for official weights, which record neither.
    weights: "auto" (a checkpoint's EMA generator when it has one), "ema" or "raw".
    train_mode: dropout on and batch statistics (the paper's test-time behaviour)."""
    from p2p.dist import resolve_device
    from p2p.inference import load_predictor

    if precision not in PRECISIONS:  # before reading anything
        raise UsageError(f"precision={precision!r}: choose one of {', '.join(PRECISIONS)}")
    predictor = load_predictor(os.fspath(path), task, direction, weights, train_mode)
    model = Model(predictor, resolve_device(str(device), "device"), precision)
    if verbose:
        print(f"p2p: loaded {os.fspath(path)} ({model.task.name}, {model.weights} weights, {model.device}, "
              f"{precision})", file=sys.stderr)
    return model
