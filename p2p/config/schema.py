"""The config schema: one small typed dataclass per section, each field with a default and a
one-line `help`, each section checking its own values in `__post_init__` (so a section built
anywhere, from YAML, by `dataclasses.replace` or by hand, is valid or raises `UsageError`), and
`Config` checking what spans sections.

The defaults are the demo: colorization on the photographs embedded in scikit-image with a
model small enough to learn visibly in a few minutes on two CPU cores. The official full-size
pix2pix settings live in `configs/` (e.g. `configs/colorize_coco.yaml`).
"""

from __future__ import annotations

import dataclasses
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import ClassVar

import yaml

from p2p.config.section import BOUNDS, MAX_COUNT, MAX_SIDE, MAX_WEIGHT, Section, _f, _require
from p2p.limits import DEFAULT_MAX_PIXELS
from p2p.run_folder import run_folder
from p2p.specs.tasks import TASKS
from p2p.specs.backends import BACKENDS as backend_table
from p2p.specs.generators import GENERATORS
from p2p.specs.losses import LOSSES

NORMS = ("batch", "syncbatch", "instance", "none")
GAN_MODES = ("vanilla", "lsgan", "wgangp", "hinge")
LR_POLICIES = ("linear", "step", "cosine", "constant", "official")
OPTIM_IMPLS = ("fused", "foreach", "plain")
INIT_TYPES = ("normal", "xavier", "kaiming", "orthogonal")
PRECISIONS = ("fp32", "bf16", "fp16")
BACKENDS = ("auto", *backend_table.names())  # auto: p2p.data.auto_backend
DEVICES = ("auto", "cpu", "cuda")
DEVICE_STEPS = ("fused", "eager")
WORKER_KINDS = ("process", "thread")
ACTIVATION_CHECKPOINTING = ("none", "generator", "all")
# what best.pt may be chosen by: the held-out metrics of p2p.evaluation that have a better side
BEST_METRICS = ("psnr", "ssim", "l1", "lpips", "fid", "kid", "delta_colorfulness")


@dataclass(frozen=True)
class RunConfig(Section):
    SECTION: ClassVar[str] = "run"

    name: str = _f("colorize-demo", "run folder name under run.out_dir")
    out_dir: str = _f("runs", "parent folder of run folders")
    seed: int = _f(0, "seed for weights, data order and augmentation")
    deterministic: bool = _f(False, "deterministic kernels (bit-exact resume on CPU); slower")
    resume: bool = _f(True, "resume from <run>/checkpoints/last.pt when it exists")
    trackers: str = _f("tensorboard", "experiment trackers on rank 0, comma-separated: tensorboard, wandb (offline "
                       "unless WANDB_MODE), mlflow (<run>/mlruns unless MLFLOW_TRACKING_URI); '' = none")

    def check(self):
        self.within(0, 2**63 - 1, "seed")  # torch.manual_seed takes 64 bits; p2p mixes seeds into 63
        known = ("tensorboard", "wandb", "mlflow", "none")
        for name in (n.strip() for n in self.trackers.split(",") if n.strip()):
            self.need(name in known, "trackers", f"{name!r} is not a tracker; choose from tensorboard, wandb, mlflow")


@dataclass(frozen=True)
class TaskConfig(Section):
    SECTION: ClassVar[str] = "task"

    name: str = _f("colorize", "what the generator learns", TASKS.names())
    direction: str = _f("AtoB", "paired task: which half is the input", ("AtoB", "BtoA"))
    noise_std: float = _f(0.1, "restore: largest Gaussian noise std (image range 0..1); 0 disables")
    blur_sigma: float = _f(1.5, "restore: largest Gaussian blur sigma in pixels; 0 disables")
    jpeg_quality: int = _f(30, "restore: lowest JPEG quality, drawn from [q, 95]; 100 disables")
    label_nc: int = _f(35, "labels: classes of the label maps (ids 0..label_nc-1, one-hot on the device; "
                       "Cityscapes labelIds 35, ADE20K 151); at most 255: ids ride in a uint8 channel and "
                       "255 marks an id too large for it")
    instance_boundaries: bool = _f(False, "labels: add pix2pixHD's instance-boundary channel (needs instance maps)")

    def check(self):
        self.within(0, 1, "noise_std")  # the image range is 0..1
        self.within(0, 64, "blur_sigma")  # the kernel is about 6 sigma wide
        self.within(1, 100, "jpeg_quality")
        self.within(1, 255, "label_nc")  # p2p.data.label_maps.MAX_LABEL_NC: ids are stored in a uint8 channel
        self.need(TASKS[self.name].input_kind != "labels" or self.direction == "AtoB", "direction",
                  "is AtoB for task.name=labels: a label map is the input, the photo the output")


@dataclass(frozen=True)
class DataConfig(Section):
    SECTION: ClassVar[str] = "data"

    source: str = _f("embedded", "'embedded' (photos inside scikit-image), an image folder, or a shard folder")
    backend: str = _f("auto", "loader; auto: folder for image folders, for shards dali (GPU, DALI installed), "
                      "else nvjpeg (GPU), else wds", BACKENDS)
    load_size: int = _f(80, "images are resized to this (short side) before the random crop")
    image_size: int = _f(64, "random crop size = model input size")
    flip: bool = _f(True, "random horizontal flip during training")
    workers: int = _f(1, "loader worker processes per rank (0 = load in the main process); presets for big data use 8")
    worker_kind: str = _f("process", "wds and nvjpeg backends: data.workers are DataLoader processes, or threads of "
                          "the training process (JPEG decode releases the GIL; no copy between processes: "
                          "faster where cores are few, e.g. CPU training)", WORKER_KINDS)
    val_source: str = _f("", "held-out images for validation; empty = the source's own val split")
    val_fraction: float = _f(0.05, "folder sources without train/ and val/ subfolders: share held out")
    val_images: int = _f(16, "how many fixed held-out images each validation uses")
    max_pixels: int = _f(DEFAULT_MAX_PIXELS, "images (and shard samples) declaring more pixels than this are skipped "
                         "from their header, before decoding (every reader; p2p shard uses the default)")
    epoch_size: int = _f(512, "embedded source: random crops per epoch")
    device_step: str = _f("fused", "crop+flip+Lab/luma+normalise on the device: fused (one kernel: C on CPU, "
                          "torch.compile on GPU; eager with a notice where it cannot build) or eager (torch ops)",
                          DEVICE_STEPS)

    def check(self):
        self.within(1, MAX_SIDE, "image_size", "load_size")
        self.need(self.load_size >= self.image_size, "load_size",
                  f"must be >= data.image_size ({self.image_size}): the random crop takes image_size from it")
        self.within(0, 1024, "workers")
        self.need(0 <= self.val_fraction < 1, "val_fraction", "must be in [0, 1)")
        BOUNDS["data.val_fraction"] = (0, 1)  # 1 itself excluded, as for the betas and ema_decay
        self.within(1, 1_000_000, "val_images")
        self.within(1, MAX_COUNT, "epoch_size")
        self.within(64 * 64, 1 << 28, "max_pixels")  # 64^2..16384^2


@dataclass(frozen=True)
class ModelConfig(Section):
    SECTION: ClassVar[str] = "model"

    generator: str = _f("unet", "; ".join(f"{g.name}: {g.help}" for g in GENERATORS) + "; "
                        + ", ".join(g.name for g in GENERATORS if not g.dropout) + " have no dropout",
                        GENERATORS.names())
    ngf: int = _f(32, "generator width (official: 64)")
    ndf: int = _f(32, "discriminator width (official: 64)")
    num_downs: int = _f(6, "U-Net depth: 8 = unet_256, 7 = unet_128; image_size must be divisible by 2**num_downs")
    n_blocks: int = _f(9, "resnet: residual blocks (9 = resnet_9blocks, 6 = resnet_6blocks)")
    n_layers_d: int = _f(3, "PatchGAN depth: 3 = 70x70 PatchGAN, 0 = PixelGAN (1x1)")
    num_d: int = _f(1, "discriminator scales: 1 = pix2pix; 2-3 = pix2pixHD's multi-scale D (a PatchGAN per scale, "
                       "each on the pair average-pooled once more)")
    norm: str = _f("batch", "normalisation layer", NORMS)
    dropout: bool = _f(True, "dropout 0.5 in the innermost 512-channel decoder blocks (official: on)")
    init_type: str = _f("normal", "weight init", INIT_TYPES)
    init_gain: float = _f(0.02, "std / gain of the weight init")
    n_downsample_global: int = _f(4, "global/local: stride-2 convs of the global generator (pix2pixHD: 4)")
    n_blocks_global: int = _f(9, "global/local: residual blocks of the global generator (pix2pixHD: 9)")
    n_local_enhancers: int = _f(1, "local: enhancers, each doubling the resolution (pix2pixHD: 1)")
    n_blocks_local: int = _f(3, "local: residual blocks per enhancer (pix2pixHD: 3)")
    init_global: str = _f("", "local: a global run's checkpoint (or pix2pixHD's global latest_net_G.pth) whose "
                          "generator starts the global part of a fresh run (its ngf = 2**n_local_enhancers x ngf)")

    def check(self):
        self.within(2, 12, "num_downs")
        self.within(1, 4096, "ngf", "ndf")  # official: 64; a conv of 4096 x 8 (U-Net) channels is already 2 GB
        self.within(0, 8, "n_layers_d")
        self.within(1, 64, "n_blocks")
        self.within(1, 6, "num_d")
        self.within(1e-8, 10, "init_gain")
        self.within(1, 8, "n_downsample_global")
        self.within(1, 64, "n_blocks_global")
        self.within(1, 4, "n_local_enhancers")
        self.within(0, 64, "n_blocks_local")
        self.need(not self.init_global or GENERATORS[self.generator].coarse_to_fine, "init_global",
                  f"starts the global part of a local enhancer; model.generator={self.generator!r} has none")

    @property
    def stride(self) -> int:
        """What image sides must be multiples of (the generator's spec says)."""
        return GENERATORS[self.generator].config_stride(self)


class _LossChecks(Section):
    """LossConfig's checks; its fields are below, the weights read from the loss-term table."""

    SECTION: ClassVar[str] = "loss"

    def check(self):
        self.within(0, MAX_WEIGHT, *(spec.field for spec in LOSSES if spec.weight_key))
        self.need(self.lambda_vgg == 0 or bool(self.vgg_weights), "lambda_vgg",
                  "needs loss.vgg_weights: a file with torchvision's vgg19 state dict, e.g. saved with "
                  "torch.save(torchvision.models.vgg19(weights='IMAGENET1K_V1').state_dict(), PATH) where "
                  "there is internet")


# The loss section: the adversarial loss, one weight per weighted term of p2p.specs.losses (its
# key, default and help come from there, so a new term needs no edit here), the VGG19 weights.
LossConfig = dataclasses.make_dataclass("LossConfig", [
    ("gan_mode", "str", _f("vanilla", "adversarial loss (hinge: SPADE/imaginaire's), averaged over discriminator "
                         "scales", GAN_MODES)),
    *((spec.field, "float", _f(spec.default, spec.help)) for spec in LOSSES if spec.weight_key),
    ("vgg_weights", "str", _f("", "local file holding torchvision's vgg19 state dict (ImageNet weights; nothing is "
                            "downloaded)")),
], bases=(_LossChecks,), frozen=True)
LossConfig.__module__ = __name__  # pickled with the config (Slurm jobs): found here by name


@dataclass(frozen=True)
class OptimConfig(Section):
    SECTION: ClassVar[str] = "optim"

    lr: float = _f(2e-4, "Adam learning rate (both networks)")
    beta1: float = _f(0.5, "Adam beta1")
    beta2: float = _f(0.999, "Adam beta2")
    lr_policy: str = _f("linear", "linear: constant then linear to 0 (per step); official: pix2pix's per-epoch "
                                  "rule (n_epochs, n_epochs_decay); step; cosine; constant", LR_POLICIES)
    decay_start: int = _f(-1, "linear: step where decay starts (-1 = half of train.max_steps)")
    step_size: int = _f(1000, "step policy: multiply lr by gamma every step_size steps")
    gamma: float = _f(0.1, "step policy: decay factor")
    n_epochs: int = _f(100, "official policy: epochs at the initial lr")
    n_epochs_decay: int = _f(100, "official policy: epochs of linear decay after them (lr never reaches 0)")
    impl: str = _f("fused", "Adam kernel: fused (foreach where missing), foreach, or plain (torch.optim.Adam's own "
                            "default, as the official code: bit-exact with its step on CPU). Fused rounds "
                            "differently in the last bit, and Adam's g/(sqrt(v)+eps) magnifies such differences "
                            "where gradients are small, so a fused run drifts off the official trajectory (the "
                            "same algorithm, not a worse one)", OPTIM_IMPLS)

    def check(self):
        self.need(self.lr > 0, "lr", "must be positive")
        self.within(0, 10, "lr")
        self.need(0 <= self.beta1 < 1 and 0 <= self.beta2 < 1, "beta1", "betas must be in [0, 1)")
        BOUNDS.update({"optim.beta1": (0, 1), "optim.beta2": (0, 1)})
        self.within(-1, MAX_COUNT, "decay_start")
        self.within(1, MAX_COUNT, "step_size")
        self.within(0, 1, "gamma")
        self.within(0, 1_000_000, "n_epochs", "n_epochs_decay")


@dataclass(frozen=True)
class TrainConfig(Section):
    SECTION: ClassVar[str] = "train"

    batch_size: int = _f(8, "images per process per step (global batch = batch_size x world size)")
    max_steps: int = _f(1000, "optimizer steps in total (the LR schedule spans them)")
    stop_after: int = _f(0, "end this invocation after this many steps, checkpointed (0 = run to max_steps)")
    log_every: int = _f(20, "steps between metric rows (the only host syncs)")
    sample_every: int = _f(250, "steps between sample grids (0 = never)")
    ckpt_every: int = _f(250, "steps between checkpoints (0 = only at the end)")
    eval_every: int = _f(250, "steps between validations (0 = never)")
    keep_last: int = _f(3, "step checkpoints kept besides last.pt and best.pt")
    best_metric: str = _f("psnr", "the held-out metric best.pt is chosen by: psnr or ssim (higher is better), l1, "
                          "lpips, fid, kid or delta_colorfulness (lower); lpips, fid and kid need their eval.* "
                          "weights. PSNR and L1 favour cautious, greyish colourisations; lpips or fid favour "
                          "plausible colour", BEST_METRICS)
    precision: str = _f("fp32", "autocast dtype; Lab and losses stay float32", PRECISIONS)
    compile: bool = _f(False, "torch.compile the models (GPU)")
    cuda_graphs: bool = _f(False, "capture the whole G+D step in a CUDA graph (GPU)")
    channels_last: bool = _f(True, "channels_last memory format on GPU")
    on_nonfinite: str = _f("stop", "a NaN/inf loss: stop, or skip the update", ("stop", "skip"))
    timeout_s: int = _f(600, "collective timeout: a dead rank fails the job after this")
    straggler_lag: float = _f(0.2, "a notice names a rank whose own delay (data wait, CPU wait) exceeds the median "
                              "rank's by this fraction of a step for 3 log intervals in a row (0 = never)")
    device: str = _f("auto", "auto (cuda when present), cpu or cuda", DEVICES)
    ema_decay: float = _f(0.0, "EMA of G's weights, updated after every G step (0 = off; e.g. 0.999); when on, "
                               "validation, best.pt, predict, eval and export use it (--raw-weights: the raw G)")
    fix_global_steps: int = _f(0, "model.generator=local: the global part is frozen for the first steps, only the "
                               "local enhancers train (pix2pixHD's niter_fix_global, in steps)")
    activation_checkpointing: str = _f("none", "recompute activations in the backward pass instead of keeping them "
                                       "(less memory, one more forward): none, generator (its blocks) or all (the "
                                       "discriminators too); same losses and gradients", ACTIVATION_CHECKPOINTING)

    def check(self):
        self.need(0 <= self.ema_decay < 1, "ema_decay", "must be in [0, 1) (0 = off)")
        BOUNDS["train.ema_decay"] = (0, 1)
        self.within(1, 1_000_000, "batch_size")
        self.within(1, MAX_COUNT, "max_steps", "log_every")
        self.within(0, MAX_COUNT, "sample_every", "ckpt_every", "eval_every", "stop_after")
        self.within(0, 1_000_000, "keep_last")
        self.within(1, 30 * 86400, "timeout_s")
        self.within(0, 100, "straggler_lag")  # a fraction of a step; 0 = off
        self.within(0, MAX_COUNT, "fix_global_steps")


@dataclass(frozen=True)
class EvalConfig(Section):
    SECTION: ClassVar[str] = "eval"

    fid_weights: str = _f("", "FID Inception-v3 weights (pytorch-fid's pt_inception-2015-12-05-6726825d.pth) for "
                          "FID/KID in validation and p2p eval; empty = $P2P_FID_WEIGHTS, unset = no FID")
    lpips_weights: str = _f("", "LPIPS backbone (torchvision's alexnet-owt-7be5be79.pth, vgg16 or squeezenet1_1 "
                            "weights); empty = $P2P_LPIPS_WEIGHTS, unset = no LPIPS")
    fid_ref: str = _f("", "validation: .npz of the held-out targets' FID statistics (pytorch-fid's mu/sigma, plus "
                      "features for KID), read when present, written when missing; empty = computed in memory")
    batch_size: int = _f(16, "images of one size per generator / feature batch when scoring")
    kid_subsets: int = _f(100, "KID: random subsets averaged")
    kid_subset_size: int = _f(1000, "KID: images per subset (fewer images: all of them)")

    def check(self):
        self.within(1, 1_000_000, "batch_size", "kid_subsets")
        self.within(2, 100_000_000, "kid_subset_size")
        self.need(not self.fid_ref or self.fid_ref.endswith(".npz"), "fid_ref", "must be a .npz file")


@dataclass(frozen=True)
class SlurmConfig(Section):
    SECTION: ClassVar[str] = "slurm"

    nodes: int = _f(1, "nodes per job")
    tasks_per_node: int = _f(0, "processes per node (0 = gpus_per_node, or 1 without GPUs)")
    gpus_per_node: int = _f(0, "GPUs per node")
    cpus_per_task: int = _f(2, "CPU cores per process (data loader workers)")
    mem_gb: int = _f(0, "memory per node in GB (0 = cluster default)")
    partition: str = _f("", "partition")
    time_min: int = _f(60, "time limit per job in minutes")
    account: str = _f("", "account to charge")
    qos: str = _f("", "quality of service")
    constraint: str = _f("", "node features, e.g. h100")
    max_requeues: int = _f(3, "requeues after preemption or time limit")
    array_parallelism: int = _f(8, "sweeps: array elements running at once")
    folder: str = _f("", "submitit logs (empty = <run folder>/slurm)")
    signal_delay_s: int = _f(120, "USR2 this many seconds before the time limit")
    extra: dict = _f({}, "extra sbatch parameters, e.g. {exclusive: true} or slurm.extra.mail-type=END")

    def check(self):
        """Checks that `p2p submit` needs before anything reaches sbatch (a bad value here would
        otherwise cost a queue wait, or make the job signal itself as soon as it starts)."""
        self.within(1, 1_000_000, "nodes", "array_parallelism")
        self.within(0, 100_000, "max_requeues")
        self.within(0, 4096, "tasks_per_node", "gpus_per_node")
        self.within(1, 100_000, "cpus_per_task")
        self.within(0, 100_000_000, "mem_gb")
        self.within(1, 100 * 525_600, "time_min")  # Slurm's own limit is in minutes; a century
        self.within(0, 100 * 525_600 * 60, "signal_delay_s")
        _require(self.signal_delay_s < self.time_min * 60, "slurm.signal_delay_s", self.signal_delay_s,
                 f"must be shorter than the time limit (slurm.time_min={self.time_min} = {self.time_min * 60} s): "
                 f"Slurm would send the checkpoint signal as soon as the job starts")
        for key, value in self.extra.items():
            _require(isinstance(key, str) and re.fullmatch(r"[a-z][a-z0-9_-]*", key) is not None,
                     "slurm.extra", key, "keys are sbatch long options without dashes, e.g. exclusive, mail-type")
            _require(value is None or isinstance(value, (str, int, float, bool)), f"slurm.extra.{key}", value,
                     "must be a string, number or true/false")
            _require(not isinstance(value, (int, float)) or abs(value) < 2**63, f"slurm.extra.{key}", value,
                     "must be a finite number below 2**63")  # nan < x is False too


@dataclass(frozen=True)
class Config:
    run: RunConfig = field(default_factory=RunConfig)
    task: TaskConfig = field(default_factory=TaskConfig)
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    slurm: SlurmConfig = field(default_factory=SlurmConfig)

    def __post_init__(self):
        """What spans sections (each section has checked itself already)."""
        d, m = self.data, self.model
        g, stride = GENERATORS[m.generator], m.stride
        least = f", at least {g.min_strides * stride}" if g.min_strides > 1 else ""
        why = f"must be a multiple of {stride}{least}: {g.stride_why}"
        _require(d.image_size % stride == 0 and d.image_size >= g.min_strides * stride, "data.image_size",
                 d.image_size, why)
        _require(not self.train.fix_global_steps or g.coarse_to_fine, "train.fix_global_steps",
                 self.train.fix_global_steps, f"freezes the global part of a local enhancer; model.generator="
                 f"{m.generator!r} has none")
        # A PatchGAN halves its input n_layers_d times, then two 4x4 stride-1 convs take a pixel
        # off each: below 3 * 2**n_layers_d px no patch is left.
        coarsest = -(-d.image_size // 2 ** (m.num_d - 1))
        need = 1 if m.n_layers_d == 0 else 3 * 2 ** m.n_layers_d
        _require(coarsest >= need, "model.num_d", m.num_d,
                 f"its coarsest scale sees {coarsest} px of data.image_size={d.image_size}, fewer than the "
                 f"{need} px a PatchGAN with model.n_layers_d={m.n_layers_d} needs; lower model.num_d")

    @property
    def run_dir(self) -> Path:
        """run.out_dir/run.name, checked by p2p.run_folder (a UsageError if it would escape)."""
        return run_folder(self.run.out_dir, self.run.name)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.to_dict(), sort_keys=False)


def bounds_of(key: str) -> tuple[float, float] | None:
    """The range a numeric key allows ("section.key"), as its section's check() states it."""
    if not BOUNDS:
        Config()  # every section checks its defaults once, which records the bounds
    return BOUNDS.get(key)


def sections() -> dict[str, type]:
    """Section name -> its dataclass, in config order."""
    return {f.name: f.default_factory for f in dataclasses.fields(Config)}
