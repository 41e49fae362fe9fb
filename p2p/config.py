"""Typed configuration: one schema, YAML presets that derive from presets, dotted overrides.

Every field carries a one-line `help`. Unknown keys, wrong types and invalid choices raise
`UsageError` naming the key and the nearest valid key or the allowed choices; the CLI turns
that into one line and exit code 2. The resolved config is saved in the run folder.

The defaults are the demo: colorization on the photographs embedded in scikit-image with a
model small enough to learn visibly in a few minutes on two CPU cores. The official full-size
pix2pix settings live in `configs/` (e.g. `configs/colorize_coco.yaml`).
"""

from __future__ import annotations

import dataclasses
import difflib
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from p2p.errors import UsageError

TASKS = ("colorize", "gray2rgb", "paired", "restore")
NORMS = ("batch", "syncbatch", "instance", "none")
GAN_MODES = ("vanilla", "lsgan", "wgangp")
LR_POLICIES = ("linear", "step", "cosine", "constant")
INIT_TYPES = ("normal", "xavier", "kaiming", "orthogonal")
PRECISIONS = ("fp32", "bf16", "fp16")
BACKENDS = ("auto", "folder", "wds", "dali")


def _f(default: Any, help: str, choices: tuple | None = None, **kw):
    """A dataclass field with a help line (and optional allowed choices)."""
    meta = {"help": help}
    if choices is not None:
        meta["choices"] = choices
    if isinstance(default, (list, dict)):
        return field(default_factory=lambda d=default: type(d)(d), metadata=meta, **kw)
    return field(default=default, metadata=meta, **kw)


@dataclass
class RunConfig:
    name: str = _f("colorize-demo", "run folder name under run.out_dir")
    out_dir: str = _f("runs", "parent folder of run folders")
    seed: int = _f(0, "seed for weights, data order and augmentation")
    deterministic: bool = _f(False, "deterministic kernels (bit-exact resume on CPU); slower")
    resume: bool = _f(True, "resume from <run>/checkpoints/last.pt when it exists")


@dataclass
class TaskConfig:
    name: str = _f("colorize", "what the generator learns", TASKS)
    direction: str = _f("AtoB", "paired task: which half is the input", ("AtoB", "BtoA"))
    noise_std: float = _f(0.1, "restore: largest Gaussian noise std (image range 0..1); 0 disables")
    blur_sigma: float = _f(1.5, "restore: largest Gaussian blur sigma in pixels; 0 disables")
    jpeg_quality: int = _f(30, "restore: lowest JPEG quality, drawn from [q, 95]; 100 disables")


@dataclass
class DataConfig:
    source: str = _f("embedded", "'embedded' (photos inside scikit-image), an image folder, or a shard folder")
    backend: str = _f("auto", "loader: auto picks wds for shard folders, folder otherwise", BACKENDS)
    load_size: int = _f(80, "images are resized to this (short side) before the random crop")
    image_size: int = _f(64, "random crop size = model input size")
    flip: bool = _f(True, "random horizontal flip during training")
    workers: int = _f(1, "loader worker processes per rank (0 = load in the main process); presets for big data use 8")
    val_source: str = _f("", "held-out images for validation; empty = the source's own val split")
    val_fraction: float = _f(0.05, "folder sources without train/ and val/ subfolders: share held out")
    val_images: int = _f(16, "how many fixed held-out images each validation uses")
    epoch_size: int = _f(512, "embedded source: random crops per epoch")


@dataclass
class ModelConfig:
    ngf: int = _f(32, "generator width (official: 64)")
    ndf: int = _f(32, "discriminator width (official: 64)")
    num_downs: int = _f(6, "U-Net depth: 8 = unet_256, 7 = unet_128; image_size must be divisible by 2**num_downs")
    n_layers_d: int = _f(3, "PatchGAN depth: 3 = 70x70 PatchGAN, 0 = PixelGAN (1x1)")
    norm: str = _f("batch", "normalisation layer", NORMS)
    dropout: bool = _f(True, "dropout 0.5 in the innermost 512-channel decoder blocks (official: on)")
    init_type: str = _f("normal", "weight init", INIT_TYPES)
    init_gain: float = _f(0.02, "std / gain of the weight init")


@dataclass
class LossConfig:
    gan_mode: str = _f("vanilla", "adversarial loss", GAN_MODES)
    lambda_l1: float = _f(100.0, "weight of the L1 loss")
    lambda_gp: float = _f(10.0, "weight of the gradient penalty (wgangp only)")


@dataclass
class OptimConfig:
    lr: float = _f(2e-4, "Adam learning rate (both networks)")
    beta1: float = _f(0.5, "Adam beta1")
    beta2: float = _f(0.999, "Adam beta2")
    lr_policy: str = _f("linear", "linear: constant then linear to 0; step; cosine; constant", LR_POLICIES)
    decay_start: int = _f(-1, "linear: step where decay starts (-1 = half of train.max_steps)")
    step_size: int = _f(1000, "step policy: multiply lr by gamma every step_size steps")
    gamma: float = _f(0.1, "step policy: decay factor")


@dataclass
class TrainConfig:
    batch_size: int = _f(8, "images per process per step (global batch = batch_size x world size)")
    max_steps: int = _f(1000, "optimizer steps in total (the LR schedule spans them)")
    stop_after: int = _f(0, "end this invocation after this many steps, checkpointed (0 = run to max_steps)")
    log_every: int = _f(20, "steps between metric rows (the only host syncs)")
    sample_every: int = _f(250, "steps between sample grids (0 = never)")
    ckpt_every: int = _f(250, "steps between checkpoints (0 = only at the end)")
    eval_every: int = _f(250, "steps between validations (0 = never)")
    keep_last: int = _f(3, "step checkpoints kept besides last.pt and best.pt")
    precision: str = _f("fp32", "autocast dtype; Lab and losses stay float32", PRECISIONS)
    compile: bool = _f(False, "torch.compile the models (GPU)")
    cuda_graphs: bool = _f(False, "capture the whole G+D step in a CUDA graph (GPU)")
    channels_last: bool = _f(True, "channels_last memory format on GPU")
    on_nonfinite: str = _f("stop", "a NaN/inf loss: stop, or skip the update", ("stop", "skip"))
    timeout_s: int = _f(600, "collective timeout: a dead rank fails the job after this")
    device: str = _f("auto", "auto (cuda when present), cpu or cuda")


@dataclass
class SlurmConfig:
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

    def __post_init__(self):
        """Checks that `p2p submit` needs before anything reaches sbatch (a bad value here would
        otherwise cost a queue wait, or make the job signal itself as soon as it starts)."""
        _require(self.nodes >= 1, "slurm.nodes", self.nodes, "must be >= 1")
        _require(self.max_requeues >= 0, "slurm.max_requeues", self.max_requeues, "must be >= 0")
        for key in ("tasks_per_node", "gpus_per_node", "mem_gb", "signal_delay_s"):
            _require(getattr(self, key) >= 0, f"slurm.{key}", getattr(self, key), "must be >= 0")
        for key in ("cpus_per_task", "time_min", "array_parallelism"):
            _require(getattr(self, key) >= 1, f"slurm.{key}", getattr(self, key), "must be >= 1")
        _require(self.signal_delay_s < self.time_min * 60, "slurm.signal_delay_s", self.signal_delay_s,
                 f"must be shorter than the time limit (slurm.time_min={self.time_min} = {self.time_min * 60} s): "
                 f"Slurm would send the checkpoint signal as soon as the job starts")
        for key, value in self.extra.items():
            _require(isinstance(key, str) and re.fullmatch(r"[a-z][a-z0-9_-]*", key) is not None,
                     "slurm.extra", key, "keys are sbatch long options without dashes, e.g. exclusive, mail-type")
            _require(value is None or isinstance(value, (str, int, float, bool)), f"slurm.extra.{key}", value,
                     "must be a string, number or true/false")


@dataclass
class Config:
    run: RunConfig = field(default_factory=RunConfig)
    task: TaskConfig = field(default_factory=TaskConfig)
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    slurm: SlurmConfig = field(default_factory=SlurmConfig)

    def __post_init__(self):
        validate(self)

    @property
    def run_dir(self) -> Path:
        return Path(self.run.out_dir) / self.run.name

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.to_dict(), sort_keys=False)


# --------------------------------------------------------------------------- validation


def _require(ok: bool, key: str, value: Any, why: str) -> None:
    if not ok:
        raise UsageError(f"{key}={value!r}: {why}")


def validate(cfg: Config) -> None:
    """Cross-field checks that a single field's type cannot express."""
    for section in dataclasses.fields(cfg):
        sub = getattr(cfg, section.name)
        for f in dataclasses.fields(sub):
            choices = f.metadata.get("choices")
            value = getattr(sub, f.name)
            if choices and value not in choices:
                raise UsageError(
                    f"{section.name}.{f.name}={value!r} is not allowed; choose one of {', '.join(choices)}"
                )
    d, m, t, o = cfg.data, cfg.model, cfg.train, cfg.optim
    _require(d.image_size > 0, "data.image_size", d.image_size, "must be positive")
    _require(d.load_size >= d.image_size, "data.load_size", d.load_size,
             f"must be >= data.image_size ({d.image_size}): the random crop takes image_size from it")
    _require(2 <= m.num_downs <= 12, "model.num_downs", m.num_downs, "must be between 2 and 12")
    _require(d.image_size % (2 ** m.num_downs) == 0, "data.image_size", d.image_size,
             f"must be divisible by 2**model.num_downs = {2 ** m.num_downs} "
             f"(lower model.num_downs or pick another size)")
    _require(m.ngf > 0 and m.ndf > 0, "model.ngf", m.ngf, "widths must be positive")
    _require(0 <= m.n_layers_d <= 8, "model.n_layers_d", m.n_layers_d, "must be between 0 and 8")
    _require(t.batch_size >= 1, "train.batch_size", t.batch_size, "must be >= 1")
    _require(t.max_steps >= 1, "train.max_steps", t.max_steps, "must be >= 1")
    _require(t.log_every >= 1, "train.log_every", t.log_every, "must be >= 1")
    for k in ("sample_every", "ckpt_every", "eval_every", "keep_last", "stop_after"):
        _require(getattr(t, k) >= 0, f"train.{k}", getattr(t, k), "must be >= 0")
    _require(t.device in ("auto", "cpu", "cuda"), "train.device", t.device, "choose one of auto, cpu, cuda")
    _require(t.timeout_s > 0, "train.timeout_s", t.timeout_s, "must be positive")
    _require(o.lr > 0, "optim.lr", o.lr, "must be positive")
    _require(0 <= o.beta1 < 1 and 0 <= o.beta2 < 1, "optim.beta1", o.beta1, "betas must be in [0, 1)")
    _require(o.step_size >= 1, "optim.step_size", o.step_size, "must be >= 1")
    _require(d.workers >= 0, "data.workers", d.workers, "must be >= 0")
    _require(0 <= d.val_fraction < 1, "data.val_fraction", d.val_fraction, "must be in [0, 1)")
    _require(d.val_images >= 1, "data.val_images", d.val_images, "must be >= 1")
    _require(d.epoch_size >= 1, "data.epoch_size", d.epoch_size, "must be >= 1")
    tk = cfg.task
    _require(tk.noise_std >= 0, "task.noise_std", tk.noise_std, "must be >= 0")
    _require(tk.blur_sigma >= 0, "task.blur_sigma", tk.blur_sigma, "must be >= 0")
    _require(1 <= tk.jpeg_quality <= 100, "task.jpeg_quality", tk.jpeg_quality, "must be in 1..100")


# --------------------------------------------------------------------------- building


def _sections() -> dict[str, type]:
    """Section name -> its dataclass (annotations are strings here, so ask the factories)."""
    return {f.name: f.default_factory for f in dataclasses.fields(Config)}


def _all_keys() -> list[str]:
    return [f"{name}.{f.name}" for name, cls in _sections().items() for f in dataclasses.fields(cls)]


def _unknown(key: str) -> UsageError:
    near = difflib.get_close_matches(key, _all_keys(), n=1, cutoff=0.5)
    if not near:  # a bare field name, e.g. "lr" for "optim.lr"
        near = [k for k in _all_keys() if k.split(".")[-1] == key.split(".")[-1]][:1]
    hint = f"; did you mean {near[0]}?" if near else ""
    return UsageError(f"unknown config key {key!r}{hint}")


def _coerce(key: str, value: Any, annotation: Any) -> Any:
    """Check `value` against the field's declared type; ints are accepted where floats are."""
    tp = {"str": str, "int": int, "float": float, "bool": bool, "dict": dict}.get(annotation, annotation)
    if tp is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if tp is float and isinstance(value, str):  # YAML 1.1 reads "1e-3" as a string
        try:
            return float(value)
        except ValueError:
            pass
    if tp is str and isinstance(value, (int, float)) and not isinstance(value, bool):
        return str(value)  # e.g. run.name=42
    if tp is str and value is None:
        return ""
    if not isinstance(value, tp) or (tp is int and isinstance(value, bool)):
        raise UsageError(f"{key}={value!r}: expected {tp.__name__}, got {type(value).__name__}")
    return value


def _merge(tree: dict, updates: dict, prefix: str = "") -> None:
    for k, v in updates.items():
        if isinstance(v, dict) and isinstance(tree.get(k), dict) and not (prefix + k).endswith("slurm.extra"):
            _merge(tree[k], v, prefix + k + ".")
        else:
            tree[k] = v


def _load_yaml(path: Path, seen: tuple = ()) -> dict:
    """Read a preset; `base: other.yaml` (relative to the file) is loaded first and overridden."""
    if not path.is_file():
        raise UsageError(f"config file not found: {path}")
    if path.resolve() in seen:
        raise UsageError(f"config {path}: 'base' chain loops back to itself")
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as e:
        first = str(e).splitlines()[0]
        raise UsageError(f"config {path} is not valid YAML: {first}") from None
    if not isinstance(data, dict):
        raise UsageError(f"config {path}: expected a mapping of sections, got {type(data).__name__}")
    base = data.pop("base", None)
    if base is None:
        return data
    tree = _load_yaml((path.parent / base), seen + (path.resolve(),))
    _merge(tree, data)
    return tree


def parse_override(text: str) -> tuple[str, Any]:
    """`a.b=value` -> ("a.b", value) with YAML typing (1 -> int, true -> bool, [1,2] -> list)."""
    if "=" not in text:
        raise UsageError(f"override {text!r} must look like section.key=value")
    key, raw = text.split("=", 1)
    key = key.strip()
    try:
        value = yaml.safe_load(raw) if raw.strip() else ""
    except yaml.YAMLError:
        value = raw
    return key, value


def from_tree(tree: dict) -> Config:
    """Build a validated Config from nested dicts, rejecting anything the schema lacks."""
    if not isinstance(tree, dict):
        raise UsageError("config must be a mapping of sections")
    sections = _sections()
    kwargs = {}
    for name, values in tree.items():
        if name not in sections:
            raise _unknown(str(name))
        if not isinstance(values, dict):
            raise UsageError(f"config section {name!r} must be a mapping, got {values!r}")
        cls = sections[name]
        hints = {f.name: f.type for f in dataclasses.fields(cls)}
        args = {}
        for k, v in values.items():
            if k not in hints:
                raise _unknown(f"{name}.{k}")
            args[k] = _coerce(f"{name}.{k}", v, hints[k])
        kwargs[name] = cls(**args)
    return Config(**kwargs)


def load_config(path: str | os.PathLike | None = None, overrides: list[str] | tuple = ()) -> Config:
    """Defaults <- YAML preset (with its bases) <- `key=value` overrides, then validation."""
    tree: dict = {}
    if path:
        tree = _load_yaml(Path(path))
    for text in overrides:
        key, value = parse_override(text)
        parts = key.split(".")
        if len(parts) < 2:
            raise _unknown(key)
        node = tree
        section = parts[0]
        if section not in _sections():
            raise _unknown(key)
        if section == "slurm" and len(parts) > 2 and parts[1] == "extra":
            node = node.setdefault("slurm", {}).setdefault("extra", {})
            node[".".join(parts[2:])] = value
            continue
        if len(parts) != 2:
            raise _unknown(key)
        node.setdefault(section, {})[parts[1]] = value
    return from_tree(tree)


def help_table() -> list[tuple[str, str, str]]:
    """(key, default, help) for every field: used by `p2p config --help-keys` and the docs."""
    rows = []
    cfg = Config()
    for sec in dataclasses.fields(Config):
        sub = getattr(cfg, sec.name)
        for f in dataclasses.fields(sub):
            rows.append((f"{sec.name}.{f.name}", repr(getattr(sub, f.name)), f.metadata.get("help", "")))
    return rows

