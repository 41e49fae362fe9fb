"""Tasks turn a uint8 RGB batch (N x 3 x H x W, on the training device) into the generator's
(input, target) in float32, and model tensors back into viewable RGB in [0, 1].

- colorize: L -> ab of CIELAB, normalised as the official colorization model (L/50-1, ab/110);
  the output is recombined with the input L.
- gray2rgb: one gray channel (ITU-R 601 luma, as PIL's "L") -> RGB, both in [-1, 1].
- paired:   A|B side by side in one image; `direction` picks the input half. Both halves get
  the same crop and flip because they are cropped as one 6-channel image.
- restore:  the clean image is degraded on the fly (blur, Gaussian noise, JPEG) -> clean.

Every random choice comes from the generator passed in (see p2p.augment), never a global RNG.
"""

from __future__ import annotations

import math
import warnings

import torch
from torch.nn import functional as F

from p2p import color
from p2p.augment import apply_windows, crop_flip, draw_windows
from p2p.config import TaskConfig
from p2p.fused import DeviceStep

_LUMA = (0.299, 0.587, 0.114)


def _to_unit(x: torch.Tensor) -> torch.Tensor:
    return x.float().div_(255.0)


def _signed(x01: torch.Tensor) -> torch.Tensor:
    return x01 * 2.0 - 1.0


def _unsigned(x: torch.Tensor) -> torch.Tensor:
    return ((x.float() + 1.0) * 0.5).clamp_(0.0, 1.0)


def gray(rgb01: torch.Tensor) -> torch.Tensor:
    """Luma of N x 3 x H x W RGB in [0,1] -> N x 1 x H x W."""
    r, g, b = rgb01.unbind(1)
    return (_LUMA[0] * r + _LUMA[1] * g + _LUMA[2] * b).unsqueeze(1)


class Task:
    """Base: crop/flip, then `convert` the cropped uint8 batch to (input, target)."""

    name = "task"
    in_channels = 3
    out_channels = 3
    fused_device_step = False  # True: prepare() runs through p2p.fused where it can

    def __init__(self, cfg: TaskConfig, device_step: str = "fused"):
        self.cfg = cfg
        self.device_step = DeviceStep(device_step)  # colorize, gray2rgb: crop..normalise in one kernel
        self.notice = None  # where a fallback is reported (the run's notices); None: a Python warning

    def prepare(self, images: torch.Tensor, size: int, gen: torch.Generator | None, flip: bool = True,
                crop_gen: torch.Generator | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """uint8 batch -> (input, target) float32. `crop_gen` None = centre crop (validation);
        `gen` drives everything else random (degradations)."""
        return self.convert(crop_flip(images, size, crop_gen, flip), gen)

    def convert(self, images: torch.Tensor, gen: torch.Generator | None) -> tuple[torch.Tensor, torch.Tensor]:
        raise NotImplementedError

    def model_input(self, rgb01: torch.Tensor) -> torch.Tensor:
        """What the generator sees for an RGB image in [0, 1] (N x 3 x H x W), any size: the
        input half of `convert`, for inference."""
        return _signed(rgb01)

    def eval_pair(self, images: torch.Tensor, gen: torch.Generator | None) -> tuple[torch.Tensor, torch.Tensor]:
        """A uint8 held-out image (N x 3 x H x W, whole) -> (the RGB a user would give `p2p
        predict`, the RGB it should return), both float in [0, 1] at the image's own size."""
        rgb = _to_unit(images)
        return rgb, rgb

    def output_rgb(self, inp: torch.Tensor, out: torch.Tensor) -> torch.Tensor:
        return _unsigned(out)

    def output_rgb_autograd(self, inp: torch.Tensor, out: torch.Tensor) -> torch.Tensor:
        """`output_rgb` through operations autograd follows (for losses on the RGB image)."""
        return self.output_rgb(inp, out)

    def input_rgb(self, inp: torch.Tensor) -> torch.Tensor:
        x = _unsigned(inp)
        return x.expand(-1, 3, -1, -1) if x.shape[1] == 1 else x


class FusedColour(Task):
    """A task whose whole device step has a fused kernel (p2p.fused): crop, flip and `convert`
    in one pass; the eager crop + `convert` where it cannot run. Both crop by the same windows."""

    fused_device_step = True

    def prepare(self, images, size, gen, flip=True, crop_gen=None):
        n, _, h, w = images.shape
        windows = draw_windows(n, h, w, size, crop_gen, flip)
        fused = getattr(self.device_step, self.name)(images, windows, size)
        if fused is not None:
            return fused
        return self.convert(apply_windows(images, windows, size), gen)


class Colorize(FusedColour):
    name, in_channels, out_channels = "colorize", 1, 2

    def convert(self, images, gen):
        lab = color.rgb_to_lab(images)  # uint8 fast path; float32 out
        # color.normalize_l / normalize_ab, in place: two full-size temporaries fewer, which
        # halves this step's cost on a CPU.
        lab[:, :1].div_(50.0).sub_(1.0)
        lab[:, 1:].div_(110.0)
        return lab[:, :1], lab[:, 1:]

    def output_rgb(self, inp, out):
        return color.model_to_rgb(inp.float(), out.float())

    def output_rgb_autograd(self, inp, out):
        lab = torch.cat([color.denormalize_l(inp.float()), color.denormalize_ab(out.float())], dim=1)
        return color.lab_to_rgb_autograd(lab)

    def input_rgb(self, inp):
        return color.model_to_rgb(inp.float(), torch.zeros_like(inp.float()).expand(-1, 2, -1, -1))

    def model_input(self, rgb01):
        return color.normalize_l(color.rgb_to_lightness(rgb01))


class Gray2RGB(FusedColour):
    name, in_channels, out_channels = "gray2rgb", 1, 3

    def convert(self, images, gen):
        rgb = _to_unit(images)
        return _signed(gray(rgb)), _signed(rgb)

    def model_input(self, rgb01):
        return _signed(gray(rgb01))


class Paired(Task):
    name = "paired"

    def prepare(self, images, size, gen, flip=True, crop_gen=None):
        w = images.shape[-1] // 2
        a, b = images[..., :w], images[..., w:2 * w]
        ab = crop_flip(torch.cat([a, b], dim=1), size, crop_gen, flip)
        return self.convert(ab, gen)

    def convert(self, images, gen):
        a, b = _signed(_to_unit(images[:, :3])), _signed(_to_unit(images[:, 3:]))
        return (a, b) if self.cfg.direction == "AtoB" else (b, a)

    def eval_pair(self, images, gen):
        w = images.shape[-1] // 2
        a, b = _to_unit(images[..., :w]), _to_unit(images[..., w:2 * w])
        return (a, b) if self.cfg.direction == "AtoB" else (b, a)


class Restore(Task):
    name = "restore"

    def convert(self, images, gen):
        clean = _to_unit(images)
        return _signed(degrade(clean, self.cfg, gen, self.notice)), _signed(clean)

    def eval_pair(self, images, gen):
        clean = _to_unit(images)
        return degrade(clean, self.cfg, gen, self.notice), clean


def _gaussian_kernels(sigmas: torch.Tensor, radius: int) -> torch.Tensor:
    """One normalised 1-D Gaussian per sigma (N x (2r+1)); sigma 0 gives a delta (no blur)."""
    x = torch.arange(-radius, radius + 1, dtype=torch.float32)
    s = sigmas.clamp_min(1e-6)[:, None]
    k = torch.exp(-0.5 * (x[None, :] / s) ** 2)
    return k / k.sum(1, keepdim=True)


def degrade(clean: torch.Tensor, cfg: TaskConfig, gen: torch.Generator | None, notice=None) -> torch.Tensor:
    """Blur (optics), then noise (sensor), then JPEG (storage): a camera's order.

    Strengths are drawn per image: blur sigma in [0, blur_sigma], noise std in [0, noise_std],
    JPEG quality in [jpeg_quality, 95]. `gen` None uses the middle of each range. The per-image
    strengths come from `gen` (a CPU generator: n numbers); the noise itself is drawn where the
    images are (on a GPU from a device generator seeded from `gen`: no full-size host tensor and
    copy per step), and on a GPU the JPEG round trip runs in nvJPEG (`jpeg_round_trip`). On the
    CPU every draw is the same as it always was.
    """
    n, c, h, w = clean.shape
    dev = clean.device

    def draw(lo: float, hi: float) -> torch.Tensor:
        if gen is None:
            return torch.full((n,), (lo + hi) / 2)
        return lo + (hi - lo) * torch.rand(n, generator=gen)

    x = clean
    if cfg.blur_sigma > 0:
        radius = max(1, math.ceil(3 * cfg.blur_sigma))
        k = _gaussian_kernels(draw(0.0, cfg.blur_sigma), radius).to(dev)
        # Separable blur as grouped convs: each (image, channel) plane gets its image's kernel.
        kk = k.repeat_interleave(c, 0)
        planes = F.pad(x.reshape(1, n * c, h, w), (radius, radius, radius, radius), mode="reflect")
        planes = F.conv2d(planes, kk[:, None, None, :], groups=n * c)
        planes = F.conv2d(planes, kk[:, None, :, None], groups=n * c)
        x = planes.reshape(n, c, h, w)
    if cfg.noise_std > 0:
        std = draw(0.0, cfg.noise_std).to(dev)[:, None, None, None]
        if gen is None:
            noise = torch.zeros(x.shape, device=dev)
        else:
            noise = torch.randn(x.shape, generator=generator_on(gen, dev), device=dev)
        x = x + std * noise
    x = x.clamp(0.0, 1.0)
    if cfg.jpeg_quality < 100:
        q = draw(float(cfg.jpeg_quality), 95.0).round().int().tolist()
        u8 = (x * 255.0).round().to(torch.uint8)
        x = jpeg_round_trip(u8, q, notice).float().div_(255.0)
    return x


def generator_on(gen: torch.Generator, device: torch.device) -> torch.Generator:
    """`gen` itself when it lives on `device`; else a generator there, seeded by one draw from
    `gen` (so the stream stays a function of gen's seed: (seed, rank, step) in training)."""
    if gen.device.type == device.type:
        return gen
    seed = int(torch.randint(0, 2**62, (1,), generator=gen))
    return torch.Generator(device=device).manual_seed(seed)


_gpu_jpeg = {"ok": True}  # False once nvJPEG failed in this process: the CPU path from then on


def jpeg_round_trip(u8: torch.Tensor, qualities: list[int], notice=None) -> torch.Tensor:
    """Each uint8 image (N x C x H x W) JPEG-encoded at its quality and decoded again, on the
    images' device. CUDA: torchvision's nvJPEG encoder (one call per distinct quality, the
    batched form) and decoder; decode_jpeg reads the encoded bytes from host memory, so only
    those (a few KB an image) cross to the host. CPU, or a torchvision without nvJPEG:
    libjpeg-turbo, the twin (nvJPEG's output differs from it by rounding)."""
    from torchvision.io import decode_jpeg, encode_jpeg

    if u8.is_cuda and _gpu_jpeg["ok"]:
        try:
            coded: list = [None] * len(qualities)
            for qi in sorted(set(qualities)):
                idx = [i for i, q in enumerate(qualities) if q == qi]
                for i, data in zip(idx, encode_jpeg([u8[i].contiguous() for i in idx], quality=qi)):
                    coded[i] = data.cpu()
            return torch.stack(decode_jpeg(coded, device=u8.device))
        except RuntimeError as e:  # torchvision built without nvJPEG, or an nvJPEG failure
            _gpu_jpeg["ok"] = False
            (notice or warnings.warn)(f"restore: nvJPEG encode/decode failed on {u8.device} "
                                      f"({str(e).splitlines()[0]}); JPEG degradation runs on the CPU from now on")
    host = u8.cpu()
    coded = [encode_jpeg(img, quality=qi) for img, qi in zip(host, qualities)]
    return torch.stack([decode_jpeg(d) for d in coded]).to(u8.device)


TASKS = {t.name: t for t in (Colorize, Gray2RGB, Paired, Restore)}

from p2p.label_task import LabelMaps  # noqa: E402  (its module derives from Task, defined above)

TASKS[LabelMaps.name] = LabelMaps


def build_task(cfg: TaskConfig, device_step: str = "fused") -> Task:
    """The task of `cfg`; `device_step` (data.device_step) picks the fused or eager device step."""
    return TASKS[cfg.name](cfg, device_step)
