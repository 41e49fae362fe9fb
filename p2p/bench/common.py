"""What every benchmark shares: a synchronised timer with warm-up and repeats, the
environment record (hardware, versions), rows with their baseline ratio, atomic JSON files.

A row is a dict with at least `name` and `img_per_s`; `baseline` names the row it is compared
with and `ratio` = img_per_s / baseline's img_per_s. Rows of one section are always measured
in the same process, one after another, so a ratio compares like with like.
"""

from __future__ import annotations

import datetime as _dt
import json
import os
import platform
import statistics
import time
from pathlib import Path
from typing import Callable

import torch

from p2p.atomic import write_text


def sync(device: torch.device | str | None) -> None:
    """Wait for queued GPU work so a timer measures it (a CPU-GPU sync point, on purpose)."""
    if device is not None and torch.device(device).type == "cuda":
        torch.cuda.synchronize(device)


def measure(fn: Callable[[], int], *, device=None, warmup: int = 1, repeats: int = 3,
            min_seconds: float = 0.0) -> dict:
    """Run `fn` (returns images processed) `warmup` times untimed, then `repeats` timed times.

    Each timed repeat calls `fn` until at least `min_seconds` passed. Returns img/s median,
    min, max and the per-repeat values.
    """
    for _ in range(warmup):
        fn()
    sync(device)
    rates = []
    for _ in range(repeats):
        n, t0 = 0, time.perf_counter()
        while True:
            n += fn()
            sync(device)
            dt = time.perf_counter() - t0
            if dt >= min_seconds:
                break
        rates.append(n / dt)
    return {
        "img_per_s": statistics.median(rates),
        "img_per_s_min": min(rates),
        "img_per_s_max": max(rates),
        "repeats": len(rates),
    }


def with_ratios(rows: list[dict], baseline: str) -> list[dict]:
    """Add `baseline` and `ratio` to each row, against the row named `baseline` (None for a
    skipped row, which has no img/s)."""
    base = next(r for r in rows if r["name"] == baseline)
    for r in rows:
        r["baseline"] = baseline
        if r.get("img_per_s") is None:  # a skipped row
            r["ratio"] = None
        else:
            r["ratio"] = r["img_per_s"] / base["img_per_s"] if base["img_per_s"] else float("nan")
    return rows


def gpu_memory_mb(device) -> dict:
    """GPU memory after a row: the peak torch's allocator held since the last
    torch.cuda.reset_peak_memory_stats, and what the whole device has in use now, which also
    counts memory libraries take past torch's allocator (nvJPEG's and DALI's buffers, the CUDA
    contexts)."""
    free, total = torch.cuda.mem_get_info(device)
    return {"gpu_mem_peak_mb": round(torch.cuda.max_memory_allocated(device) / 2**20, 1),
            "gpu_mem_used_mb": round((total - free) / 2**20, 1)}


def _cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def environment() -> dict:
    """Hardware and software this run measured on: goes into every results file."""
    env = {
        "date": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "host": platform.node(),
        "cpu": _cpu_name(),
        "cpu_cores": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "cuda_build": torch.version.cuda,  # what torch was built against, GPU or not
        "cuda_available": torch.cuda.is_available(),
        "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
    }
    for mod in ("torchvision", "accelerate", "nvidia.dali", "webdataset", "skimage", "PIL"):
        try:
            env[mod.split(".")[-1]] = __import__(mod, fromlist=["__version__"]).__version__
        except Exception:  # a missing optional package is recorded, not fatal
            env[mod.split(".")[-1]] = None
    return env


def write_json(path: str | os.PathLike, payload: dict) -> None:
    """Atomic: a reader never sees half a results file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    write_text(path, json.dumps(payload, indent=2, default=str) + "\n")
