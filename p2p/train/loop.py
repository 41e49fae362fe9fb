"""The training run. `train(cfg)` reads like its table of contents:

    start processes -> build task, models, optimizers -> resume -> wrap for distribution
    -> for each step: next batch, task conversion on the device, train_step
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
    try:
        loader = build_loader(cfg, "val", rank, world, device)
    except UsageError:
        if rank == 0:
            raise
        return None
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


def train(cfg: Config, on_start=None) -> TrainResult:
    configure_determinism(cfg.run.deterministic)
    accel = dist.start(cfg.train.device, cfg.train.timeout_s)
    rank, world, device = accel.process_index, accel.num_processes, accel.device
    run_dir, rank0 = cfg.run_dir, accel.is_main_process
    notices: list[str] = []

    # Build: identical initial weights on every rank (DDP also broadcasts them).
    seed_all(cfg.run.seed)
    task = build_task(cfg.task)
    g_arch, d_arch = architectures(cfg, task)
    G = init_weights(build_generator(g_arch), cfg.model.init_type, cfg.model.init_gain)
    D = init_weights(build_discriminator(d_arch), cfg.model.init_type, cfg.model.init_gain)
    seed_all(mix_seed(cfg.run.seed, rank))  # from here on each rank draws its own dropout masks

    ckpts = Checkpoints(run_dir, cfg.train.keep_last)
    payload = ckpts.load_last() if cfg.run.resume else None
    state = TrainState()
    if payload is not None:
        if payload.get("arch") != arch_dict(g_arch, d_arch):
            raise UsageError(f"{ckpts.last} holds a different model than this config; use another run.name "
                             f"or run.resume=false")
        unwrap(G).load_state_dict(payload["generator"])
        unwrap(D).load_state_dict(payload["discriminator"])

    G, D, D_plain = wrap_models(G, D, cfg, accel, notices.append)
    graphs = cfg.train.cuda_graphs and device.type == "cuda"
    if cfg.train.cuda_graphs and not graphs:
        notices.append("train.cuda_graphs=true: CUDA graphs need a GPU; running eager steps")
    elif graphs and (cfg.train.precision == "fp16" or cfg.train.on_nonfinite == "skip"):
        graphs = False
        notices.append("train.cuda_graphs=true: fp16 loss scaling and on_nonfinite=skip read the gradient "
                       "check on the host every step, which a graph cannot; running eager (use bf16)")
    precision = Precision(cfg.train.precision, device)
    skip = cfg.train.on_nonfinite == "skip"
    nets = Nets(G, D, D_plain,
                make_optimizer(unwrap(G).parameters(), cfg, device, capturable=graphs),
                make_optimizer(unwrap(D).parameters(), cfg, device, capturable=graphs),
                precision.make_scaler(skip), precision.make_scaler(skip))

    if payload is not None:
        nets.opt_g.load_state_dict(payload["opt_g"])
        nets.opt_d.load_state_dict(payload["opt_d"])
        nets.scaler_g.load_state_dict(payload["scaler_g"])
        nets.scaler_d.load_state_dict(payload["scaler_d"])
        state = TrainState(payload["step"], payload["epoch"], payload["batch_in_epoch"], payload.get("best"))
        rngs = payload.get("rng") or []
        if len(rngs) == world:
            restore_rng(rngs[rank])
        else:
            seed_all(mix_seed(cfg.run.seed, rank, state.step))
            notices.append(f"resumed with {world} processes from a checkpoint of {len(rngs)}: "
                           f"data order is kept, dropout streams are reseeded")

    log = RunLogger(run_dir, cfg.train.max_steps, state.step, enabled=rank0)
    if rank0:
        run_dir.mkdir(parents=True, exist_ok=True)
        (run_dir / "config.yaml").write_text(cfg.to_yaml())
    for n in notices:
        log.print(f"[yellow]notice:[/] {n}")
    loader = build_loader(cfg, "train", rank, world, device)
    held_out = val_images(cfg, rank, world, device)
    flops = step_flops_per_image(g_arch, d_arch, cfg.data.image_size)
    peak = peak_flops(device)
    step_fn = make_step_fn(nets, cfg, precision, graphs, log.print)
    log.print(f"p2p train: {task.name}, {world} process(es) on {device.type}, global batch "
              f"{cfg.train.batch_size * world}, {loader.batches_per_epoch} batches/epoch/rank, "
              f"step {state.step} -> {cfg.train.max_steps}, run folder {run_dir}"
              + (" (resumed)" if payload is not None else ""))
    if on_start is not None:
        on_start(state)

    def save(reason: str) -> None:
        average_buffers(G, accel)
        average_buffers(D, accel)
        if not all_finite(G, D):
            raise TrainingError(f"weights became non-finite before step {state.step}; not saving over "
                                f"{ckpts.last} (the last good checkpoint)")
        rngs = [None] * world
        if world > 1:
            torch.distributed.all_gather_object(rngs, capture_rng())
        else:
            rngs = [capture_rng()]
        if rank0:
            ckpts.save(checkpoint_payload(cfg, g_arch, d_arch, nets, state, rngs), state.step,
                       is_best=reason == "best")
        accel.wait_for_everyone()

    stop = StopSignals()
    window = Window(device)
    metrics: dict = {}
    stream = batches(loader, state, device) if state.step < cfg.train.max_steps else iter(())
    end = cfg.train.max_steps
    if cfg.train.stop_after:  # a chunk of a longer run: the schedule still follows max_steps
        end = min(end, state.step + cfg.train.stop_after)
    try:
        with stop:
            while state.step < end:
                t_wait = time.perf_counter()
                epoch, index, batch = next(stream)
                window.data_wait += time.perf_counter() - t_wait

                step = state.step
                set_lr(nets.opt_g, cfg.optim.lr * lr_factor(step, cfg))
                set_lr(nets.opt_d, cfg.optim.lr * lr_factor(step, cfg))
                inp, target = task.prepare(batch.images, cfg.data.image_size,
                                           step_generator(cfg.run.seed, rank, step),
                                           flip=cfg.data.flip, crop_gen=step_generator(cfg.run.seed, rank, step, 1))
                losses = step_fn(inp, target)
                window.add(losses)

                state.step += 1
                state.epoch, state.batch_in_epoch = ((epoch + 1, 0) if index + 1 == loader.batches_per_epoch
                                                     else (epoch, index + 1))
                last = state.step == end
                stopping = stop.agreed(accel, every=1 if world == 1 else 10, step=state.step)

                if state.step % cfg.train.log_every == 0 or last or stopping:
                    metrics = window.flush(state, cfg, world, flops, peak, nets)
                    log.log(metrics)
                    bad = [k for k in LOSS_NAMES if not math.isfinite(metrics.get(k, 0.0))]
                    if bad and cfg.train.on_nonfinite == "stop":
                        raise TrainingError(f"non-finite loss {bad[0]}={metrics[bad[0]]} in the steps up to "
                                            f"{state.step}; stopped without saving (last good checkpoint: "
                                            f"{ckpts.last if ckpts.last.exists() else 'none'})")
                if cfg.train.sample_every and (state.step % cfg.train.sample_every == 0 or last):
                    sample_grid(G, task, held_out, cfg, precision, log, state.step)
                is_best = False
                if cfg.train.eval_every and (state.step % cfg.train.eval_every == 0 or last):
                    average_buffers(G, accel)
                    val = evaluate(G, task, held_out, cfg, precision, accel)
                    log.log_eval(state.step, val)
                    is_best = val["count"] > 0 and (state.best is None or val["psnr"] > state.best)
                    if is_best:
                        state.best = val["psnr"]
                if (cfg.train.ckpt_every and state.step % cfg.train.ckpt_every == 0) or last or stopping or is_best:
                    save("best" if is_best else "periodic")
                if stopping:
                    log.print(f"received {stop.name}: saved step {state.step} to {ckpts.last}; exiting")
                    return TrainResult(state.step, True, stop.name, str(run_dir), metrics, unwrap(G), unwrap(D))
    except torch.OutOfMemoryError:
        raise TrainingError(
            f"out of memory at train.batch_size={cfg.train.batch_size}, data.image_size={cfg.data.image_size}, "
            f"precision {cfg.train.precision}: lower train.batch_size, use train.precision=bf16, or lower "
            f"model.ngf/model.num_downs") from None
    finally:
        log.close()
    if state.step >= cfg.train.max_steps and not metrics:
        log.print(f"nothing to do: {run_dir} already reached step {state.step}")
    return TrainResult(state.step, False, None, str(run_dir), metrics, unwrap(G), unwrap(D))


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

    def __init__(self, device: torch.device):
        self.device = device
        self.sums: dict[str, torch.Tensor] = {}
        self.steps, self.data_wait, self.t0 = 0, 0.0, time.perf_counter()
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(device)

    def add(self, losses: dict[str, torch.Tensor]) -> None:
        for k, v in losses.items():
            self.sums[k] = self.sums[k] + v if k in self.sums else v.clone()
        self.steps += 1

    def flush(self, state: TrainState, cfg: Config, world: int, flops: float, peak: float | None, nets: Nets) -> dict:
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
        if peak:
            row["mfu"] = flops * per_rank / peak
        if nets.scaler_g.is_enabled():
            row["loss_scale_g"], row["loss_scale_d"] = nets.scaler_g.get_scale(), nets.scaler_d.get_scale()
        self.sums, self.steps, self.data_wait, self.t0 = {}, 0, 0.0, time.perf_counter()
        return row
