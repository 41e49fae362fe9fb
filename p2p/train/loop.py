"""The training loop. `train(cfg)` reads like its table of contents:

    build the run (processes, task, networks, optimizers; resume from last.pt)
    -> for each step: next batch, jitter + task conversion on the device, G+D step
       -> at log steps: read losses (the only host sync), check they are finite, log
       -> samples, validation (best.pt), checkpoints
    -> on SIGTERM/SIGUSR2: finish the step, checkpoint, return (Slurm requeues us)
    -> a full disk, a dead loader worker, a lost peer: one-line TrainingError naming the last
       good checkpoint (nothing trains on without a way to save)

The same function runs as one process, under torchrun / accelerate launch and in Slurm tasks.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch

from p2p import dist
from p2p.atomic import write_text
from p2p.config import Config
from p2p.data import Backend, build_loader, resolve_backend
from p2p.data.prefetch import device_batches, prepared_batches, prepares_ahead
from p2p.data.workers import worker_failure
from p2p.errors import PeerLostError, TrainingError, UsageError, WriteError
from p2p.evaluation import FID_WEIGHTS_ENV, HIGHER_IS_BETTER, LPIPS_WEIGHTS_ENV, weights_path
from p2p.run_folder import run_folder
from p2p.specs.losses import LOSSES
from p2p.train.flops import peak_flops, step_flops_per_image
from p2p.train.logger import RunLogger
from p2p.train.meter import LogInterval
from p2p.train.straggler import StragglerWatch
from p2p.specs.backends import BACKENDS
from p2p.train.position import continue_loader
from p2p.train.run import Run, build_run
from p2p.train.schedule import official_schedule_notice
from p2p.train.signals import StoppedBeforeFirstStep, StopSignals
from p2p.train.trackers import check_installed
from p2p.train.validation import held_out_images, sample_grid, validate, validation_scorer
from p2p.train.wrap import unwrap

__all__ = ["train", "TrainResult", "TrainingError"]


@dataclass
class TrainResult:
    step: int
    complete: bool  # reached train.max_steps
    preempted: bool = False  # stopped on a signal, after saving last.pt
    signal: str | None = None
    run_dir: str = ""
    rank: int = 0
    world: int = 1
    last_metrics: dict = field(default_factory=dict)
    generator: torch.nn.Module | None = None
    discriminator: torch.nn.Module | None = None


def train(cfg: Config) -> TrainResult:
    check_installed(cfg.run.trackers)  # every rank, before any process group: one line, not a hang
    check_best_metric(cfg)
    run_folder(cfg.run.out_dir, cfg.run.name)  # the same: a name that leaves run.out_dir is refused
    run = build_run(cfg)  # rank 0 holds the run folder's lock from here (p2p.run_folder)
    try:
        return train_run(run)
    finally:
        if run.lock is not None:
            run.lock.release()


def train_run(run: Run) -> TrainResult:
    """`train` once the run is built and its folder is this process's."""
    cfg = run.cfg
    state, t = run.state, cfg.train
    log = RunLogger(cfg.run_dir, t.max_steps, state.step, enabled=run.accel.is_main_process,
                    trackers=cfg.run.trackers, config=cfg.to_dict())
    metrics: dict = {}
    try:
        start_run_folder(run, log)
        backend = resolve_backend(cfg.data.source, cfg.data.backend, run.device, run.task.spec.input_kind)  # `auto` once
        loader = build_loader(cfg, "train", run.rank, run.world, run.device, backend)
        continue_loader(loader, state, backend)
        held_out = held_out_images(cfg, run.rank, run.world, backend) if t.eval_every or t.sample_every else []
        scorer = validation_scorer(cfg, run.device) if t.eval_every else None
        announce(run, loader, backend, log)
        end = min(t.max_steps, state.step + t.stop_after) if t.stop_after else t.max_steps
        interval = LogInterval(run.device, step_flops_per_image(run.g_arch, run.d_arch, cfg.data.image_size,
                                                                cfg.loss), peak_flops(run.device, t.precision),
                               rank=run.rank)
        stragglers = StragglerWatch(t.straggler_lag)
        batches = device_batches(loader, state.epoch, state.batch_in_epoch, run.device) if state.step < end \
            else iter(())
        ahead = prepares_ahead(run.task, run.device)
        with StopSignals(at_once=run.world == 1) as stop, \
                prepared_batches(batches, run.prepare_for, state.step, ahead, end) as stream:
            while state.step < end:
                epoch, index, (inp, target) = interval.timed_next(stream)  # the device step done ahead on CPU
                interval.add(run.step(inp, target))
                run.advance(epoch, index, loader.epoch_batches(epoch))
                stop.stepped()

                last = state.step == end
                stopping = stop.agreed(run.accel, every=1 if run.world == 1 else 10, step=state.step)
                if state.step % t.log_every == 0 or last or stopping:
                    metrics = {**interval.row(state.step, state.epoch, t.batch_size, run.world, run.lr(), run.nets),
                               **run.in_effect()}
                    log.log(metrics)
                    if slow := stragglers.see(metrics):
                        log.print(f"[yellow]notice:[/] {slow}")
                    check_finite(metrics, run)
                if t.sample_every and (state.step % t.sample_every == 0 or last):
                    sample_grid(run, held_out, log, state.step)
                is_best = t.eval_every and (state.step % t.eval_every == 0 or last) and \
                    validated_best(run, held_out, scorer, log)
                if (t.ckpt_every and state.step % t.ckpt_every == 0) or last or stopping or is_best:
                    run.save(bool(is_best))
                if stopping:
                    log.print(f"received {stop.name}: saved step {state.step} to {run.ckpts.last}; exiting")
                    return result(run, metrics, signal=stop.name)
    except StoppedBeforeFirstStep as e:  # nothing new since the checkpoint this run started from
        log.print(f"received {e} before the first step finished: nothing new to save; exiting")
        return result(run, metrics, signal=str(e))
    except torch.OutOfMemoryError:
        raise TrainingError(
            f"out of memory at train.batch_size={t.batch_size}, data.image_size={cfg.data.image_size}, "
            f"precision {t.precision}: lower train.batch_size, use train.precision=bf16, or lower "
            f"model.ngf/model.num_downs") from None
    except WriteError as e:  # a full disk or an I/O error: no training on without a way to save
        raise TrainingError(f"{e}; stopped at step {state.step}, last good checkpoint: {last_good(run)}") from None
    except (RuntimeError, OSError, EOFError) as e:  # OSError: a worker died half-way through a hand-over
        dead = worker_failure(e)
        if dead is not None:
            raise TrainingError(f"{dead} at step {state.step} (the out-of-memory killer, usually: lower "
                                f"data.workers or train.batch_size, or give the job more memory); last good "
                                f"checkpoint: {last_good(run)}") from None
        why = dist.peer_failure(e) if isinstance(e, RuntimeError) else None
        if why is None:
            raise
        raise PeerLostError(f"{why} at step {state.step} (train.timeout_s={t.timeout_s}): another process of "
                            f"this job is stuck or gone, see its log; last good checkpoint: {last_good(run)}") from None
    finally:
        log.close()
    if not metrics:
        log.print(f"nothing to do: {cfg.run_dir} already reached step {state.step}")
    return result(run, metrics)


def start_run_folder(run: Run, log: RunLogger) -> None:
    if run.accel.is_main_process:
        run.cfg.run_dir.mkdir(parents=True, exist_ok=True)
        write_text(run.cfg.run_dir / "config.yaml", run.cfg.to_yaml())
    # printed now, and every later one when it happens (a failed graph capture at step 4, ...)
    run.notices.attach(lambda text: log.print(f"[yellow]notice:[/] {text}"))


def announce(run: Run, loader, backend: Backend, log: RunLogger) -> None:
    cfg = run.cfg
    spec = backend.spec
    log.print(f"p2p train: {run.task.name}, {run.world} process(es) on {run.device.type}, global batch "
              f"{cfg.train.batch_size * run.world}, {loader.batches_per_epoch} batches/epoch/rank "
              f"({backend.name} loader), "
              f"step {run.state.step} -> {cfg.train.max_steps}, run folder {cfg.run_dir}"
              + (" (resumed)" if run.resumed else ""))
    if spec.cpu_jpeg_decoder:  # its workers decode with p2p.data.decode: which decoder is in the rows
        from p2p.data.decode import decoder_fallback_notice, jpeg_decoder

        run.speedups.jpeg_decoder = jpeg_decoder()
        if fallback := decoder_fallback_notice():
            run.notices(fallback)
    schedule = official_schedule_notice(cfg, loader.batches_per_epoch)
    if schedule:
        log.print(f"[yellow]notice:[/] {schedule}")
    if cfg.data.worker_kind not in spec.worker_kinds:  # said, not silently ignored
        *most, last = [s.name for s in BACKENDS if cfg.data.worker_kind in s.worker_kinds]
        honoured = f"{', '.join(most)} and {last}" if most else last
        log.print(f"[yellow]notice:[/] data.worker_kind={cfg.data.worker_kind} applies to the {honoured} backends; "
                  f"the {backend.name} loader {spec.workers_are}")


def last_good(run: Run) -> str:
    if not run.ckpts.last.exists():
        return "none"
    step = run.ckpts.last_step
    return f"{run.ckpts.last}" + (f" (step {step})" if step is not None else "")


def check_finite(metrics: dict, run: Run) -> None:
    """Stop before a NaN can reach a checkpoint (skip mode drops such updates instead)."""
    bad = [s.name for s in LOSSES if s.checked and not math.isfinite(metrics.get(s.name, 0.0))]
    if bad and run.cfg.train.on_nonfinite == "stop":
        raise TrainingError(f"non-finite loss {bad[0]}={metrics[bad[0]]} in the steps up to {run.state.step}; "
                            f"stopped without saving (last good checkpoint: {last_good(run)})")


def validated_best(run: Run, held_out: list, scorer, log: RunLogger) -> bool:
    """Score the held-out images; True when train.best_metric is the best so far (then best.pt is
    written)."""
    val = validate(run, held_out, scorer)
    log.log_eval(run.state.step, val)
    name, value = run.cfg.train.best_metric, val.get(run.cfg.train.best_metric)
    if val["count"] == 0 or value is None:  # e.g. kid against a cached reference without features
        return False
    best = run.state.best
    if best is None or (value > best if name in HIGHER_IS_BETTER else value < best):
        run.state.best = value
        return True
    return False


def check_best_metric(cfg: Config) -> None:
    """train.best_metric must be a metric this run's validation computes (before any process
    group starts: a usage error, one line)."""
    name = cfg.train.best_metric
    net = {"fid": "fid", "kid": "fid", "lpips": "lpips"}.get(name)  # kid comes from the FID network
    if not cfg.train.eval_every or net is None:
        return
    env = FID_WEIGHTS_ENV if net == "fid" else LPIPS_WEIGHTS_ENV
    if not weights_path(None, getattr(cfg.eval, f"{net}_weights"), env):
        raise UsageError(f"train.best_metric={name} needs {net.upper()} weights: set eval.{net}_weights or ${env} "
                         f"(or choose psnr, ssim, l1 or delta_colorfulness)")


def result(run: Run, metrics: dict, signal: str | None = None) -> TrainResult:
    return TrainResult(run.state.step, run.state.step >= run.cfg.train.max_steps, signal is not None, signal,
                       str(run.cfg.run_dir), run.rank, run.world, metrics, unwrap(run.nets.G), unwrap(run.nets.D))
