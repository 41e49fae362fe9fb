"""Comparing training runs (a sweep's, or any run folders): curves, a table of best and final
values, and sample grids at matched steps. What `p2p compare` writes:

- `curves.png`: validation PSNR, SSIM (and FID, KID, LPIPS where logged) and the training losses,
  each against the step and against the images seen (step x global batch, so runs with
  different batch sizes line up by the data they consumed);
- `table.md` and `table.json`: per run, the best (highest PSNR/SSIM, lowest FID/KID/LPIPS) and
  final value of each validation metric with the step it was reached at, and the final losses;
- `samples-<run>.png`: each run's sample grids side by side at the steps every run has a grid
  for (else each run's grids nearest to the last run's steps), captioned with the step.

Runs are labelled by the config keys whose values differ between them (`train.batch_size=32`),
read from each folder's resolved `config.yaml`; folder names where nothing differs. A step
logged twice (a run resumed from a checkpoint older than its last rows) counts once, as the
rows written after the resume have it.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from p2p.errors import UsageError
from p2p.specs.losses import LOSSES
from p2p.train.straggler import per_rank_summary

HIGHER_IS_BETTER = {"psnr": True, "ssim": True, "colorfulness": None, "delta_colorfulness": False, "fid": False,
                    "kid": False, "lpips": False}
PLOTTED_VAL = ("psnr", "ssim", "fid", "kid", "lpips")
IGNORED_KEYS = ("run.name", "run.out_dir", "slurm.")  # where a run lives and runs, not what it is


@dataclass
class RunRecord:
    path: Path
    config: dict
    train: list[dict]
    val: list[dict]
    samples: dict[int, Path]
    label: str = ""
    global_batch: int = 1

    def images_seen(self, step: int) -> int:
        return step * self.global_batch


def _jsonl(path: Path) -> list[dict]:
    if not path.is_file():
        return []
    rows = []
    for line in path.read_text().splitlines():
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError:  # a line cut by a crash: the rows before it still count
            continue
    return rows


def _last_per_step(rows: list[dict]) -> list[dict]:
    """One row per step, the last written, in step order: a run resumed from a checkpoint older
    than its last log step logs those steps again, and the second time is the run that went on."""
    by_step = {}
    for r in rows:
        if "step" in r:
            by_step[r["step"]] = r
    return [by_step[k] for k in sorted(by_step)]


def _flatten(tree: dict, prefix: str = "") -> dict:
    out = {}
    for k, v in tree.items():
        if isinstance(v, dict) and v:
            out.update(_flatten(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


def load_run(path: str | Path) -> RunRecord:
    path = Path(path)
    cfg_path = path / "config.yaml"
    if not cfg_path.is_file():
        raise UsageError(f"{path}: not a run folder (no config.yaml)")
    config = _flatten(yaml.safe_load(cfg_path.read_text()) or {})
    train, val = _last_per_step(_jsonl(path / "metrics.jsonl")), _last_per_step(_jsonl(path / "val.jsonl"))
    if not train and not val:
        raise UsageError(f"{path}: no metrics.jsonl or val.jsonl rows yet")
    samples = {int(p.stem.split("-")[1]): p for p in sorted((path / "samples").glob("step-*.png"))}
    batch = next((r["global_batch"] for r in train if "global_batch" in r), config.get("train.batch_size", 1))
    return RunRecord(path, config, train, val, samples, global_batch=int(batch))


def label_runs(runs: list[RunRecord]) -> None:
    keys = sorted({k for r in runs for k in r.config})
    differing = [k for k in keys if not k.startswith(IGNORED_KEYS)
                 and len({json.dumps(r.config.get(k), sort_keys=True) for r in runs}) > 1]
    for r in runs:
        r.label = " ".join(f"{k}={r.config.get(k)}" for k in differing) or r.path.name
    if len({r.label for r in runs}) < len(runs):  # same config twice: tell them apart by folder
        for r in runs:
            r.label = f"{r.label} ({r.path.name})" if differing else r.path.name


def summary(run: RunRecord) -> dict:
    """Best and final value (and their steps) of each validation metric; final losses."""
    row: dict = {"run": run.label, "path": str(run.path), "global_batch": run.global_batch,
                 "final_step": max([r["step"] for r in run.train + run.val], default=0)}
    for key, higher in HIGHER_IS_BETTER.items():
        points = [(r["step"], r[key]) for r in run.val if r.get(key) is not None]
        if not points:
            continue
        row[f"final_{key}"], row[f"final_{key}_step"] = points[-1][1], points[-1][0]
        if higher is not None:
            pick = max if higher else min
            step, value = pick(points, key=lambda p: p[1])
            row[f"best_{key}"], row[f"best_{key}_step"] = value, step
    last = run.train[-1] if run.train else {}
    row.update({f"final_{k}": last[k] for k in LOSSES.names() if k in last})
    row.update(per_rank_summary(run.train))  # several processes: each rank's times, the slowest
    return row


def markdown_table(rows: list[dict]) -> str:
    keys = list(dict.fromkeys(k for r in rows for k in r))
    # a value's step goes into its cell ("21.02 @4"), not a column of its own
    columns = ["run"] + [c for c in keys if c not in ("run", "path") and not (c.endswith("_step") and c[:-5] in keys)]

    def cell(r, c):
        v = r.get(c)
        if v is None:
            return ""
        step = r.get(f"{c}_step")
        text = f"{v:.4g}" if isinstance(v, float) else str(v)
        return f"{text} @{step}" if step is not None else text

    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(cell(r, c) for c in columns) + " |" for r in rows]
    return "\n".join(lines) + "\n"


def plot_curves(runs: list[RunRecord], path: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    series = [(f"val {k}", "val", k) for k in PLOTTED_VAL if any(r.get(k) is not None for run in runs for r in run.val)]
    series += [(k, "train", k) for k in LOSSES.names() if any(k in r for run in runs for r in run.train)]
    fig, axes = plt.subplots(len(series), 2, figsize=(11, 2.6 * len(series)), squeeze=False)
    for i, (title, source, key) in enumerate(series):
        for run in runs:
            rows = [r for r in (run.val if source == "val" else run.train) if r.get(key) is not None]
            steps = [r["step"] for r in rows]
            values = [r[key] for r in rows]
            axes[i][0].plot(steps, values, marker="." if len(rows) < 30 else None, label=run.label)
            axes[i][1].plot([run.images_seen(s) for s in steps], values, marker="." if len(rows) < 30 else None,
                            label=run.label)
        for j, xlabel in enumerate(("step", "images seen")):
            axes[i][j].set_title(f"{title} vs {xlabel}")
            axes[i][j].set_xlabel(xlabel)
            axes[i][j].grid(alpha=0.3)
    axes[0][0].legend(fontsize=8)
    fig.tight_layout()
    from p2p.atomic import replace_with

    replace_with(path, lambda f: fig.savefig(f, format="png", dpi=90))
    plt.close(fig)
    return path


def matched_steps(runs: list[RunRecord], most: int = 4) -> list[int]:
    """Steps every run has a sample grid for (at most `most`, spread out), else the last run's."""
    common = sorted(set.intersection(*(set(r.samples) for r in runs))) if runs else []
    steps = common or sorted(runs[-1].samples)
    if len(steps) > most:
        steps = [steps[round(i * (len(steps) - 1) / (most - 1))] for i in range(most)]
    return steps


def sample_strip(run: RunRecord, steps: list[int], path: Path) -> Path | None:
    """The run's grids at `steps` (its nearest where it has none), side by side, each captioned."""
    from PIL import Image, ImageDraw

    if not run.samples:
        return None
    picked = [(s, run.samples[min(run.samples, key=lambda k: abs(k - s))]) for s in steps]
    grids = [(s, Image.open(p).convert("RGB")) for s, p in picked]
    h = max(g.height for _, g in grids)
    caption = 14
    strip = Image.new("RGB", (sum(g.width for _, g in grids) + 4 * (len(grids) - 1), h + caption), "white")
    draw, x = ImageDraw.Draw(strip), 0
    for s, g in grids:
        strip.paste(g, (x, caption))
        draw.text((x + 2, 1), f"{run.label} step {s}", fill="black")
        x += g.width + 4
    from p2p.atomic import replace_with

    replace_with(path, lambda f: strip.save(f, format="PNG"))
    return path


def _file_label(label: str) -> str:
    return "".join(c if c.isalnum() or c in "=.-_" else "_" for c in label)[:120]


@dataclass
class Comparison:
    runs: list[RunRecord]
    rows: list[dict]
    files: list[Path] = field(default_factory=list)


def compare(run_dirs: list[str], out_dir: str | Path) -> Comparison:
    from p2p.atomic import write_text

    if len(run_dirs) < 1:
        raise UsageError("give at least one run folder")
    runs = [load_run(d) for d in run_dirs]
    label_runs(runs)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    rows = [summary(r) for r in runs]
    result = Comparison(runs, rows)
    result.files.append(plot_curves(runs, out / "curves.png"))
    write_text(out / "table.json", json.dumps(rows, indent=2) + "\n")
    write_text(out / "table.md", markdown_table(rows))
    result.files += [out / "table.json", out / "table.md"]
    steps = matched_steps(runs)
    for r in runs:
        strip = sample_strip(r, steps, out / f"samples-{_file_label(r.label)}.png")
        if strip is not None:
            result.files.append(strip)
    return result
