"""`p2p bench scale --simulate`: what one rank computes before its first batch, at ImageNet and
web scale (N = 1M .. 100M samples) and hundreds of ranks, without making an image.

For each N, WORK/sim-N holds a synthetic shard folder: a manifest listing N / shard_size shards
of `shard_size` samples and its `manifest.counts` (as `p2p shard` writes them), a sparse tar per
shard (never read; the tars a rank touches are checked) and the DALI index files (`.idx`) of only
the shards some measured rank touches, written the first time they are needed and reused.
For each world size W, one fresh process measures one rank (the last, whose range is among the
largest) of the wds backend:

- `manifest_s`: WdsLoader built (manifest.counts read, the manifest's bytes hashed to match it);
- `baseline_manifest_s`: the split opened as p2p did before manifest.counts: the manifest's JSON
  parsed, every shard entry checked, two paths made and the tar stat'ed per shard: O(shards);
- `plan_s`, `plan_mb`: the epoch plan (train_plan), the median of 3, and its peak memory;
- `index_s`, `index_mb`: the index files of every shard the rank's plan and spare samples touch,
  parsed (what `dataset()` does before workers fork);
- `first_keys_s`, `first_keys_mb`: from nothing to the first batch's keys (a fresh loader:
  manifest, plan, index files, keys);
- beside them, for N up to `baseline_max`, the plan as p2p computed it before it was O(N/W):
  the whole epoch's (shard, member) rows built, then the rank's range sliced (`baseline_plan_s`).

For each world-size change W0 -> W1, a fresh process continues the epoch on rank W1 // 2 after
half of it was read with W0 ranks: `change_s`, `change_mb` (continue_epoch) and
`change_first_keys_s` (from nothing to the first batch's keys of the continued epoch).

Peak memory is the growth of the process's resident high-water mark (VmHWM, reset through
/proc/self/clear_refs before each phase) over its resident size before it: numpy's and torch's
allocations alike. The index files are parsed from the page cache (just written or read).

Growth: each figure is fitted as c * N^a * (N/W)^b by least squares over the cells measured
(log-log): `a` is the exponent in N at a fixed share per rank (0: flat), `b` the exponent in
that share: N/W, and after a change N/min(W0, W1), the most a rank reads of the old orders.
Cells under 1 ms or 1 MB are below what the timer and the resident size resolve on a busy
machine: they are in the tables, not in the fit. A cell whose share is above `max_parse` samples skips the index figures.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable

import numpy as np

from p2p.bench.proc_status import status_kb
from p2p.errors import UsageError

@dataclass(frozen=True)
class PlanScaleOptions:
    sizes: tuple[int, ...] = (1_000_000, 10_000_000, 100_000_000)
    worlds: tuple[int, ...] = (8, 64, 1024)
    changes: tuple[tuple[int, int], ...] = ((1024, 512), (64, 96))
    shard_size: int = 1000  # samples per shard
    batch_size: int = 16
    max_parse: int = 2_000_000  # the index figures only where a rank's share is at most this
    baseline_max: int = 10_000_000  # the whole-epoch baseline only up to this N (it needs O(N) memory)
    work: str = "bench-plan-scale-work"
    timeout_s: float = 600.0  # per measuring process

    def __post_init__(self):
        if not self.sizes or any(n < 1000 for n in self.sizes):
            raise UsageError(f"--sizes {','.join(map(str, self.sizes))}: give sample counts of at least 1000")
        if not self.worlds or any(w < 1 for w in self.worlds):
            raise UsageError("--worlds: give process counts of at least 1")
        if any(len(c) != 2 or min(c) < 1 for c in self.changes):
            raise UsageError("--changes: give pairs OLD:NEW of process counts, such as 1024:512,64:96")
        if self.shard_size < 1 or self.batch_size < 1:
            raise UsageError("--shard-size and --batch-size must be at least 1")
        small = [(n, w) for n in self.sizes for w in {*self.worlds, *(x for c in self.changes for x in c)}
                 if n // w < self.batch_size]
        if small:
            n, w = small[0]
            raise UsageError(f"N={n:,} cannot give each of {w} processes a batch of {self.batch_size}: "
                             f"raise --sizes or lower --batch-size")


def _numbers(text: str, flag: str) -> tuple[int, ...]:
    try:
        return tuple(int(x) for x in text.replace(" ", "").split(",") if x)
    except ValueError:
        raise UsageError(f"{flag} {text!r}: give whole numbers, comma-separated") from None


def options_from_text(sizes: str | None, worlds: str, changes: str, shard_size: int, batch_size: int | None,
                      work: str | None, timeout_s: float) -> PlanScaleOptions:
    """Options from the command's flags (None: the default)."""
    pairs = []
    for pair in (c for c in changes.replace(" ", "").split(",") if c):
        old, sep, new = pair.partition(":")
        if not (sep and old.isdigit() and new.isdigit()):
            raise UsageError(f"--changes {changes!r}: give OLD:NEW pairs of process counts, such as 1024:512,64:96")
        pairs.append((int(old), int(new)))
    d = PlanScaleOptions()
    return PlanScaleOptions(sizes=_numbers(sizes, "--sizes") if sizes else d.sizes, worlds=_numbers(worlds, "--worlds"),
                            changes=tuple(pairs), shard_size=shard_size, batch_size=batch_size or d.batch_size,
                            work=work or d.work, timeout_s=timeout_s)


# ---------------------------------------------------------------------------------------------
# the synthetic shard folder


MEMBER_STRIDE = 48640  # bytes a synthetic sample (a 46,000-byte jpg and its json, with tar headers) takes


def shard_counts(n: int, shard_size: int) -> list[int]:
    full, rest = divmod(n, shard_size)
    return [shard_size] * full + ([rest] if rest else [])


def write_folder(folder: Path, n: int, shard_size: int) -> None:
    """A manifest of N samples in shards of `shard_size` (kept when it already says so)."""
    from p2p.atomic import write_text
    from p2p.data.shards.format import FORMAT, FORMAT_VERSION, MANIFEST

    from p2p.data.shards.catalog import COUNTS, write_counts_file

    path = folder / MANIFEST
    if path.exists():
        m = json.loads(path.read_text())
        if m.get("train", {}).get("count") == n and m.get("simulated_shard_size") == shard_size:
            ensure_tars(folder, shard_counts(n, shard_size))
            if not (folder / COUNTS).exists():
                write_counts_file(folder, m, path.read_bytes())
            return
    stems = [f"shard-{i:06d}" for i in range(len(shard_counts(n, shard_size)))]
    shards = [{"file": f"{s}.tar", "index": f"{s}.idx", "count": c, "bytes": 0}
              for s, c in zip(stems, shard_counts(n, shard_size))]
    manifest = {"format": FORMAT, "version": FORMAT_VERSION, "task": "colorize", "options": {"size": 286},
                "complete": True, "simulated_shard_size": shard_size,
                "train": {"shards": shards, "count": n, "bytes": 0},
                "val": {"shards": [], "count": 0, "bytes": 0}, "count": n}
    (folder / "train").mkdir(parents=True, exist_ok=True)
    ensure_tars(folder, shard_counts(n, shard_size))
    text = json.dumps(manifest)
    write_text(path, text)
    write_counts_file(folder, manifest, text.encode())


def tar_bytes(count: int) -> int:
    """The size of a shard tar whose members stand where `index_text` says, end blocks included."""
    return 512 + count * MEMBER_STRIDE + 1024


def ensure_tars(folder: Path, counts: list[int]) -> None:
    """A sparse file of the right size per shard (no blocks on disk): a rank checks the tar of
    every shard it touches against its count, as with real shards."""
    for i, count in enumerate(counts):
        path = folder / "train" / f"shard-{i:06d}.tar"
        if not path.exists() or path.stat().st_size != tar_bytes(count):
            with open(path, "wb") as f:
                f.truncate(tar_bytes(count))


def index_text(shard: int, count: int, shard_size: int) -> str:
    """A DALI v1.2 index of `count` samples (a jpg and a json member each), as p2p shard writes."""
    lines = [f"v1.2 {count}"]
    for i in range(count):
        key, jpg = f"img/{shard * shard_size + i:09d}", 512 + i * MEMBER_STRIDE
        lines.append(f"jpg {jpg} 46000 {key}.jpg json {jpg + 46080} 160 {key}.json")
    return "\n".join(lines) + "\n"


def ensure_indexes(folder: Path, counts: np.ndarray, shards: np.ndarray, shard_size: int) -> int:
    """Write the index files of `shards` that are missing; returns how many were written."""
    from p2p.atomic import write_text

    written = 0
    for s in shards.tolist():
        path = folder / "train" / f"shard-{s:06d}.idx"
        if not path.exists():
            write_text(path, index_text(s, int(counts[s]), shard_size))
            written += 1
    return written


# ---------------------------------------------------------------------------------------------
# one cell, in its own process


def measured(fn: Callable[[], object]) -> tuple[object, float, float]:
    """(result, seconds, MB the resident high-water mark rose above the size before)."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")  # resets VmHWM to the current VmRSS (Linux >= 4.0)
    except OSError:
        pass
    before = status_kb("VmRSS")
    t0 = time.perf_counter()
    out = fn()
    seconds = time.perf_counter() - t0
    return out, seconds, max(0, status_kb("VmHWM") - before) / 1024


def _loader(folder: Path, batch_size: int, rank: int, world: int):
    from p2p.config import load_config
    from p2p.data import build_loader

    cfg = load_config(None, [f"data.source={folder}", "data.backend=wds", f"train.batch_size={batch_size}",
                             "data.workers=0", "data.val_images=4"])
    return build_loader(cfg, "train", rank, world)


def _first_keys(folder: Path, batch_size: int, rank: int, world: int, history: list | None) -> list[str]:
    loader = _loader(folder, batch_size, rank, world)
    if history:
        loader.continue_epoch(0, history)
    data = loader.dataset(0)
    return [loader.shards.key(int(s), int(m)) for s, m in data.plan[:batch_size]]


def _touched(counts: np.ndarray, batch_size: int, rank: int, world: int, history: list | None) -> np.ndarray:
    """The shards a rank's plan and spare samples lie in (what dataset() parses)."""
    from p2p.data.plan import RankOrders, continued_plan, rank_samples

    if history:
        rows = np.concatenate(continued_plan(RankOrders.of_shards(counts, 0, 0, history[0][0]), history, rank,
                                             world, batch_size))
    else:
        rows = rank_samples(counts, 0, 0, rank, world)
    return np.unique(rows[:, 0])


def _open_as_before(folder: Path) -> tuple[list, list, list, np.ndarray]:
    """The train split opened as ShardSet did before manifest.counts (the baseline): paths,
    index paths, checked tar sizes and counts of every shard."""
    from p2p.data.shards.format import check_shard_file, read_manifest, split_shards

    entries = split_shards(read_manifest(folder), "train")
    base = folder / "train"
    tars = [str(base / tar) for tar, _, _ in entries]
    idxs = [str(base / idx) for _, idx, _ in entries]
    sizes = [check_shard_file(tar, count) for tar, (_, _, count) in zip(tars, entries)]
    return tars, idxs, sizes, np.array([count for _, _, count in entries], dtype=np.int64)


def measure_cell(cell: dict) -> dict:
    """One rank's figures for one (N, W) or one change W0 -> W1 (see the module docstring)."""
    from p2p.data.plan import rank_range, sequence, shard_order, train_plan

    import p2p.config  # noqa: F401  imported before any timer: start-up here is the work, not the imports
    import p2p.data.shards.catalog  # noqa: F401  (ShardSet imports it when first built)
    import p2p.data.wds  # noqa: F401

    folder, batch, n = Path(cell["folder"]), cell["batch_size"], cell["n"]
    counts = np.array(shard_counts(n, cell["shard_size"]), dtype=np.int64)
    world, history = cell["world"], cell.get("history")
    rank = world // 2 if history else world - 1
    # what the rank reads: its share, or after a change the old rank orders its part lies in,
    # each N/W0 long and about W0/W1 of them: N / min(W0, W1)
    share = n // min(world, history[0][0]) if history else n // world
    row: dict = {"n": n, "world": world, "rank": rank, "share": share, "shards": len(counts)}
    parse = share <= cell["max_parse"]
    if parse:
        touched = _touched(counts, batch, rank, world, history)
        row["indexes_written"] = ensure_indexes(folder, counts, touched, cell["shard_size"])
        row["shards_touched"] = len(touched)
        keys, s, mb = measured(lambda: _first_keys(folder, batch, rank, world, history))
        row["change_first_keys_s" if history else "first_keys_s"] = s
        if not history:
            row["first_keys_mb"] = mb
        row["first_key"] = keys[0]
    loader, row["manifest_s"], _ = measured(lambda: _loader(folder, batch, rank, world))
    if not history:
        _, row["baseline_manifest_s"], _ = measured(lambda: _open_as_before(folder))
    if history:
        row["w0"] = history[0][0]
        _, row["change_s"], row["change_mb"] = measured(lambda: loader.continue_epoch(0, history))
        return row
    runs = [measured(lambda: train_plan(counts, batch, 0, 0, rank, world)) for _ in range(3)]
    row["plan_s"] = sorted(r[1] for r in runs)[1]
    row["plan_mb"] = max(r[2] for r in runs)
    if parse:
        def parse_all(shards):
            from p2p.data.shards.index import collector_paused

            with collector_paused():  # as WdsLoader.dataset parses them
                for s in touched.tolist():
                    shards.index(s)
        fresh = [_loader(folder, batch, rank, world).shards for _ in range(3)]  # empty caches of parsed indexes
        runs = [measured(lambda: parse_all(shards)) for shards in fresh]
        row["index_s"] = sorted(r[1] for r in runs)[1]
        row["index_mb"] = max(r[2] for r in runs)
    if n <= cell["baseline_max"]:
        def whole_epoch():  # the plan before it was O(N/W): every sample of the epoch, then a slice
            import torch

            from p2p.data.plan import mix_seed

            lo, hi = rank_range(n, rank, world)
            mine = sequence(counts, shard_order(len(counts), 0, 0))[lo:hi]
            g = torch.Generator().manual_seed(mix_seed(0, 0, rank, 0xB47C))
            return mine[torch.randperm(len(mine), generator=g).numpy()]
        old, row["baseline_plan_s"], row["baseline_plan_mb"] = measured(whole_epoch)
        nb = share // batch * batch
        row["baseline_equal"] = bool(np.array_equal(old[:nb], train_plan(counts, batch, 0, 0, rank, world)))
    return row


def run_cell(cell: dict, timeout: float) -> dict:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run([sys.executable, "-m", "p2p.bench.plan_scale", json.dumps(cell)], capture_output=True,
                          text=True, timeout=timeout, env=env)
    if proc.returncode != 0:
        tail = (proc.stderr.strip().splitlines() or ["no output"])[-1]
        raise RuntimeError(f"measuring {cell['n']:,} samples, {cell['world']} ranks failed: {tail}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def _disk_bytes(work: Path) -> int:
    """Bytes WORK takes on disk (blocks: the sparse tars take next to none)."""
    return sum(p.stat().st_blocks * 512 for p in work.rglob("*") if p.is_file())


def run_plan_scale(options: PlanScaleOptions, out: str | os.PathLike, say: Callable[[str], None]) -> dict:
    from p2p.bench.common import environment

    out, work = Path(out), Path(options.work)
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    plain, changes = [], []
    common = {"shard_size": options.shard_size, "batch_size": options.batch_size, "max_parse": options.max_parse,
              "baseline_max": options.baseline_max}
    for n in sorted(set(options.sizes)):
        folder = (work / f"sim-{n}").resolve()
        write_folder(folder, n, options.shard_size)
        for w in options.worlds:
            row = run_cell({**common, "folder": str(folder), "n": n, "world": w}, options.timeout_s)
            plain.append(row)
            say(f"  N={n:,} W={w}: plan {row['plan_s']:.3f} s {row['plan_mb']:.0f} MB"
                + (f", first keys {row['first_keys_s']:.2f} s" if "first_keys_s" in row else ""))
        for w0, w1 in options.changes:
            k0 = (n // w0) // options.batch_size // 2  # half the epoch read with w0 ranks
            row = run_cell({**common, "folder": str(folder), "n": n, "world": w1,
                            "history": [[w0, options.batch_size, k0]]}, options.timeout_s)
            changes.append(row)
            say(f"  N={n:,} {w0}->{w1}: continued plan {row['change_s']:.3f} s {row['change_mb']:.0f} MB")
    from p2p.bench.plan_scale_report import finish

    command = ("p2p bench scale --simulate --sizes " + ",".join(map(str, options.sizes)) + " --worlds "
               + ",".join(map(str, options.worlds)) + " --changes " + ",".join(f"{a}:{b}" for a, b in options.changes)
               + f" --shard-size {options.shard_size} --batch-size {options.batch_size}")
    payload = {"environment": environment(), "config": asdict(options), "command": command, "results": plain,
               "changes": changes, "disk_bytes": _disk_bytes(work), "seconds": round(time.perf_counter() - t0, 1)}
    return finish(payload, out)


if __name__ == "__main__":  # one cell, in a fresh process (run_cell)
    print(json.dumps(measure_cell(json.loads(sys.argv[1]))))
