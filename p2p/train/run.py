"""A training run, built once and complete: this process's place in the job, the task, the
networks wrapped for distribution, their optimizers, the step function and the position to go
on from (a fresh start, or <run>/checkpoints/last.pt)."""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch

from p2p import dist
from p2p.augment import step_generator
from p2p.config import Config
from p2p.data.plan import mix_seed
from p2p.errors import TrainingError, UsageError, WriteError
from p2p.models import DiscriminatorArch, GeneratorArch
from p2p.run_folder import RunFolderLock, lock_run_folder
from p2p.tasks import Task, build_task
from p2p.train.checkpoint import (Checkpoints, TrainState, load_weights, make_payload, open_resumable, rank_state,
                                  restore_training, seed_all)
from p2p.train.coarse_to_fine import frozen_parameters, start_global_part
from p2p.train.in_effect import InEffect, Notices, adam_kind
from p2p.train.nets import architectures, build_nets, build_networks
from p2p.train.position import continue_position
from p2p.train.schedule import lr_factor, set_lr
from p2p.precision import Precision
from p2p.train.step import Nets, train_step
from p2p.train.wrap import (averaged_buffers, unwrap, uses_channels_last, uses_compile, uses_sync_batchnorm,
                            wrap_models)


@dataclass
class Run:
    """Everything a step needs. `state` is the only part that changes as the run goes."""

    cfg: Config
    accel: object
    task: Task
    g_arch: GeneratorArch
    d_arch: DiscriminatorArch
    nets: Nets
    precision: Precision
    step_fn: object
    state: TrainState
    ckpts: Checkpoints
    resumed: bool
    notices: Notices
    speedups: InEffect
    lock: RunFolderLock | None = None  # the run folder's, on the process that writes it (rank 0)

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
        return self.prepare_for(batch, self.state.step)

    def prepare_for(self, batch, step: int) -> tuple[torch.Tensor, torch.Tensor]:
        """The (input, target) of `batch` as step `step` sees it (p2p.data.prefetch runs it ahead)."""
        return prepare_batch(self.task, batch.images, self.cfg, self.rank, step)

    def scheduled_lr(self) -> float:
        """The learning rate the schedule gives the next step (official policy: of the epoch its
        batch comes from)."""
        return self.cfg.optim.lr * lr_factor(self.state.step, self.cfg, self.state.epoch)

    def lr(self) -> float:
        """The learning rate the optimizer holds (what the last step used), read back rather
        than recomputed, so a log shows it when the two ever disagree. Note: a host read of a
        device tensor with CUDA graphs; called at log steps only."""
        return float(self.nets.opt_g.param_groups[0]["lr"])

    def in_effect(self) -> dict:
        """What ran since the last metrics row (p2p.train.in_effect.InEffect.row)."""
        return self.speedups.row()

    def step(self, inp: torch.Tensor, target: torch.Tensor) -> dict[str, torch.Tensor]:
        lr = self.scheduled_lr()
        set_lr(self.nets.opt_g, lr)
        set_lr(self.nets.opt_d, lr)
        self.nets.frozen_g = frozen_parameters(self.nets.G, self.cfg, self.state.step)
        return self.step_fn(inp, target)

    def advance(self, epoch: int, index: int, batches_in_epoch: int) -> None:
        """Count the step and the data position just consumed (what a checkpoint resumes from)."""
        s = self.state
        s.step += 1
        if epoch != s.epoch:  # a new epoch starts from its plain plan (an emptied one may be skipped)
            s.epoch_history = []
        if index + 1 == batches_in_epoch:
            s.epoch, s.batch_in_epoch, s.epoch_history = epoch + 1, 0, []
        else:
            s.epoch, s.batch_in_epoch = epoch, index + 1

    def save(self, is_best: bool = False) -> None:
        """Checkpoint on every rank's behalf (collective: every rank must call it)."""
        G, D, accel = self.nets.G, self.nets.D, self.accel
        if not all_finite(G, D):
            raise TrainingError(f"weights became non-finite before step {self.state.step}; not saving over "
                                f"{self.ckpts.last} (the last good checkpoint)")
        mine = rank_state(G, D)
        ranks = [None] * self.world
        if self.world > 1:
            torch.distributed.all_gather_object(ranks, mine)
        else:
            ranks = [mine]
        # the saved networks get BatchNorm statistics averaged over ranks (what inference wants)
        failed = None
        ema = [self.nets.ema.module] if self.nets.ema is not None else []
        with averaged_buffers(accel, G, D, *ema):
            if accel.is_main_process:
                payload = make_payload(self.cfg, self.g_arch, self.d_arch, self.nets, self.state, ranks,
                                       lr_factor(self.state.step, self.cfg, self.state.epoch))
                try:
                    self.ckpts.save(payload, self.state.step, is_best=is_best)
                except WriteError as e:  # a full disk: every rank stops, none trains on unsaved
                    failed = str(e)
        if self.world > 1:  # also the barrier: every rank learns whether rank 0 could save
            box = [failed]
            torch.distributed.broadcast_object_list(box, src=0)
            failed = box[0]
        if failed:
            raise WriteError(failed)


def prepare_batch(task: Task, images: torch.Tensor, cfg: Config, rank: int, step: int) -> tuple[torch.Tensor, torch.Tensor]:
    """A uint8 batch on the device -> the step's (input, target): jitter and task conversion,
    their randomness a function of (seed, rank, step) alone."""
    seed = cfg.run.seed
    return task.prepare(images, cfg.data.image_size, step_generator(seed, rank, step), flip=cfg.data.flip,
                        crop_gen=step_generator(seed, rank, step, 1))


def all_finite(*nets) -> bool:
    flags = [torch.isfinite(p).all() for n in nets for p in unwrap(n).parameters()]
    return bool(torch.stack(flags).all())  # note: host sync; only before checkpoints


def configure_determinism(deterministic: bool) -> None:
    if deterministic:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        torch.use_deterministic_algorithms(True)
        torch.backends.cudnn.benchmark = False
    else:
        torch.backends.cudnn.benchmark = True  # fixed shapes: let cuDNN pick the fastest kernels
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True


def use_cuda_graphs(cfg: Config, device: torch.device, notice, world: int = 1) -> bool:
    if not cfg.train.cuda_graphs:
        return False
    if device.type != "cuda":
        notice("train.cuda_graphs=true: CUDA graphs need a GPU; running eager steps")
        return False
    if world > 1:
        # DDP in a graph needs DDP built on a side stream, NCCL's async error handling off and 11
        # eager DDP iterations before capture (PyTorch's CUDA graphs notes), none of which has
        # run on a GPU cluster yet: refuse rather than fail mid-run.
        notice(f"train.cuda_graphs=true: CUDA graphs are used with one process only ({world} here); "
               f"running eager steps")
        return False
    if cfg.train.activation_checkpointing != "none" or cfg.train.fix_global_steps:
        # a captured step would keep the recompute's or the freeze's state of its capture
        what = ("activation_checkpointing=" + cfg.train.activation_checkpointing
                if cfg.train.activation_checkpointing != "none" else "fix_global_steps")
        notice(f"train.cuda_graphs=true: not with train.{what} (not captured here yet); running eager steps")
        return False
    if cfg.train.precision == "fp16" or cfg.train.on_nonfinite == "skip":
        notice("train.cuda_graphs=true: fp16 loss scaling and on_nonfinite=skip read the gradient check on "
               "the host every step, which a graph cannot; running eager (use bf16)")
        return False
    return True


def make_step_fn(nets: Nets, cfg: Config, precision: Precision, graphs: bool, notice):
    """Eager step, or the same step captured once in a CUDA graph and replayed."""
    def eager(inp, target):
        return train_step(nets, inp, target, cfg.loss, precision)

    if not graphs:
        return eager
    from p2p.train.graphs import GraphedStep

    return GraphedStep(eager, notice=notice)


def build_run(cfg: Config, lock: bool = True) -> Run:
    """Start this process's part of the job, take the run folder (`lock`: rank 0 holds its lock
    until `Run.lock` is released or the process ends), build the networks and optimizers, and
    resume from the run folder's newest readable checkpoint (last.pt unless it is damaged) when
    there is one."""
    configure_determinism(cfg.run.deterministic)
    accel = dist.start(cfg.train.device, cfg.train.timeout_s)
    notices = Notices()
    held = hold_run_folder(cfg, accel, notices) if lock else None
    try:
        run = _build(cfg, accel, notices)
    except BaseException:
        if held is not None:
            held.release()
        raise
    run.lock = held
    return run


def hold_run_folder(cfg: Config, accel, notices: Notices) -> RunFolderLock | None:
    """Rank 0 locks the run folder before anything in it is read or moved; every rank learns
    whether it could, so that a refused run ends on all of them with the same line."""
    held, refused = None, None
    if accel.is_main_process:
        try:
            held = lock_run_folder(cfg.run_dir)
        except UsageError as e:  # RunFolderBusy, naming the holder
            refused = str(e)
        except OSError as e:  # e.g. no permission to create it
            refused = f"cannot create the run folder {cfg.run_dir}: {e.strerror or e}"
        if held is not None and held.notice:
            notices.append(held.notice)
    if accel.num_processes > 1:
        box = [refused]
        torch.distributed.broadcast_object_list(box, src=0)
        refused = box[0]
    if refused:
        raise UsageError(refused)
    return held


def _build(cfg: Config, accel, notices: Notices) -> Run:
    rank, world, device = accel.process_index, accel.num_processes, accel.device

    seed_all(cfg.run.seed)  # identical initial weights on every rank (DDP also broadcasts them)
    task = build_task(cfg.task, cfg.data.device_step)
    task.notice = task.device_step.report = notices  # fallbacks found mid-run are printed and logged
    if task.fused_device_step and (why := task.device_step.notice(device)):
        notices.append(why)
    g_arch, d_arch = architectures(cfg, task)
    G, D = build_networks(cfg, task)
    seed_all(mix_seed(cfg.run.seed, rank))  # from here on each rank draws its own dropout masks

    ckpts = Checkpoints(cfg.run_dir, cfg.train.keep_last)
    found = open_resumable(ckpts, accel, notices) if cfg.run.resume else None
    payload = found.payload if found is not None else None
    if payload is not None:
        load_weights(payload, G, D, g_arch, d_arch, found.path)
    elif cfg.model.init_global:  # a fresh local run starts from a trained global generator
        start_global_part(G, cfg.model.init_global)

    counters: dict = {}
    G, D, D_frozen = wrap_models(G, D, cfg, accel, notices, counters)
    graphs = use_cuda_graphs(cfg, device, notices, world)
    precision = Precision(cfg.train.precision, device)
    channels_last = uses_channels_last(cfg, device)
    nets = build_nets(G, D, D_frozen, cfg, device, precision, capturable=graphs, channels_last=channels_last,
                      notice=notices, task=task)
    state = TrainState(best_metric=cfg.train.best_metric)
    if payload is not None:
        state, resumed_notices = restore_training(payload, nets, rank, world, cfg.run.seed)
        notices += resumed_notices
        if state.best_metric != cfg.train.best_metric:  # a best PSNR is no best LPIPS: start over
            notices.append(f"best.pt was chosen by {state.best_metric}; from now on by train.best_metric="
                           f"{cfg.train.best_metric} (the next validation writes it)")
            state.best, state.best_metric = None, cfg.train.best_metric
        if nets.ema is not None:  # after restore_training: the EMA's buffers are this rank's G's
            notices += [n for n in [nets.ema.restore(payload)] if n]
        moved_on = continue_position(state, payload, world, cfg.train.batch_size)
        if moved_on:
            notices.append(moved_on)
    step_fn = make_step_fn(nets, cfg, precision, graphs, notices)
    speedups = InEffect(precision.name, channels_last, uses_compile(cfg, device), adam_kind(nets.opt_g),
                        uses_sync_batchnorm(cfg, device, world), step_fn, notices, counters,
                        task.device_step if task.fused_device_step else None)
    return Run(cfg, accel, task, g_arch, d_arch, nets, precision, step_fn, state, ckpts, payload is not None, notices,
               speedups)
