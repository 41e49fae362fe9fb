"""Training-step images/s (`p2p bench step`): the seed-style baseline against each optimisation.

Every row runs `p2p.train.step.train_step` (D update, then G update) on the same colorization
batch with networks built by the trainer's `build_networks` from the same seed, so rows differ
only in how the step is run:

* baseline: what the seed did: fp32, eager, NCHW models, `torch.optim.Adam` with
  `foreach=False` (one small kernel per parameter tensor), and `.item()` on every loss every
  step, i.e. a host sync per step;
* one optimisation at a time on top of the baseline: channels_last models, fused Adam (foreach
  where fused is missing), no per-step host sync (losses summed on the device), bf16 autocast,
  fp16 autocast with per-network GradScalers (GPU), torch.compile (GPU; CPU behind
  `cpu_compile`, which compiles for minutes), CUDA graphs of the whole step (GPU; the trainer's
  `make_step_fn` with capturable Adam);
* all: every optimisation that runs on this device, combined;
* p2p default: what `p2p train` does with the default config on this device (the config
  defaults through the trainer's own choices: channels_last on GPU only, fused Adam, no sync);
* model choices, run as p2p default with other networks or losses, to price each choice
  (`vs_p2p_default`, and FLOPs per image from p2p.train.flops for each row): resnet_9blocks
  (the official ResNet generator instead of the U-Net) and multiscale_feat (pix2pixHD's
  2-scale discriminator with feature matching, lambda_feat 10). A choice that does not fit the
  image size (a scale too small for the PatchGAN) is kept as skipped with the reason.

The batch is what `p2p train` feeds (p2p.bench.workload.trainer_batch): uint8 photographs
through the task's own `prepare` on the device, which for colorization gives L and ab as
strided channel views of one Lab tensor. Convolution kernels are chosen by, and run at speeds
that depend on, their input's layout and strides, so a contiguous synthetic batch would time
kernels the trainer never runs.

Rows that cannot run here are kept with `skipped` and the reason. Each mode is warmed up, then
the modes take turns (`repeats` rounds, the order rotating each round) so that drift and other
load on the machine hit them alike; img_per_s is the median round. On a GPU each row also has
`mfu`: FLOPs per image (p2p.train.flops, 1 multiply-add = 2 FLOPs) x img/s / the GPU's dense
peak for the precision the row ran (bf16/fp16 tensor cores; TF32 tensor cores for fp32 rows,
whose convolutions cuDNN runs in TF32), and `peak_flops`, the peak used; GPUs not in
p2p.train.flops.PEAKS get no MFU. Thread count from OMP_NUM_THREADS.
"""

from __future__ import annotations

import math
import statistics
import time
from dataclasses import asdict, dataclass

import torch

from p2p.bench.common import environment, measure, sync
from p2p.bench.workload import WorkloadOptions, WorkloadPlan, trainer_batch, workload_config
from p2p.config import with_values
from p2p.errors import UsageError

BASELINE = "baseline"


@dataclass(frozen=True)
class Setup:
    """How one row runs the step."""

    channels_last: bool = False
    adam: str = "for-loop"  # for-loop (foreach=False, the seed's), fused (p2p make_optimizer), capturable
    sync_every_step: bool = True  # .item() on every loss after every step
    precision: str = "fp32"
    compile: bool = False
    cuda_graphs: bool = False


MODES = {
    "baseline": ("seed-style: fp32, eager, NCHW, for-loop Adam, .item() every step", Setup()),
    "channels_last": ("baseline + channels_last models (the batch as the trainer feeds it)",
                      Setup(channels_last=True)),
    "fused_adam": ("baseline + fused Adam (p2p make_optimizer)", Setup(adam="fused")),
    "no_sync": ("baseline + losses stay on the device (no per-step host sync)", Setup(sync_every_step=False)),
    "bf16": ("baseline + bf16 autocast", Setup(precision="bf16")),
    "fp16": ("baseline + fp16 autocast + per-network GradScalers", Setup(precision="fp16")),
    "compile": ("baseline + torch.compile of G and D", Setup(compile=True)),
    "cuda_graphs": ("baseline + the whole step in one CUDA graph (capturable Adam)",
                    Setup(adam="capturable", sync_every_step=False, cuda_graphs=True)),
    "all": ("every optimisation that runs on this device", Setup()),  # filled in by all_setup()
    "p2p_default": ("what `p2p train` does with the default config here", Setup()),  # default_setup()
    "resnet_9blocks": ("p2p default with the official resnet_9blocks generator", Setup()),  # + MODEL_CHOICES
    "multiscale_feat": ("p2p default with a 2-scale discriminator and feature matching (pix2pixHD)", Setup()),
}
DEFAULT = "p2p_default"
# Rows that change the networks or losses (config overrides), each run with the p2p default setup.
MODEL_CHOICES = {
    "resnet_9blocks": {"model.generator": "resnet", "model.n_blocks": 9},
    "multiscale_feat": {"model.num_d": 2, "loss.lambda_feat": 10.0},
}


def why_not(name: str, device: torch.device, cpu_compile: bool) -> str | None:
    """Why mode `name` cannot run on `device`, or None."""
    cuda = device.type == "cuda"
    if name == "fp16" and not cuda:
        return "GPU mode: fp16 autocast + GradScaler is measured on CUDA only"
    if name == "cuda_graphs" and not cuda:
        return "CUDA graphs need a GPU"
    if name == "compile" and not cuda and not cpu_compile:
        return "torch.compile on CPU compiles for minutes: pass --cpu-compile to measure it"
    if name == "compile" and not hasattr(torch, "compile"):
        return "this PyTorch has no torch.compile"
    return None


def all_setup(device: torch.device, cpu_compile: bool) -> Setup:
    """Every optimisation that runs here combined: on a GPU bf16 + channels_last + compile + CUDA
    graphs (capturable Adam, no syncs); on a CPU channels_last, fused Adam, no sync, bf16 (and
    compile with cpu_compile)."""
    cuda = device.type == "cuda"
    return Setup(channels_last=True, adam="capturable" if cuda else "fused", sync_every_step=False,
                 precision="bf16", compile=cuda or cpu_compile, cuda_graphs=cuda)


def default_setup(cfg, device: torch.device) -> Setup:
    """The trainer's choices for `cfg` (p2p.train.run / wrap): channels_last and compile only on
    GPU, fused Adam, host reads only at log steps, the configured precision and graphs."""
    from p2p.train.run import use_cuda_graphs
    from p2p.train.wrap import uses_channels_last, uses_compile

    graphs = use_cuda_graphs(cfg, device, lambda text: None)
    return Setup(channels_last=uses_channels_last(cfg, device), adam="capturable" if graphs else "fused",
                 sync_every_step=False, precision=cfg.train.precision, compile=uses_compile(cfg, device),
                 cuda_graphs=graphs)


# ---------------------------------------------------------------------------------------------
# one mode: networks, optimizers, the step


class Runner:
    """Fresh G and D from `seed` (identical initial weights in every mode), placed and wrapped as
    `setup` says, and a function that runs `steps` training steps on the fixed batch."""

    def __init__(self, setup: Setup, cfg, task, batch: tuple[torch.Tensor, torch.Tensor], device: torch.device,
                 seed: int = 0):
        from p2p.train.graphs import GraphedStep
        from p2p.train.in_effect import adam_kind
        from p2p.train.nets import build_nets, build_networks
        from p2p.train.run import make_step_fn
        from p2p.precision import Precision

        self.setup, self.device, self.notices = setup, device, []
        torch.manual_seed(seed)
        G, D = (net.to(device) for net in build_networks(cfg, task))
        # As p2p.train.wrap.wrap_models, which applies these on GPUs only: here they are
        # measured on any device.
        if setup.channels_last:
            G, D = G.to(memory_format=torch.channels_last), D.to(memory_format=torch.channels_last)
        D_frozen = D
        if setup.compile:
            G, D, D_frozen = torch.compile(G), torch.compile(D), torch.compile(D_frozen)
        self.precision = Precision(setup.precision, device)
        # channels_last: the step puts its inputs and D's pairs in that format too, as in training
        self.nets = build_nets(G, D, D_frozen, cfg, device, self.precision, capturable=setup.adam == "capturable",
                               adam="for-loop" if setup.adam == "for-loop" else "auto",
                               channels_last=setup.channels_last, notice=self.notices.append, task=task)
        self.adam_kind = adam_kind(self.nets.opt_g)
        self.step_fn = make_step_fn(self.nets, cfg, self.precision, setup.cuda_graphs, self.notices.append)
        self.graphed = self.step_fn if isinstance(self.step_fn, GraphedStep) else None
        self.inp, self.target = batch
        self.batch_size = self.inp.shape[0]
        self.sums: dict[str, torch.Tensor] = {}
        self.last: dict[str, float] = {}

    def run(self, steps: int) -> int:
        """`steps` training steps; returns the images processed."""
        for _ in range(steps):
            losses = self.step_fn(self.inp, self.target)
            if self.setup.sync_every_step:
                # note: a CPU-GPU sync point per loss, every step: what the baseline measures
                self.last = {k: v.item() for k, v in losses.items()}
            else:  # as the training loop: summed on the device, read at log steps only
                for k, v in losses.items():
                    self.sums[k] = self.sums[k] + v if k in self.sums else v.clone()
        return steps * self.batch_size

    def warm_up(self, steps: int) -> None:
        # CUDA graphs: GraphedStep runs 3 eager warm-up steps, captures on the 4th call and
        # replays from then on; compile: the first calls compile (both requires_grad states of D).
        need = 5 if self.setup.cuda_graphs else 2 if self.setup.compile else 1
        self.run(max(steps, need))
        self.read_losses()
        sync(self.device)
        if self.graphed is not None and self.graphed.failed:
            self.notices.append("CUDA graph capture failed: eager steps were measured")

    @property
    def graphs_in_effect(self) -> bool:
        return self.graphed is not None and self.graphed.graph is not None and not self.graphed.failed

    def read_losses(self) -> dict[str, float]:
        """The losses since the last read (summed, or the last step's when synced every step): a
        host sync. Resets the sums."""
        out = {k: float(v) for k, v in self.sums.items()} if self.sums else dict(self.last)
        self.sums = {}
        return out


# ---------------------------------------------------------------------------------------------
# the suite


@dataclass(frozen=True)
class StepOptions(WorkloadOptions):
    """What the step benchmark is asked for; None picks the device's default (see plan_step)."""

    repeats: int | None = None
    modes: tuple[str, ...] | None = None  # default: every mode; the baseline is always added
    cpu_compile: bool = False
    seed: int = 0


@dataclass(frozen=True)
class StepPlan(WorkloadPlan):
    device: torch.device
    modes: tuple[str, ...]
    quick: bool
    cpu_compile: bool
    seed: int


def plan_step(o: StepOptions) -> StepPlan:
    from p2p.dist import resolve_device

    device = resolve_device(o.device)
    cuda, quick = device.type == "cuda", o.quick
    modes = list(o.modes or MODES)
    unknown = [m for m in modes if m not in MODES]
    if unknown:
        raise UsageError(f"--modes: unknown mode {unknown[0]!r}; choose from {', '.join(MODES)}")
    if BASELINE not in modes:
        modes.insert(0, BASELINE)  # every ratio needs the baseline of the same run
    if any(m in MODEL_CHOICES for m in modes) and DEFAULT not in modes:
        modes.insert(1, DEFAULT)  # a model choice is priced against the default of the same run
    return StepPlan(
        device=device, sizes=o.model_sizes(cuda), batch_size=o.batch_size or (64 if cuda else 8),
        image_size=o.image_size or (128 if quick and not cuda else 256),
        steps=o.steps or ((5 if quick else 20) if cuda else 2 if quick else 3),
        warmup=o.warmup if o.warmup is not None else (5 if cuda else 1),
        repeats=o.repeats or (3 if quick or not cuda else 5),
        modes=tuple(modes), quick=quick, cpu_compile=o.cpu_compile, seed=o.seed)


def run_step(options: StepOptions, progress=print, partial=None) -> dict:
    """Measure the modes; returns {environment, config, results (rows), notes}. `partial`, when
    given, gets the payload of the rounds measured so far after each round (marked
    `"partial": true`), so a run cut at a time limit keeps its figures."""
    from p2p.tasks import build_task
    from p2p.train.flops import peak_flops, step_flops_per_image
    from p2p.train.nets import architectures
    from p2p.train.run import configure_determinism

    p = plan_step(options)
    dev, cuda = p.device, p.device.type == "cuda"
    configure_determinism(False)  # as the training loop: cuDNN autotune, TF32 matmuls on GPU
    cfg = workload_config(p.sizes, p.image_size, p.batch_size)
    task = build_task(cfg.task)

    def flops_of(c):
        return step_flops_per_image(*architectures(c, task), p.image_size, c.loss)

    flops = flops_of(cfg)
    batch = trainer_batch(cfg, task, dev)
    notes = []
    if not cuda:
        notes.append("no GPU on this machine: fp16, compile (without --cpu-compile) and CUDA graph rows are "
                     "skipped and no MFU is reported")

    rates: dict[str, list[float]] = {}
    finite: dict[str, bool] = {}
    env = environment()

    def measured() -> dict:
        """The payload from the rates of the rounds so far (none yet: the rows as built)."""
        for name, r in runners.items():
            row = rows[name]
            if not rates.get(name):  # built, not timed yet
                continue
            ips = statistics.median(rates[name])
            row.update(img_per_s=ips, img_per_s_min=min(rates[name]), img_per_s_max=max(rates[name]),
                       repeats=len(rates[name]), step_ms=1000 * p.batch_size / ips, rounds=rates[name],
                       losses_finite=finite.get(name, True))
            # MFU against the peak of the precision that ran (TF32 tensor cores for fp32 convolutions)
            peak = peak_flops(dev, r.setup.precision)
            if peak:
                row["mfu"], row["peak_flops"] = row_flops[name] * ips / peak, peak
            row["cuda_graphs_in_effect"] = r.graphs_in_effect
            if r.notices:
                row["notices"] = r.notices
        base = rows[BASELINE].get("img_per_s")
        default = rows.get(DEFAULT, {}).get("img_per_s")
        for row in rows.values():
            row["baseline"] = BASELINE
            row["ratio"] = row["img_per_s"] / base if base and row.get("img_per_s") else None
            if row["name"] in MODEL_CHOICES:
                row["vs_p2p_default"] = row["img_per_s"] / default if default and row.get("img_per_s") else None
            row.setdefault("img_per_s", None)
        s = p.sizes
        config = {
            "device": str(dev), "model": s.name, "ngf": s.ngf, "num_downs": s.num_downs, "ndf": s.ndf,
            "task": f"{task.name} ({task.in_channels} -> {task.out_channels} channels)", "batch_size": p.batch_size,
            "image_size": p.image_size, "load_size": cfg.data.load_size, "steps_per_round": p.steps,
            "warmup_steps": p.warmup, "rounds": p.repeats, "modes": list(p.modes), "flops_per_image": flops,
            "peak_flops": peak_flops(dev, "bf16"), "gpu_peaks": "per row: the peak of its precision",
            "threads": torch.get_num_threads(), "quick": p.quick, "cpu_compile": p.cpu_compile,
            "seed": p.seed, "cudnn_benchmark": torch.backends.cudnn.benchmark,
            "tf32_matmul": torch.backends.cuda.matmul.allow_tf32,
        }
        return {"environment": env, "config": config, "results": list(rows.values()), "notes": notes}

    rows: dict[str, dict] = {}
    runners: dict[str, Runner] = {}
    row_flops: dict[str, float] = {}
    for name in p.modes:
        desc, setup = MODES[name]
        row_cfg, reason = cfg, why_not(name, dev, p.cpu_compile)
        if name == "all":
            setup = all_setup(dev, p.cpu_compile)
        elif name == DEFAULT or name in MODEL_CHOICES:
            setup = default_setup(cfg, dev)
        row = {"name": name, "description": desc, "device": str(dev), **asdict(setup)}
        if name in MODEL_CHOICES:
            row["model_changes"] = MODEL_CHOICES[name]
            try:
                row_cfg = with_values(cfg, MODEL_CHOICES[name])
            except UsageError as e:
                reason = f"does not fit this size: {e}"
        rows[name] = row
        if reason is None:
            row_flops[name] = row["flops_per_image"] = flops_of(row_cfg)
        if reason:
            row["skipped"] = reason
            progress(f"  {name}: skipped ({reason})")
            continue
        try:
            t0 = time.perf_counter()
            r = Runner(setup, row_cfg, task, batch, dev, p.seed)
            r.warm_up(p.warmup)
            row["adam"] = r.adam_kind
            row["warmup_s"] = time.perf_counter() - t0
            runners[name] = r
            progress(f"  {name}: ready ({row['warmup_s']:.1f} s build + warm-up)")
            if partial is not None:
                partial({**measured(), "partial": True, "rounds_done": 0})
        except torch.OutOfMemoryError:
            row["skipped"] = f"out of memory at batch {p.batch_size}"
        except Exception as e:  # a mode that fails (e.g. compile on an unusual setup) is reported, not fatal
            row["skipped"] = f"failed: {type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"[:300]
        if "skipped" in row:
            progress(f"  {name}: skipped ({row['skipped']})")
            if cuda:
                torch.cuda.empty_cache()

    # Interleaved rounds: every mode once per round, the starting mode rotating.
    rates.update({n: [] for n in runners})
    order = list(runners)
    for rnd in range(p.repeats):
        k = rnd % len(order) if order else 0
        for name in order[k:] + order[:k]:
            r = runners[name]
            rates[name].append(measure(lambda r=r: r.run(p.steps), device=dev, warmup=0, repeats=1)["img_per_s"])
            losses = r.read_losses()
            finite[name] = finite.get(name, True) and all(math.isfinite(v) for v in losses.values())
        progress(f"  round {rnd + 1}/{p.repeats}: " + ", ".join(f"{n} {rates[n][-1]:.1f}" for n in order))
        if partial is not None and rnd + 1 < p.repeats:
            partial({**measured(), "partial": True, "rounds_done": rnd + 1})
    return measured()
