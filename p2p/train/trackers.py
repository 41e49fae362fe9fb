"""Experiment trackers (`run.trackers`): TensorBoard, Weights & Biases and MLflow through
Accelerate's tracker classes, on rank 0 only (the `RunLogger` of the other ranks makes none).
They receive what `metrics.jsonl` and `val.jsonl` get (validation metrics as `val/<name>`), the
sample grids, and the resolved config as run parameters (`section.key`).

Compute nodes have no internet, so nothing here needs it: W&B runs offline unless WANDB_MODE
says otherwise (`wandb sync <run>/wandb/offline-run-*` uploads later), into `<run>/wandb`;
MLflow writes to the local file store `<run>/mlruns` unless MLFLOW_TRACKING_URI names another.
TensorBoard writes `<run>/tb`.
"""

from __future__ import annotations

import importlib
import json
import math
import os
from pathlib import Path

from p2p.errors import UsageError

TRACKERS = ("tensorboard", "wandb", "mlflow")
_PACKAGES = {"tensorboard": "tensorboard", "wandb": "wandb", "mlflow": "mlflow"}


def tracker_names(value: str) -> list[str]:
    """`run.trackers` ("tensorboard,wandb"; "" or "none" = no tracker) as a list."""
    names = [n.strip() for n in value.split(",") if n.strip() and n.strip() != "none"]
    return list(dict.fromkeys(names))


def check_installed(value: str) -> None:
    """Every named tracker imports (called on every rank before anything starts)."""
    for name in tracker_names(value):
        try:
            importlib.import_module(_PACKAGES[name])
        except ImportError as e:
            raise UsageError(f"run.trackers={value}: {name} is not installed ({e}); pip install {_PACKAGES[name]} "
                             f"or leave it out of run.trackers") from None


def flat_config(tree: dict, prefix: str = "") -> dict:
    """`section.key` -> value, with containers as JSON text (what trackers take as parameters)."""
    out = {}
    for k, v in tree.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict) and not prefix:  # sections; deeper dicts (slurm.extra) stay one value
            out.update(flat_config(v, key + "."))
        else:
            out[key] = json.dumps(v) if isinstance(v, (dict, list, tuple)) else v
    return out


def _numbers(row: dict) -> dict:
    return {k: v for k, v in row.items()
            if k != "step" and isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)}


class Trackers:
    """The run's trackers, started with the config logged; `log`, `log_images`, `finish`."""

    def __init__(self, names: list[str], run_dir: Path, run_name: str, config: dict):
        from accelerate.tracking import MLflowTracker, TensorBoardTracker, WandBTracker

        self.trackers = []
        for name in names:
            if name == "tensorboard":
                tracker = TensorBoardTracker("tb", run_dir)
            elif name == "wandb":
                tracker = WandBTracker(os.environ.get("WANDB_PROJECT", "p2p"), name=run_name, dir=str(run_dir),
                                       mode=os.environ.get("WANDB_MODE", "offline"))
            else:
                import mlflow

                if not os.environ.get("MLFLOW_TRACKING_URI"):
                    # MLflow 3 refuses its file store unless asked (it prefers a database); a run
                    # folder on a cluster's shared filesystem is exactly where a file store fits
                    os.environ.setdefault("MLFLOW_ALLOW_FILE_STORE", "true")
                    mlflow.set_tracking_uri((Path(run_dir) / "mlruns").resolve().as_uri())
                tracker = MLflowTracker(os.environ.get("MLFLOW_EXPERIMENT_NAME", "p2p"), run_name=run_name)
            try:
                tracker.start()
                tracker.store_init_configuration(flat_config(config))
            except Exception as e:  # e.g. a W&B mode that needs a login: one line, at start-up
                raise UsageError(f"run.trackers: {name} could not start: {type(e).__name__}: {e}") from None
            self.trackers.append((name, tracker))

    def log(self, row: dict, step: int, prefix: str = "") -> None:
        values = {f"{prefix}{k}": v for k, v in _numbers(row).items()}
        for _, tracker in self.trackers:
            tracker.log(values, step=step)

    def log_images(self, grid, path: Path, step: int) -> None:
        """A sample grid (3 x H x W in [0, 1]) that is also saved at `path`."""
        for name, tracker in self.trackers:
            if name == "tensorboard":
                tracker.log_images({"samples": grid[None]}, step=step)
            elif name == "wandb":
                from PIL import Image

                tracker.log_images({"samples": [Image.open(path)]}, step=step)
            else:
                tracker.log_artifact(str(path), artifact_path="samples")

    def finish(self) -> None:
        for _, tracker in self.trackers:
            tracker.finish()
