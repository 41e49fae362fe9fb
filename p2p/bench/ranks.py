"""Weak scaling of the training step over processes (`p2p bench ranks`).

For each N in `procs`, N real processes are started with torchrun (`python -m
torch.distributed.run --nproc-per-node N`), each running p2p.bench.ranks_worker: the
trainer's own run (p2p.train.run.build_run: DDP through p2p.dist.start, gloo on CPU, NCCL on
GPUs; wrap_models, fused Adam) stepping on the batch the trainer would feed, of the same size in
every process (weak scaling: the global batch grows with N). Every process uses `threads`
torch/OpenMP threads (default: cores / largest N, so the largest run does not oversubscribe the
machine and every N gets the same per-process resources). After warm-up, each round starts at
a barrier and ends when the slowest process is done: global img/s = N x batch x steps / that
time. Rows: procs, img_per_s (global), img_per_s_per_process, efficiency = per-process img/s at
N / at 1, ratio = global speed-up over the 1-process row (the baseline). On GPUs each process
gets its own GPU; an N larger than the GPU count is recorded as skipped.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import torch

from p2p.bench.common import environment
from p2p.bench.workload import WorkloadOptions, WorkloadPlan
from p2p.errors import UsageError

BASELINE = "1 process"


@dataclass(frozen=True)
class ScalingOptions(WorkloadOptions):
    """What the scaling benchmark is asked for; None picks the device's default (plan_scaling)."""

    procs: tuple[int, ...] = (1, 2)
    repeats: int = 3
    threads: int = 0  # per process; 0 = cores / the largest process count
    precision: str | None = None
    timeout: float = 600


@dataclass(frozen=True)
class ScalingPlan(WorkloadPlan):
    procs: tuple[int, ...]
    device: str  # cpu or cuda
    threads: int
    precision: str
    timeout: float


def plan_scaling(o: ScalingOptions) -> ScalingPlan:
    from p2p.dist import resolve_device

    procs = sorted(set(int(n) for n in o.procs))
    if not procs or procs[0] < 1:
        raise UsageError("--procs: process counts must be >= 1, e.g. 1,2")
    if 1 not in procs:
        procs.insert(0, 1)  # efficiency and ratio are against 1 process
    cuda = resolve_device(o.device).type == "cuda"
    return ScalingPlan(
        procs=tuple(procs), device="cuda" if cuda else "cpu", sizes=o.model_sizes(cuda),
        batch_size=o.batch_size or (64 if cuda else 4), image_size=o.image_size or (256 if cuda else 64),
        steps=o.steps or ((5 if o.quick else 20) if cuda else 2 if o.quick else 4),
        warmup=o.warmup if o.warmup is not None else (5 if cuda else 2), repeats=o.repeats,
        threads=o.threads or max(1, (os.cpu_count() or 1) // max(procs)),
        precision=o.precision or ("bf16" if cuda else "fp32"), timeout=o.timeout)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _row_name(n: int) -> str:
    return "1 process" if n == 1 else f"{n} processes"


def _child_env(threads: int) -> dict:
    env = dict(os.environ)
    for k in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT", "GROUP_RANK",
              "TORCHELASTIC_RUN_ID"):
        env.pop(k, None)
    root = str(Path(__file__).resolve().parents[2])  # works from a clone without `pip install`
    env["PYTHONPATH"] = root + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    env.update(OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads), PYTHONUNBUFFERED="1")
    return env


def launch(n: int, worker_args: list[str], threads: int, timeout: float) -> dict:
    """Start N processes with torchrun, return rank 0's result."""
    with tempfile.TemporaryDirectory(prefix="p2p-scaling-") as tmp:
        result = Path(tmp) / "result.json"
        cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", str(n),
               "--master-addr", "127.0.0.1", "--master-port", str(_free_port()),
               "-m", "p2p.bench.ranks_worker", "--result", str(result), *worker_args]
        t0 = time.perf_counter()
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=_child_env(threads))
        if proc.returncode != 0 or not result.exists():
            tail = (proc.stderr or proc.stdout).strip().splitlines()[-15:]
            raise RuntimeError(f"torchrun with {n} processes exited {proc.returncode}:\n" + "\n".join(tail))
        out = json.loads(result.read_text())
        out["launch_s"] = time.perf_counter() - t0
        return out


def run_scaling(options: ScalingOptions, progress=print) -> dict:
    """Measure each N in `procs`; returns {environment, config, results}."""
    p = plan_scaling(options)
    cuda, s = p.device == "cuda", p.sizes
    gpus = torch.cuda.device_count() if cuda else 0
    cores = os.cpu_count() or 1
    worker_args = ["--device", p.device, "--ngf", str(s.ngf), "--ndf", str(s.ndf), "--num-downs", str(s.num_downs),
                   "--batch-size", str(p.batch_size), "--image-size", str(p.image_size), "--steps", str(p.steps),
                   "--warmup", str(p.warmup), "--repeats", str(p.repeats), "--precision", p.precision]
    rows = []
    for n in p.procs:
        row = {"name": _row_name(n), "procs": n, "threads_per_process": p.threads, "batch_per_process": p.batch_size,
               "global_batch": n * p.batch_size, "backend": "nccl" if cuda else "gloo"}
        if cuda and n > gpus:
            row["skipped"] = f"needs {n} GPUs, this machine has {gpus}"
        elif not cuda and n * p.threads > cores:
            row["oversubscribed"] = f"{n} x {p.threads} threads on {cores} cores"
        if "skipped" not in row:
            try:
                out = launch(n, worker_args, p.threads, p.timeout)
                row.update(img_per_s=out["img_per_s"], img_per_s_per_process=out["img_per_s"] / n,
                           img_per_s_min=min(out["rounds"]), img_per_s_max=max(out["rounds"]),
                           rounds=out["rounds"], rank_img_per_s=out["rank_img_per_s"], launch_s=out["launch_s"],
                           torch_threads=out["torch_threads"], world_size=out["world_size"])
            except (RuntimeError, subprocess.TimeoutExpired) as e:
                row["skipped"] = f"failed: {str(e)[:600]}"
        rows.append(row)
        if "skipped" in row:
            progress(f"  {row['name']}: skipped ({row['skipped'].splitlines()[0]})")
        else:
            progress(f"  {row['name']}: {row['img_per_s']:.1f} img/s global, "
                     f"{row['img_per_s_per_process']:.1f} per process")
    base = rows[0].get("img_per_s_per_process")
    for row in rows:
        row["baseline"] = BASELINE
        ok = base and row.get("img_per_s")
        row["ratio"] = row["img_per_s"] / rows[0]["img_per_s"] if ok else None
        row["efficiency"] = row["img_per_s_per_process"] / base if ok else None
        row.setdefault("img_per_s", None)
    config = {"device": p.device, "backend": "nccl" if cuda else "gloo", "procs": list(p.procs),
              "threads_per_process": p.threads, "cores": cores, "gpus": gpus, "model": s.name, "ngf": s.ngf,
              "num_downs": s.num_downs, "ndf": s.ndf, "batch_per_process": p.batch_size,
              "image_size": p.image_size, "steps_per_round": p.steps, "warmup_steps": p.warmup,
              "rounds": p.repeats, "precision": p.precision,
              "launcher": "python -m torch.distributed.run (torchrun)"}
    return {"environment": environment(), "config": config, "results": rows}
