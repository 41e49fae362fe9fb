"""torch.profiler over a real run (`p2p bench profile [CONFIG.yaml] [section.key=value ...]`).

The run is built and stepped exactly as `p2p train` does, with the trainer's own pieces: the
config, `build_run` (processes, networks, wrap_models, optimizers, the step incl. CUDA graphs
when configured), the loader for data.source with its worker processes, `device_batches` (the
one-batch-ahead device copy), `Run.prepare` on the device and `LogInterval` (losses summed on
the device, read at log steps), minus checkpoints, samples and validation. The default is the
demo: the photographs embedded in scikit-image.

After `warmup` untimed steps (worker start-up, first batches, cuDNN autotuning), `steps` steps
run under torch.profiler. Outputs in `out_dir`:

* trace.json: a Chrome trace (chrome://tracing, https://ui.perfetto.dev or TensorBoard), with
  the phases of each step marked `p2p.data_wait`, `p2p.prepare`, `p2p.train_step`, `p2p.log_read`;
* the returned summary: top operators by self CPU time (and self CUDA time on GPU), the
  data-wait fraction (time blocked on the next batch / wall time of the profiled steps), the
  device-step share (crop + task conversion, `p2p.prepare`, / wall time) with what ran it
  (the fused C kernel, torch.compile or eager) and a one-line verdict naming the bottleneck.

On a CPU `p2p train` runs the device step one batch ahead in a background thread
(p2p.data.prefetch); here it runs in the main thread, where the profiler sees its operators.

Times are measured with the profiler on, which adds some per-op overhead to every phase.
"""

from __future__ import annotations

import os
import socket
import time
from pathlib import Path

import torch

from p2p.bench.common import environment, sync
from p2p.errors import UsageError
from p2p.train.straggler import cpu_wait_seconds

DATA_BOUND = 0.2  # waiting for batches this share of the wall time or more: the input pipeline limits
REGIONS = ("p2p.data_wait", "p2p.prepare", "p2p.train_step", "p2p.log_read")
# Not operators: the profiler's step markers, our phase markers, and the DataLoader's own marker
# (its time is the data wait, reported separately).
SKIP_EVENTS = ("ProfilerStep", "p2p.", "enumerate(DataLoader)")


def _time(evt, kind: str) -> float:
    """Self time in microseconds of a FunctionEventAvg (names changed across PyTorch versions)."""
    if kind == "cpu":
        return float(getattr(evt, "self_cpu_time_total", 0.0))
    for attr in ("self_device_time_total", "self_cuda_time_total"):
        if hasattr(evt, attr):
            return float(getattr(evt, attr))
    return 0.0


def top_operators(prof, kind: str, top: int) -> list[dict]:
    """The `top` operators by self `kind` time (cpu or cuda), each with its share of the total."""
    events = [e for e in prof.key_averages() if not e.key.startswith(SKIP_EVENTS)]
    if kind == "cuda":  # operators only: their self CUDA time already counts the kernels they launched
        from torch.autograd import DeviceType

        events = [e for e in events if getattr(e, "device_type", DeviceType.CPU) == DeviceType.CPU]
    total = sum(_time(e, kind) for e in events) or 1.0
    ranked = sorted(events, key=lambda e: _time(e, kind), reverse=True)[:top]
    return [{"name": e.key, "calls": int(e.count), f"self_{kind}_ms": _time(e, kind) / 1000,
             f"self_{kind}_share": _time(e, kind) / total} for e in ranked if _time(e, kind) > 0]


def verdict(data_wait_fraction: float, top: list[dict], kind: str) -> str:
    if data_wait_fraction >= DATA_BOUND:
        return f"data-bound: {100 * data_wait_fraction:.0f}% of wall time waiting for batches"
    if not top:
        return f"compute-bound: {100 * data_wait_fraction:.0f}% of wall time waiting for batches"
    op = top[0]
    return (f"compute-bound: top op {op['name']} {100 * op[f'self_{kind}_share']:.0f}% of self {kind.upper()} time "
            f"({100 * data_wait_fraction:.0f}% of wall time waiting for batches)")


def run_profile(overrides: list[str] | None = None, config_path: str | None = None, steps: int | None = None,
                warmup: int | None = None, quick: bool = False, out_dir: str | os.PathLike = "bench-out/profile",
                top: int = 15, progress=print) -> dict:
    """Profile `steps` steps (default 10; 4 when `quick`) after `warmup` (default 3; 2 when
    `quick`) of the configured run; writes out_dir/trace.json and returns
    {environment, config, summary}."""
    from torch.profiler import ProfilerActivity, profile, record_function

    from p2p.config import load_config, with_values
    from p2p.data import build_loader, resolve_backend
    from p2p.data.prefetch import PreparedBatches, device_batches
    from p2p.run_folder import run_folder
    from p2p.train.graphs import GraphedStep
    from p2p.train.meter import LogInterval
    from p2p.train.run import build_run

    steps = steps or (4 if quick else 10)
    warmup = warmup if warmup is not None else (2 if quick else 3)
    if steps < 1 or warmup < 0:
        raise UsageError("--steps must be >= 1 and --warmup >= 0")
    # a fresh run, whatever the run folder holds
    cfg = with_values(load_config(config_path, list(overrides or [])), {"run.resume": False})
    run_folder(cfg.run.out_dir, cfg.run.name)  # what `p2p train` refuses, refused here too
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)

    run = build_run(cfg, lock=False)  # exactly as `p2p train` builds it; it writes nothing in the run folder
    if run.world > 1:
        raise UsageError("bench profile runs one process; start it without torchrun")
    device, task, state, bs = run.device, run.task, run.state, cfg.train.batch_size
    backend = resolve_backend(cfg.data.source, cfg.data.backend, device, task.spec.input_kind)  # `auto` once, as in training
    loader = build_loader(cfg, "train", run.rank, run.world, device, backend)

    def prepare(batch, step):
        with record_function("p2p.prepare"):
            return run.prepare_for(batch, step)

    # the device step in this thread (see the module docstring)
    stream = PreparedBatches(device_batches(loader, state.epoch, state.batch_in_epoch, device), prepare, state.step,
                             ahead=False)
    interval = LogInterval(device)
    kind = "threads" if cfg.data.worker_kind == "thread" else "workers"
    progress(f"bench profile: {task.name} on {cfg.data.source} ({backend.name} backend, {cfg.data.workers} {kind}), "
             f"batch {bs}, {cfg.data.image_size}px, {device.type}: {warmup} warm-up + {steps} profiled steps")

    def one_step() -> float:
        """The loop's per-step calls; returns the seconds spent waiting for the batch."""
        waited_before = interval.data_wait
        with record_function("p2p.data_wait"):
            t0 = time.perf_counter()
            prepared_before = stream.prepare_s
            epoch, index, (inp, target) = next(stream)
            prepare_s = stream.prepare_s - prepared_before
            # waiting = the time in next() minus the device step it ran
            interval.data_wait += time.perf_counter() - t0 - prepare_s
        waited = interval.data_wait - waited_before
        prepares.append(prepare_s)
        with record_function("p2p.train_step"):
            interval.add(run.step(inp, target))
        run.advance(epoch, index, loader.epoch_batches(epoch))
        if state.step % cfg.train.log_every == 0:
            with record_function("p2p.log_read"):  # note: the loop's only host sync, at log steps
                interval.row(state.step, state.epoch, bs, run.world, run.lr(), run.nets)
        return waited

    prepares: list[float] = []
    t_warm = time.perf_counter()
    for _ in range(warmup):
        one_step()
    sync(device)
    warmup_s = time.perf_counter() - t_warm

    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
    waits = []
    prepares.clear()
    cpu_wait0 = cpu_wait_seconds()
    with profile(activities=activities, record_shapes=False, with_stack=False) as prof:
        t0 = time.perf_counter()
        for _ in range(steps):
            waits.append(one_step())
            prof.step()
        sync(device)
        wall = time.perf_counter() - t0
    # the process's own times, as each rank reports them in a run's metrics rows (p2p.train.straggler)
    per_rank = [{"rank": run.rank, "host": socket.gethostname(), "step_s": wall / steps,
                 "data_wait_s": sum(waits) / steps, "cpu_wait_s": (cpu_wait_seconds() - cpu_wait0) / steps}]
    losses = {k: float(v) for k, v in interval.sums.items()}  # host read: the run stayed finite?
    trace = out_dir / "trace.json"
    prof.export_chrome_trace(str(trace))

    kind = "cuda" if device.type == "cuda" else "cpu"
    ops_cpu = top_operators(prof, "cpu", top)
    ops_cuda = top_operators(prof, "cuda", top) if kind == "cuda" else []
    ranked = ops_cuda if kind == "cuda" else ops_cpu
    regions = {}
    for e in prof.key_averages():
        if e.key in REGIONS:
            regions[e.key] = {"calls": int(e.count), "cpu_total_ms": float(e.cpu_time_total) / 1000}
    wait_fraction = sum(waits) / wall if wall > 0 else 0.0
    summary = {
        "bottleneck": verdict(wait_fraction, ranked, kind),
        "data_wait_fraction": wait_fraction,
        "device_step_share": sum(prepares) / wall if wall > 0 else 0.0,
        "device_step_ms": 1000 * sum(prepares) / steps,  # on a GPU: the time to queue it
        "device_step": task.device_step.implementation(device) if task.fused_device_step else "eager",
        "data_wait_s": sum(waits), "wall_s": wall, "steps": steps, "warmup_steps": warmup, "warmup_s": warmup_s,
        "img_per_s": bs * steps / wall, "step_ms": 1000 * wall / steps,
        "regions": regions, "per_rank": per_rank, "top_ops_cpu": ops_cpu, "top_ops_cuda": ops_cuda, "trace": str(trace),
        "trace_bytes": trace.stat().st_size, "losses_sum_last_window": losses, "notices": list(run.notices),
        "note": "measured with the profiler on (adds per-op overhead)",
    }
    config = {"device": str(device), "task": task.name, "source": cfg.data.source, "backend": backend.name,
              "backend_configured": cfg.data.backend, "workers": cfg.data.workers,
              "worker_kind": cfg.data.worker_kind, "batch_size": bs, "image_size": cfg.data.image_size,
              "load_size": cfg.data.load_size, "ngf": cfg.model.ngf, "ndf": cfg.model.ndf,
              "num_downs": cfg.model.num_downs, "precision": cfg.train.precision,
              "channels_last": cfg.train.channels_last, "compile": cfg.train.compile,
              "cuda_graphs": isinstance(run.step_fn, GraphedStep), "threads": torch.get_num_threads(),
              "config_file": config_path, "overrides": list(overrides or [])}
    return {"environment": environment(), "config": config, "summary": summary}
