"""What a training-step benchmark trains: the trainer's `Config` for a named model (full:
U-Net-256 + 70x70 PatchGAN; small: the config defaults, i.e. the demo's networks) with optional
width/depth overrides, an image size and a batch size, and the batch `p2p train` would feed for
that config. `p2p bench step`, `p2p bench ranks` and its workers all start from here and
build the rest with the trainer's own functions."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from p2p.config import Config, load_config, with_values
from p2p.errors import UsageError

# name -> model.* values over the config defaults ("small" is the defaults themselves)
MODELS = {"full": {"ngf": 64, "num_downs": 8, "ndf": 64}, "small": {}}
# pix2pix resizes to 286 before its random 256 crop
PIX2PIX_LOAD_SIZE, PIX2PIX_IMAGE_SIZE = 286, 256


def load_size_for(image_size: int) -> int:
    """The load size pix2pix pairs with `image_size` (286 for 256), for the random crop's margin."""
    return max(image_size, round(image_size * PIX2PIX_LOAD_SIZE / PIX2PIX_IMAGE_SIZE))


@dataclass(frozen=True)
class ModelSizes:
    name: str  # full, small, or custom when --ngf/--ndf/--num-downs change the named model
    ngf: int
    num_downs: int
    ndf: int


def model_sizes(model: str, ngf: int | None = None, ndf: int | None = None,
                num_downs: int | None = None) -> ModelSizes:
    """The named model's sizes, each one replaced where given."""
    if model not in MODELS:
        raise UsageError(f"--model {model!r}: choose one of {', '.join(MODELS)}")
    defaults = load_config().model
    named = {"ngf": defaults.ngf, "num_downs": defaults.num_downs, "ndf": defaults.ndf, **MODELS[model]}
    given = {"ngf": ngf, "num_downs": num_downs, "ndf": ndf}
    require_positive({k: v for k, v in given.items() if v is not None})
    sizes = {k: named[k] if v is None else v for k, v in given.items()}
    return ModelSizes(model if sizes == named else "custom", **sizes)


@dataclass(frozen=True)
class WorkloadOptions:
    """What a step benchmark is asked to train; None picks the device's default."""

    device: str = "auto"
    model: str | None = None  # full or small (default: full on GPU, small on CPU)
    ngf: int | None = None  # each overrides the model's own size
    ndf: int | None = None
    num_downs: int | None = None
    batch_size: int | None = None  # per process
    image_size: int | None = None
    steps: int | None = None  # per timed round
    warmup: int | None = None  # untimed steps first
    quick: bool = False

    def model_sizes(self, cuda: bool) -> ModelSizes:
        return model_sizes(self.model or ("full" if cuda else "small"), self.ngf, self.ndf, self.num_downs)


@dataclass(frozen=True)
class WorkloadPlan:
    """Those options with every default filled in, checked."""

    sizes: ModelSizes
    batch_size: int
    image_size: int
    steps: int
    warmup: int
    repeats: int  # timed rounds

    def __post_init__(self):
        check_image_size(self.image_size, self.sizes)
        require_positive({"batch_size": self.batch_size, "steps": self.steps, "repeats": self.repeats})


def require_positive(values: dict[str, int]) -> None:
    for key, value in values.items():
        if value < 1:
            raise UsageError(f"--{key.replace('_', '-')} must be >= 1")


def check_image_size(image_size: int, sizes: ModelSizes) -> None:
    """The U-Net halves the image num_downs times: say so with the flags' names, before the
    config says it with its keys."""
    if image_size < 1 or image_size % (2 ** sizes.num_downs):
        raise UsageError(f"--image-size {image_size}: must be divisible by 2**num_downs = {2 ** sizes.num_downs} "
                         f"for the {sizes.name} model")


def workload_config(sizes: ModelSizes, image_size: int, batch_size: int, precision: str = "fp32",
                    device: str = "auto") -> Config:
    """The trainer's config for these sizes: defaults everywhere else (colorization, Adam,
    losses), a fresh run (never resumed from a run folder), the pix2pix load/crop ratio."""
    return with_values(load_config(), {
        "model.ngf": sizes.ngf, "model.num_downs": sizes.num_downs, "model.ndf": sizes.ndf,
        "data.image_size": image_size, "data.load_size": load_size_for(image_size),
        "train.batch_size": batch_size, "train.precision": precision, "train.device": device,
        "run.resume": False,
    })


def trainer_batch(cfg: Config, task, device: torch.device, rank: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """(input, target) as `p2p train` gives them to the step: a uint8 N x 3 x load x load batch of
    photographs (what every loader yields) moved to `device`, then the task's own `prepare` there
    with the loop's per-(seed, rank, step) generators (as `Run.prepare`, at step 0). For
    colorization that is L and ab as channel views of one Lab tensor, strided, not contiguous."""
    from p2p.bench.photos import photographs
    from p2p.train.run import prepare_batch

    images = torch.from_numpy(photographs(cfg.data.load_size, cfg.train.batch_size)).permute(0, 3, 1, 2)
    return prepare_batch(task, images.contiguous().to(device), cfg, rank, 0)
