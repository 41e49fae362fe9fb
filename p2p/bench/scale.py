"""`p2p bench scale`: how p2p grows with the dataset, at N COCO-shaped images (1k, 10k, 100k ...).

For each N, one after another on this machine:

1. WORK/images holds images 0..max(N)-1 (p2p.bench.coco_shaped; made once, reused), and
   WORK/src-N hard links to the first N of them (a folder of exactly N files);
2. `p2p shard` (the library, --workers W, the default options: 286-px JPEGs in 64 MB shards),
   from scratch: shard time per image (scan + encode + write, over the images found), manifest
   and index sizes;
3. the epoch plan: what a rank computes before its first batch of an epoch with the wds
   backend (the manifest read, the plan, the index files of the shards it touches parsed), for
   one rank of one, the largest share;
4. `p2p train` on the shards in a fresh process (a small network, so the step itself is cheap):
   the time from starting the process to the end of its first step (beside it, `import_s`: a
   fresh process that only imports the trainer, the floor no dataset changes), the memory of
   each DataLoader worker (RSS, and PSS/USS from smaps_rollup: forked workers share pages
   with the trainer and each other) after a few steps, then SIGTERM, which saves last.pt mid-epoch;
5. the same command again: the time from its start to its first step after resuming mid-epoch.

Each figure's growth exponent between consecutive sizes, log(f2/f1) / log(N2/N1), must stay
at most 1 (linear) within 0.1 of measuring noise; the summary flags any that do not. Timings on
a shared machine are noisy: the load average is recorded before every size.
"""

from __future__ import annotations

import json
import math
import os
import signal
import subprocess
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable

from p2p.bench.common import environment, write_json
from p2p.errors import UsageError

FIGURES = {  # key: (what, unit)
    "shard_s_per_image": ("p2p shard time per image", "s"),
    "manifest_bytes": ("manifest.json size", "bytes"),
    "index_bytes": ("DALI index files, all shards", "bytes"),
    "startup_s": ("p2p train: process start to the end of step 1", "s"),
    "worker_rss_mb": ("loader RSS per worker (max)", "MB"),
    "worker_uss_mb": ("loader USS per worker (max, pages of its own)", "MB"),
    "epoch_plan_s": ("epoch plan: manifest, plan and index parse, 1 rank of 1", "s"),
    "resume_s": ("resume mid-epoch: process start to the first step", "s"),
}
LINEAR_SLACK = 0.1
# A network small enough that the step costs little next to what is measured (256-px input).
TRAIN_ARGS = ["data.load_size=286", "data.image_size=256", "model.ngf=8", "model.ndf=8", "model.num_downs=8",
              "train.log_every=1", "train.sample_every=0", "train.eval_every=0", "train.ckpt_every=0",
              "train.max_steps=100000000", "data.backend=wds", "data.val_images=4"]


@dataclass(frozen=True)
class ScaleOptions:
    sizes: tuple[int, ...] = (1000, 10000, 100000)
    work: str = "bench-scale-work"  # images, shards and runs (images are reused by later runs)
    workers: int = 2  # p2p shard workers, and DataLoader workers of the training runs
    batch_size: int = 8
    timeout_s: float = 600.0  # per training start
    seed: int = 0

    def __post_init__(self):
        if not self.sizes or any(n < 100 for n in self.sizes):
            raise UsageError(f"--sizes {','.join(map(str, self.sizes))}: give image counts of at least 100")
        if self.workers < 1 or self.batch_size < 1:
            raise UsageError("--workers and --batch-size must be at least 1")


def growth(rows: list[dict]) -> dict[str, list[float | None]]:
    """Per figure, its growth exponent between consecutive sizes (None where a value is 0 or missing)."""
    out = {}
    for key in FIGURES:
        exps = []
        for a, b in zip(rows, rows[1:]):
            fa, fb = a.get(key), b.get(key)
            ok = fa and fb and fa > 0 and fb > 0 and b["n"] != a["n"]
            exps.append(round(math.log(fb / fa) / math.log(b["n"] / a["n"]), 3) if ok else None)
        out[key] = exps
    return out


def super_linear(exponents: dict[str, list[float | None]]) -> list[str]:
    return [k for k, exps in exponents.items() if any(e is not None and e > 1 + LINEAR_SLACK for e in exps)]


# ---------------------------------------------------------------------------------------------
# one size


def linked_source(images: Path, folder: Path, n: int) -> Path:
    """`folder` with hard links to the first n files of `images` (a copy where links fail)."""
    import shutil

    from p2p.bench.coco_shaped import image_name

    folder.mkdir(parents=True, exist_ok=True)
    wanted = {image_name(i) for i in range(n)}
    for p in folder.iterdir():
        if p.name not in wanted:
            p.unlink()
    for name in wanted:
        dst = folder / name
        if not dst.exists():
            try:
                os.link(images / name, dst)
            except OSError:
                shutil.copyfile(images / name, dst)
    return folder


def shard_figures(src: Path, out: Path, workers: int) -> dict:
    import shutil

    from p2p.data.shards import ShardOptions, run_shards

    shutil.rmtree(out, ignore_errors=True)
    t0 = time.perf_counter()
    result = run_shards(src, out, ShardOptions(workers=workers))
    seconds = time.perf_counter() - t0
    m = result.manifest
    idx = [p.stat().st_size for split in ("train", "val") for p in (out / split).glob("*.idx")]
    return {"found": result.found, "train_images": m["train"]["count"], "val_images": m["val"]["count"],
            "skipped": sum(m["skipped_counts"].values()), "skipped_counts": m["skipped_counts"],
            "shards": len(m["train"]["shards"]) + len(m["val"]["shards"]), "shard_s": round(seconds, 3),
            "shard_s_per_image": seconds / max(1, result.found), "manifest_bytes": (out / "manifest.json").stat().st_size,
            "index_bytes": sum(idx), "tar_bytes": m["train"]["bytes"] + m["val"]["bytes"]}


def epoch_plan_seconds(shards: Path, batch_size: int, repeats: int = 3) -> float:
    """Median time of what a rank does before an epoch's first batch (wds backend, 1 rank of 1)."""
    from p2p.config import load_config
    from p2p.data import loader_args
    from p2p.data.wds import WdsLoader

    cfg = load_config(None, [f"data.source={shards}", *TRAIN_ARGS, f"train.batch_size={batch_size}"])
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        WdsLoader(str(shards), "train", 0, 1, loader_args(cfg)).dataset(0)
        times.append(time.perf_counter() - t0)
    return sorted(times)[len(times) // 2]


def _rows(metrics: Path) -> list[dict]:
    try:
        text = metrics.read_text()
    except FileNotFoundError:
        return []
    return [json.loads(line) for line in text.splitlines() if line.strip()]


def _memory_mb(pid: int) -> dict:
    """RSS, PSS and USS of a process in MB (from /proc; Linux only)."""
    out = {}
    with open(f"/proc/{pid}/smaps_rollup") as f:
        fields = {ln.split(":")[0]: int(ln.split()[1]) for ln in f if ln.split() and ln.split()[-1] == "kB"}
    out["rss_mb"] = fields.get("Rss", 0) / 1024
    out["pss_mb"] = fields.get("Pss", 0) / 1024
    out["uss_mb"] = (fields.get("Private_Clean", 0) + fields.get("Private_Dirty", 0)) / 1024
    return out


def _workers(pid: int) -> list[int]:
    """The DataLoader workers of a trainer: its forked children (same command line)."""
    try:
        children = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
        cmd = Path(f"/proc/{pid}/cmdline").read_bytes()
        return [int(c) for c in children if Path(f"/proc/{c}/cmdline").read_bytes() == cmd]
    except OSError:
        return []


def train_until(cmd: list[str], env: dict, metrics: Path, after_step: int, steps: int, timeout: float,
                log: Path) -> dict:
    """Start `cmd`; the time until the first row past `after_step`; worker memory `steps`
    rows later; then SIGTERM (which saves last.pt) and wait for the exit."""
    t0 = time.perf_counter()
    with open(log, "ab") as out:
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, env=env)
    try:
        first, mem = None, []
        deadline = t0 + timeout
        while time.perf_counter() < deadline and proc.poll() is None:
            done = [r["step"] for r in _rows(metrics) if r["step"] > after_step]
            if done and first is None:
                first = time.perf_counter() - t0
            if done and max(done) >= after_step + steps:
                mem = [_memory_mb(w) for w in _workers(proc.pid)]
                break
            time.sleep(0.05)
        if first is None:
            raise RuntimeError(f"no training step within {timeout:.0f} s (exit {proc.poll()}); see {log}")
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    return {"first_step_s": first, "workers": mem, "exit": proc.returncode}


def import_seconds(env: dict) -> float:
    """A fresh process importing the trainer (torch, torchvision, accelerate, p2p) and exiting:
    the part of `p2p train`'s start-up that no dataset size changes, measured beside it."""
    t0 = time.perf_counter()
    subprocess.run([sys.executable, "-c", "import p2p.train.loop"], env=env, check=True, timeout=300)
    return time.perf_counter() - t0


def train_figures(shards: Path, run_dir: Path, options: ScaleOptions) -> dict:
    import shutil

    shutil.rmtree(run_dir, ignore_errors=True)
    args = [f"data.source={shards}", *TRAIN_ARGS, f"train.batch_size={options.batch_size}",
            f"data.workers={options.workers}", f"run.out_dir={run_dir.parent}", f"run.name={run_dir.name}"]
    cmd = [sys.executable, "-m", "p2p", "train", *args]
    env = {**os.environ, "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1"), "PYTHONUNBUFFERED": "1"}
    metrics, log = run_dir / "metrics.jsonl", run_dir.parent / f"{run_dir.name}.log"
    run_dir.parent.mkdir(parents=True, exist_ok=True)
    floor = import_seconds(env)
    start = train_until(cmd, env, metrics, 0, 3, options.timeout_s, log)
    saved = max(r["step"] for r in _rows(metrics))
    resumed = train_until(cmd, env, metrics, saved, 0, options.timeout_s, log)
    mem = start["workers"]
    return {"startup_s": start["first_step_s"], "resume_s": resumed["first_step_s"], "resumed_at_step": saved,
            "import_s": floor,
            "worker_rss_mb": max((m["rss_mb"] for m in mem), default=None),
            "worker_pss_mb": max((m["pss_mb"] for m in mem), default=None),
            "worker_uss_mb": max((m["uss_mb"] for m in mem), default=None), "workers_seen": len(mem),
            "train_command": " ".join(["p2p", "train", *args])}


def measure_size(n: int, options: ScaleOptions, say: Callable[[str], None]) -> dict:
    from p2p.bench.coco_shaped import make_coco_shaped

    work = Path(options.work)
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else None
    row: dict = {"n": n, "load_before": load}
    t0 = time.perf_counter()
    row["images_written"] = make_coco_shaped(work / "images", max(options.sizes), options.seed, options.workers)
    src = linked_source(work / "images", work / f"src-{n}", n)
    row["make_images_s"] = round(time.perf_counter() - t0, 1)
    say(f"  N={n:,}: images ready in {row['make_images_s']:.0f} s; sharding with {options.workers} worker(s)")
    row.update(shard_figures(src, work / f"shards-{n}", options.workers))
    say(f"  N={n:,}: {row['shards']} shards in {row['shard_s']:.0f} s ({row['skipped']} skipped); epoch plan")
    row["epoch_plan_s"] = epoch_plan_seconds(work / f"shards-{n}", options.batch_size)
    say(f"  N={n:,}: p2p train start-up, then resume mid-epoch")
    row.update(train_figures(work / f"shards-{n}", work / "runs" / f"scale-{n}", options))
    row["total_s"] = round(time.perf_counter() - t0, 1)
    say(f"  N={n:,}: start-up {row['startup_s']:.1f} s, resume {row['resume_s']:.1f} s, worker RSS "
        f"{row['worker_rss_mb'] or 0:.0f} MB; {row['total_s']:.0f} s for this size")
    return row


# ---------------------------------------------------------------------------------------------
# all sizes, the plots, the report


def plot_figures(rows: list[dict], exponents: dict, out: Path) -> list[Path]:
    """One PNG per figure: the measured values against N (log-log), with linear growth dashed."""
    from p2p.bench.report import _pyplot, save_loglog

    plt = _pyplot()
    paths = []
    ns = [r["n"] for r in rows]
    for key, (what, unit) in FIGURES.items():
        values = [r.get(key) for r in rows]
        if not any(v for v in values):
            continue
        fig, ax = plt.subplots(figsize=(4.6, 3.4))
        ax.plot(ns, values, "o-", label="measured")
        first = next((i for i, v in enumerate(values) if v), None)
        if first is not None:
            ax.plot(ns, [values[first] * n / ns[first] for n in ns], "--", color="#999999", label="linear in N")
        exps = ", ".join("-" if e is None else f"{e:.2f}" for e in exponents[key])
        paths.append(save_loglog(plt, fig, ax, "images N", unit, f"{what}\ngrowth exponent {exps}",
                                 out / f"scale-{key}.png"))
    return paths


def report_lines(payload: dict) -> list[str]:
    rows, exps = payload["results"], payload["growth"]
    head = "| figure | " + " | ".join(f"N={r['n']:,}" for r in rows) + " | growth exponents |"
    lines = [f"`{payload['command']}`", "", head, "|---" * (len(rows) + 2) + "|"]
    for key, (what, unit) in FIGURES.items():
        cells = []
        for r in rows:
            v = r.get(key)
            cells.append("-" if v is None else (f"{v:,.0f}" if unit == "bytes" else f"{v:.4g}"))
        e = ", ".join("-" if x is None else f"{x:.2f}" for x in exps[key])
        lines.append(f"| {what} ({unit}) | " + " | ".join(cells) + f" | {e} |")
    lines += ["", "| per size | " + " | ".join(f"N={r['n']:,}" for r in rows) + " |", "|---" * (len(rows) + 1) + "|"]
    for key in ("import_s", "shards", "skipped", "shard_s", "worker_pss_mb", "total_s", "load_before"):
        lines.append(f"| {key} | " + " | ".join("-" if r.get(key) is None else f"{r[key]:.4g}" for r in rows) + " |")
    bad = payload["super_linear"]
    lines += ["", "super-linear: " + (", ".join(bad) if bad else "none (every exponent <= 1.1)")]
    return lines


def run_scale(options: ScaleOptions, out: str | os.PathLike, say: Callable[[str], None]) -> dict:
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    rows = []
    t0 = time.perf_counter()
    for n in sorted(set(options.sizes)):
        rows.append(measure_size(n, options, say))
        exponents = growth(rows)
        payload = {"environment": environment(), "config": asdict(options),
                   "command": "p2p bench scale --sizes " + ",".join(str(r["n"]) for r in rows)
                   + f" --workers {options.workers} --batch-size {options.batch_size}",
                   "results": rows, "growth": exponents, "super_linear": super_linear(exponents),
                   "seconds": round(time.perf_counter() - t0, 1)}
        write_json(out / "scale.json", payload)  # after every size: a long run keeps what it measured
    plot_figures(rows, payload["growth"], out)
    from p2p.atomic import write_text

    write_text(out / "scale.md", "\n".join(report_lines(payload)) + "\n")
    return payload
