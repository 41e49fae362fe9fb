"""What rank 0 shows and records: a rich live line in a terminal (a plain line per log step
in files such as Slurm logs), `metrics.jsonl` (one JSON object per log step), `val.jsonl`
(validation metrics), sample grids, and the same to the trackers of `run.trackers`
(p2p.train.trackers: TensorBoard, W&B, MLflow). Other ranks get a logger that does nothing.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import torch
from torchvision.utils import make_grid, save_image

from p2p.atomic import append_text, replace_with
from p2p.specs.losses import LOSSES
from p2p.train.trackers import Trackers, tracker_names
from p2p.train.guarded import Guarded


class RunLogger:
    def __init__(self, run_dir: Path, max_steps: int, start_step: int, enabled: bool = True,
                 trackers: str = "tensorboard", config: dict | None = None):
        self.enabled = enabled
        self.run_dir = Path(run_dir)
        self.max_steps = max_steps
        self.start_step = start_step
        self.t0 = time.perf_counter()
        self._progress = self._task = self._trackers = None
        if not enabled:
            return
        from rich.console import Console

        self.console = Console(stderr=True, soft_wrap=True)  # long lines stay whole in log files
        self.metrics_path = self.run_dir / "metrics.jsonl"
        (self.run_dir / "samples").mkdir(parents=True, exist_ok=True)
        names = tracker_names(trackers)
        if names:  # run.trackers (p2p.train.trackers): the same rows, validations and grids
            self._trackers = Guarded(Trackers(names, self.run_dir, self.run_dir.name, config or {}),
                                     "experiment trackers", self.print)
        if self.console.is_terminal:
            from rich.progress import BarColumn, Progress, TextColumn, TimeRemainingColumn

            self._progress = Progress(TextColumn("step {task.completed}/{task.total}"), BarColumn(),
                                      TextColumn("{task.fields[info]}"), TimeRemainingColumn(),
                                      console=self.console, transient=False)
            self._task = self._progress.add_task("train", total=max_steps, completed=start_step, info="")
            self._progress.start()

    def print(self, text: str) -> None:
        if self.enabled:
            self.console.print(text, highlight=False)

    def log(self, row: dict) -> None:
        if not self.enabled:
            return
        append_text(self.metrics_path, json.dumps(row) + "\n")  # a failed append leaves no half line
        if self._trackers is not None:
            self._trackers.log(row, row["step"])
        losses = " ".join(f"{k}={row[k]:.3f}" for k in LOSSES.names() if k in row)
        info = f"{losses} {row.get('img_per_s', 0):.1f} img/s"
        if self._progress is not None:
            self._progress.update(self._task, completed=row["step"], info=info)
        else:
            done = row["step"] - self.start_step
            elapsed = time.perf_counter() - self.t0
            eta = elapsed / max(done, 1) * (self.max_steps - row["step"])
            self.console.print(f"step {row['step']}/{self.max_steps} {info} eta {eta:.0f}s", highlight=False)

    def log_eval(self, step: int, metrics: dict) -> None:
        if not self.enabled:
            return
        metrics = {k: v for k, v in metrics.items() if v is not None}  # not computed (p2p.evaluation)
        # A file of its own: every metrics.jsonl row is a training row (step, losses, img_per_s, ...).
        append_text(self.run_dir / "val.jsonl", json.dumps({"step": step, **metrics}) + "\n")
        if self._trackers is not None:
            self._trackers.log(metrics, step, prefix="val/")
        self.print("validation step {}: {}".format(step, " ".join(f"{k}={v:.4g}" for k, v in metrics.items())))

    def samples(self, step: int, inp: torch.Tensor, out: torch.Tensor, target: torch.Tensor) -> Path | None:
        """A grid with one row per image: input | output | target (all RGB in [0,1])."""
        if not self.enabled:
            return None
        n = min(inp.shape[0], 8)
        rows = torch.stack([inp[:n], out[:n], target[:n]], dim=1).flatten(0, 1).float().cpu()
        grid = make_grid(rows, nrow=3, padding=2, pad_value=1.0)
        path = self.run_dir / "samples" / f"step-{step:08d}.png"
        replace_with(path, lambda f: save_image(grid, f, format="png"))  # never half a PNG
        if self._trackers is not None:
            self._trackers.log_images(grid, path, step)
        return path

    def close(self) -> None:
        if self._progress is not None:
            self._progress.stop()
        if self._trackers is not None:
            self._trackers.finish()
            self._trackers = None
        if self.enabled:
            sys.stderr.flush()
