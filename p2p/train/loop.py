"""The training run. `train(cfg)` reads like its table of contents:

    build_run: start processes -> task, models, optimizers -> wrap for distribution -> resume
    -> for each step: next batch, jitter + task conversion on the device, G+D step
       -> at log steps: read losses (the only host sync), check they are finite, log
       -> samples, validation (best.pt), checkpoints
    -> on SIGTERM/SIGUSR2: finish the step, checkpoint, return (Slurm requeues us)

The same function runs as one process, under torchrun / accelerate launch and in Slurm tasks.
"""

from __future__ import annotations

import math
import os
import random
import resource
import time
from dataclasses import dataclass, field

import numpy as np
import torch

from p2p import dist
from p2p.augment import step_generator
from p2p.config import Config
from p2p.data import build_loader
from p2p.data.order import mix_seed
from p2p.errors import UsageError
from p2p.evaluate import means, score
from p2p.models import DiscriminatorArch, GeneratorArch, arch_dict, build_discriminator, build_generator, init_weights
from p2p.tasks import Task, build_task
from p2p.train.checkpoint import FORMAT_VERSION, Checkpoints, capture_rng, restore_rng
from p2p.train.flops import peak_flops, step_flops_per_image
from p2p.train.logger import RunLogger
from p2p.train.signals import StopSignals
from p2p.train.step import LOSS_NAMES, Nets, Precision, train_step
from p2p.train.wrap import average_buffers, make_optimizer, unwrap, wrap_models


class TrainingError(Exception):
    """A run that cannot go on (non-finite loss, out of memory): one clear line for the user."""


@dataclass
class TrainState:
    step: int = 0
    epoch: int = 0
    batch_in_epoch: int = 0
    best: float | None = None


@dataclass
class TrainResult:
    step: int
    preempted: bool = False
    signal: str | None = None
    run_dir: str = ""
    last_metrics: dict = field(default_factory=dict)
    generator: torch.nn.Module | None = None
    discriminator: torch.nn.Module | None = None


# --------------------------------------------------------------------------- building blocks


def architectures(cfg: Config, task: Task) -> tuple[GeneratorArch, DiscriminatorArch]:
    m = cfg.model
    g = GeneratorArch(task.in_channels, task.out_channels, m.num_downs, m.ngf, m.norm, m.dropout)
    d = DiscriminatorArch(task.in_channels + task.out_channels, m.ndf, m.n_layers_d, m.norm)
    return g, d


def lr_factor(step: int, cfg: Config) -> float:
    """Learning-rate multiplier at `step`: a pure function of the step, so resuming needs no state."""
    o, total = cfg.optim, cfg.train.max_steps
    if o.lr_policy == "linear":  # official pix2pix: constant, then linearly to zero
        start = total // 2 if o.decay_start < 0 else o.decay_start
        return 1.0 - max(0, step - start) / float(total - start + 1)
    if o.lr_policy == "step":
        return o.gamma ** (step // o.step_size)
    if o.lr_policy == "cosine":
        return 0.5 * (1.0 + math.cos(math.pi * min(step, total) / total))
    return 1.0


def set_lr(opt: torch.optim.Optimizer, lr: float) -> None:
    for group in opt.param_groups:
        if isinstance(group["lr"], torch.Tensor):
            group["lr"].fill_(lr)  # capturable Adam: the lr lives on the device
        else:
            group["lr"] = lr


def seed_all(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def configure_determinism(deterministic: bool) -> None:
    if deterministic:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        torch.use_deterministic_algorithms(True)
        torch.backends.cudnn.benchmark = False
    else:
        torch.backends.cudnn.benchmark = True  # fixed shapes: let cuDNN pick the fastest kernels
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True


def batches(loader, state: TrainState, device: torch.device):
    """(epoch, index, batch on device) from the saved position onwards, one batch ahead: the
    next batch's host-to-device copy runs on a side stream while the current step computes."""
    cuda = device.type == "cuda"
    stream = torch.cuda.Stream(device) if cuda else None

    def produce():
        epoch, start = state.epoch, state.batch_in_epoch
        while True:
            for i, b in enumerate(loader.epoch(epoch, start), start):
                yield epoch, i, b
            epoch, start = epoch + 1, 0

    source = produce()

    def load():
        e, i, b = next(source)
        if cuda:
            with torch.cuda.stream(stream):
                b = b.to(device, non_blocking=True)
        else:
            b = b.to(device)
        return e, i, b

    ahead = load()
    while True:
        if cuda:
            torch.cuda.current_stream(device).wait_stream(stream)
            ahead[2].images.record_stream(torch.cuda.current_stream(device))
        current, ahead = ahead, load()
        yield current


def val_images(cfg: Config, rank: int, world: int, device: torch.device) -> torch.Tensor | None:
    """This rank's share of the fixed held-out images, loaded once."""
    loader = build_loader(cfg, "val", rank, world, device)
    imgs = [b.images for b in loader.epoch(0)]
    return torch.cat(imgs).to(device) if imgs else None


def evaluate(G, task: Task, images: torch.Tensor | None, cfg: Config, precision: Precision, accel) -> dict:
    """Mean PSNR/SSIM/L1 (+ colourfulness) over every rank's held-out images, in eval mode."""
    net = unwrap(G)
    was_training = net.training
    net.eval()
    bs = cfg.train.batch_size
    chunks = [] if images is None else [images[i:i + bs] for i in range(0, images.shape[0], bs)]
    sums = score(net, task, chunks, cfg.data.image_size, cfg.run.seed, precision).to(accel.device)
    if accel.num_processes > 1:
        torch.distributed.all_reduce(sums)
    net.train(was_training)
    return means(task, sums)


@torch.no_grad()
def sample_grid(G, task: Task, images: torch.Tensor | None, cfg: Config, precision: Precision, log, step: int):
    if images is None or not log.enabled:
        return
    net = unwrap(G)
    was_training = net.training
    net.eval()
    gen = step_generator(cfg.run.seed, 0, 0, stream=99)
    inp, target = task.prepare(images[:8], cfg.data.image_size, gen, crop_gen=None)
    with precision.autocast():
        out = net(inp).float()
    net.train(was_training)
    log.samples(step, task.input_rgb(inp), task.output_rgb(inp, out), task.output_rgb(inp, target))


def all_finite(*nets) -> bool:
    flags = [torch.isfinite(p).all() for n in nets for p in unwrap(n).parameters()]
    return bool(torch.stack(flags).all())  # note: host sync; only before checkpoints


# --------------------------------------------------------------------------- the run


@dataclass
class Run:
    """Everything a step needs, built once: processes, task, networks, optimizers, position."""

    cfg: Config
    accel: object
    task: Task
    g_arch: GeneratorArch
    d_arch: DiscriminatorArch
    nets: Nets
    precision: Precision
    state: TrainState
    ckpts: Checkpoints
    resumed: bool
    notices: list[str]
    step_fn: object = None

    @property
    def rank(self) -> int:
        return self.accel.process_index

    @property
    def world(self) -> int:
        return self.accel.num_processes

    @property
    def device(self) -> torch.device:
        return self.accel.device

    def prepare(self, batch) -> tuple[torch.Tensor, torch.Tensor]:
        """Jitter and task conversion on the device; the randomness is a function of the step."""
        cfg, step = self.cfg, self.state.step
        return self.task.prepare(batch.images, cfg.data.image_size, step_generator(cfg.run.seed, self.rank, step),
                                 flip=cfg.data.flip, crop_gen=step_generator(cfg.run.seed, self.rank, step, 1))

    def step(self, inp: torch.Tensor, target: torch.Tensor) -> dict[str, torch.Tensor]:
        lr = self.cfg.optim.lr * lr_factor(self.state.step, self.cfg)
        set_lr(self.nets.opt_g, lr)
        set_lr(self.nets.opt_d, lr)
        return self.step_fn(inp, target)

    def advance(self, epoch: int, index: int, batches_per_epoch: int) -> None:
        """Count the step and the data position just consumed (what a checkpoint resumes from)."""
        s = self.state
        s.step += 1
        s.epoch, s.batch_in_epoch = (epoch + 1, 0) if index + 1 == batches_per_epoch else (epoch, index + 1)

    def save(self, is_best: bool = False) -> None:
        """Checkpoint on every rank's behalf (collective: every rank must call it)."""
        G, D, accel = self.nets.G, self.nets.D, self.accel
        average_buffers(G, accel)
        average_buffers(D, accel)
        if not all_finite(G, D):
            raise TrainingError(f"weights became non-finite before step {self.state.step}; not saving over "
                                f"{self.ckpts.last} (the last good checkpoint)")
        rngs = [None] * self.world
        if self.world > 1:
            torch.distributed.all_gather_object(rngs, capture_rng())
        else:
            rngs = [capture_rng()]
        if accel.is_main_process:
            payload = checkpoint_payload(self.cfg, self.g_arch, self.d_arch, self.nets, self.state, rngs)
            self.ckpts.save(payload, self.state.step, is_best=is_best)
        accel.wait_for_everyone()


def build_run(cfg: Config) -> Run:
    """Start this process's part of the job, build the networks and optimizers, and resume from
    <run>/checkpoints/last.pt when it exists."""
    configure_determinism(cfg.run.deterministic)
    accel = dist.start(cfg.train.device, cfg.train.timeout_s)
    rank, device = accel.process_index, accel.device
    notices: list[str] = []

    # Identical initial weights on every rank (DDP also broadcasts them).
    seed_all(cfg.run.seed)
    task = build_task(cfg.task)
    g_arch, d_arch = architectures(cfg, task)
    G = init_weights(build_generator(g_arch), cfg.model.init_type, cfg.model.init_gain)
    D = init_weights(build_discriminator(d_arch), cfg.model.init_type, cfg.model.init_gain)
    seed_all(mix_seed(cfg.run.seed, rank))  # from here on each rank draws its own dropout masks

    ckpts = Checkpoints(cfg.run_dir, cfg.train.keep_last)
    payload = ckpts.load_last() if cfg.run.resume else None
    if payload is not None:
        if payload.get("arch") != arch_dict(g_arch, d_arch):
            raise UsageError(f"{ckpts.last} holds a different model than this config; use another run.name "
                             f"or run.resume=false")
        G.load_state_dict(payload["generator"])
        D.load_state_dict(payload["discriminator"])

    G, D, D_plain = wrap_models(G, D, cfg, accel, notices.append)
    graphs = use_cuda_graphs(cfg, device, notices.append)
    precision = Precision(cfg.train.precision, device)
    skip = cfg.train.on_nonfinite == "skip"
    nets = Nets(G, D, D_plain,
                make_optimizer(unwrap(G).parameters(), cfg, device, capturable=graphs),
                make_optimizer(unwrap(D).parameters(), cfg, device, capturable=graphs),
                precision.make_scaler(skip), precision.make_scaler(skip))
    run = Run(cfg, accel, task, g_arch, d_arch, nets, precision, TrainState(), ckpts, payload is not None, notices)
    if payload is not None:
        resume(run, payload)
    run.step_fn = make_step_fn(nets, cfg, precision, graphs, notices.append)
    return run


def use_cuda_graphs(cfg: Config, device: torch.device, notice) -> bool:
    if not cfg.train.cuda_graphs:
        return False
    if device.type != "cuda":
        notice("train.cuda_graphs=true: CUDA graphs need a GPU; running eager steps")
        return False
    if cfg.train.precision == "fp16" or cfg.train.on_nonfinite == "skip":
        notice("train.cuda_graphs=true: fp16 loss scaling and on_nonfinite=skip read the gradient check on "
               "the host every step, which a graph cannot; running eager (use bf16)")
        return False
    return True


def resume(run: Run, payload: dict) -> None:
    """Optimizers, scalers, position and this rank's RNG streams from a checkpoint."""
    nets = run.nets
    nets.opt_g.load_state_dict(payload["opt_g"])
    nets.opt_d.load_state_dict(payload["opt_d"])
    nets.scaler_g.load_state_dict(payload["scaler_g"])
    nets.scaler_d.load_state_dict(payload["scaler_d"])
    run.state = TrainState(payload["step"], payload["epoch"], payload["batch_in_epoch"], payload.get("best"))
    rngs = payload.get("rng") or []
    if len(rngs) == run.world:
        restore_rng(rngs[run.rank])
    else:
        seed_all(mix_seed(run.cfg.run.seed, run.rank, run.state.step))
        run.notices.append(f"resumed with {run.world} processes from a checkpoint of {len(rngs)}: "
                           f"data order is kept, dropout streams are reseeded")


def train(cfg: Config) -> TrainResult:
    run = build_run(cfg)
    state, t = run.state, cfg.train
    log = RunLogger(cfg.run_dir, t.max_steps, state.step, enabled=run.accel.is_main_process)
    try:
        start_run_folder(run, log)
        loader = build_loader(cfg, "train", run.rank, run.world, run.device)
        held_out = val_images(cfg, run.rank, run.world, run.device)
        announce(run, loader, log)
        end = min(t.max_steps, state.step + t.stop_after) if t.stop_after else t.max_steps
        window = Window(run.device, step_flops_per_image(run.g_arch, run.d_arch, cfg.data.image_size),
                        peak_flops(run.device))
        metrics: dict = {}
        with StopSignals() as stop:
            stream = batches(loader, state, run.device) if state.step < end else iter(())
            while state.step < end:
                epoch, index, batch = window.timed_next(stream)
                inp, target = run.prepare(batch)
                window.add(run.step(inp, target))
                run.advance(epoch, index, loader.batches_per_epoch)

                last = state.step == end
                stopping = stop.agreed(run.accel, every=1 if run.world == 1 else 10, step=state.step)
                if state.step % t.log_every == 0 or last or stopping:
                    metrics = window.flush(state, cfg, run.world, run.nets)
                    log.log(metrics)
                    check_finite(metrics, state.step, run.ckpts, cfg)
                if t.sample_every and (state.step % t.sample_every == 0 or last):
                    sample_grid(run.nets.G, run.task, held_out, cfg, run.precision, log, state.step)
                is_best = False
                if t.eval_every and (state.step % t.eval_every == 0 or last):
                    is_best = validate(run, held_out, log)
                if (t.ckpt_every and state.step % t.ckpt_every == 0) or last or stopping or is_best:
                    run.save(is_best)
                if stopping:
                    log.print(f"received {stop.name}: saved step {state.step} to {run.ckpts.last}; exiting")
                    return result(run, metrics, preempted=True, signal=stop.name)
    except torch.OutOfMemoryError:
        raise TrainingError(
            f"out of memory at train.batch_size={t.batch_size}, data.image_size={cfg.data.image_size}, "
            f"precision {t.precision}: lower train.batch_size, use train.precision=bf16, or lower "
            f"model.ngf/model.num_downs") from None
    finally:
        log.close()
    if not metrics:
        log.print(f"nothing to do: {cfg.run_dir} already reached step {state.step}")
    return result(run, metrics)


def start_run_folder(run: Run, log: RunLogger) -> None:
    if run.accel.is_main_process:
        run.cfg.run_dir.mkdir(parents=True, exist_ok=True)
        (run.cfg.run_dir / "config.yaml").write_text(run.cfg.to_yaml())
    for n in run.notices:
        log.print(f"[yellow]notice:[/] {n}")


def announce(run: Run, loader, log: RunLogger) -> None:
    cfg = run.cfg
    log.print(f"p2p train: {run.task.name}, {run.world} process(es) on {run.device.type}, global batch "
              f"{cfg.train.batch_size * run.world}, {loader.batches_per_epoch} batches/epoch/rank, "
              f"step {run.state.step} -> {cfg.train.max_steps}, run folder {cfg.run_dir}"
              + (" (resumed)" if run.resumed else ""))


def check_finite(metrics: dict, step: int, ckpts: Checkpoints, cfg: Config) -> None:
    """Stop before a NaN can reach a checkpoint (skip mode drops such updates instead)."""
    bad = [k for k in LOSS_NAMES if not math.isfinite(metrics.get(k, 0.0))]
    if bad and cfg.train.on_nonfinite == "stop":
        raise TrainingError(f"non-finite loss {bad[0]}={metrics[bad[0]]} in the steps up to {step}; stopped "
                            f"without saving (last good checkpoint: {ckpts.last if ckpts.last.exists() else 'none'})")


def validate(run: Run, held_out: torch.Tensor | None, log: RunLogger) -> bool:
    """Score the held-out images; True when this is the best PSNR so far (then best.pt is written)."""
    average_buffers(run.nets.G, run.accel)
    val = evaluate(run.nets.G, run.task, held_out, run.cfg, run.precision, run.accel)
    log.log_eval(run.state.step, val)
    if val["count"] > 0 and (run.state.best is None or val["psnr"] > run.state.best):
        run.state.best = val["psnr"]
        return True
    return False


def result(run: Run, metrics: dict, preempted: bool = False, signal: str | None = None) -> TrainResult:
    return TrainResult(run.state.step, preempted, signal, str(run.cfg.run_dir), metrics,
                       unwrap(run.nets.G), unwrap(run.nets.D))


def make_step_fn(nets: Nets, cfg: Config, precision: Precision, graphs: bool, notice):
    """Eager step, or the same step captured once in a CUDA graph and replayed."""
    def eager(inp, target):
        return train_step(nets, inp, target, cfg.loss, precision)

    if not graphs:
        return eager
    from p2p.train.graphs import GraphedStep

    return GraphedStep(eager, notice=notice)


def checkpoint_payload(cfg, g_arch, d_arch, nets: Nets, state: TrainState, rngs: list) -> dict:
    return {
        "format": "p2p", "version": FORMAT_VERSION,
        "arch": arch_dict(g_arch, d_arch),
        "generator": unwrap(nets.G).state_dict(), "discriminator": unwrap(nets.D).state_dict(),
        "opt_g": nets.opt_g.state_dict(), "opt_d": nets.opt_d.state_dict(),
        "scaler_g": nets.scaler_g.state_dict(), "scaler_d": nets.scaler_d.state_dict(),
        "step": state.step, "epoch": state.epoch, "batch_in_epoch": state.batch_in_epoch, "best": state.best,
        "lr_factor": lr_factor(state.step, cfg), "rng": rngs, "world_size": len(rngs),
        "config": cfg.to_dict(),
    }


class Window:
    """Losses summed on the device between log steps, plus timing of the same window."""

    def __init__(self, device: torch.device, flops_per_image: float = 0.0, peak: float | None = None):
        self.device, self.flops, self.peak = device, flops_per_image, peak
        self.sums: dict[str, torch.Tensor] = {}
        self.steps, self.data_wait, self.t0 = 0, 0.0, time.perf_counter()
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(device)

    def timed_next(self, stream):
        """The next batch, counting the time spent waiting for it."""
        t0 = time.perf_counter()
        item = next(stream)
        self.data_wait += time.perf_counter() - t0
        return item

    def add(self, losses: dict[str, torch.Tensor]) -> None:
        for k, v in losses.items():
            self.sums[k] = self.sums[k] + v if k in self.sums else v.clone()
        self.steps += 1

    def flush(self, state: TrainState, cfg: Config, world: int, nets: Nets) -> dict:
        names = list(self.sums)
        stacked = torch.stack([self.sums[k].float() for k in names])
        if world > 1:  # the mean over ranks: every rank logs and checks the same numbers
            torch.distributed.all_reduce(stacked)
            stacked /= world
        values = stacked.tolist()  # note: host sync point
        elapsed = time.perf_counter() - self.t0
        per_rank = cfg.train.batch_size * self.steps / elapsed
        row = {"step": state.step, "epoch": state.epoch, "world_size": world,
               "global_batch": cfg.train.batch_size * world}
        row.update({k: v / self.steps for k, v in zip(names, values)})
        row.update(img_per_s=per_rank * world, step_time_s=elapsed / self.steps,
                   data_wait=min(1.0, self.data_wait / elapsed), lr=cfg.optim.lr * lr_factor(state.step, cfg))
        if self.device.type == "cuda":
            row["peak_mem_gb"] = torch.cuda.max_memory_allocated(self.device) / 2**30
            torch.cuda.reset_peak_memory_stats(self.device)
        else:
            row["peak_mem_gb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
        if self.peak:
            row["mfu"] = self.flops * per_rank / self.peak
        if nets.scaler_g.is_enabled():
            row["loss_scale_g"], row["loss_scale_d"] = nets.scaler_g.get_scale(), nets.scaler_d.get_scale()
        self.sums, self.steps, self.data_wait, self.t0 = {}, 0, 0.0, time.perf_counter()
        return row
