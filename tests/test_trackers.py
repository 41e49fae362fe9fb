"""`run.trackers`: TensorBoard, W&B (offline mode) and MLflow (its local file store) get the
rows of metrics.jsonl, the validation metrics, the sample grids and the resolved config; a
tracker that is not installed is one line at start-up."""

from __future__ import annotations

import json

import pytest
import yaml

from helpers.runs import ROOT, TINY, run_p2p, torchrun


def _rows(path):
    return [json.loads(x) for x in path.read_text().splitlines()]


@pytest.mark.slow
def test_every_tracker_gets_the_rows_validations_grids_and_config(tmp_path, monkeypatch):
    run_p2p("train", f"run.out_dir={tmp_path}", "run.name=tr", *TINY, "train.max_steps=4", "train.eval_every=2",
            "train.sample_every=2", "run.trackers=tensorboard,wandb,mlflow", timeout=600, WANDB_MODE="offline",
            MLFLOW_TRACKING_URI="", WANDB_SILENT="true")
    run = tmp_path / "tr"
    train, val = _rows(run / "metrics.jsonl"), _rows(run / "val.jsonl")
    assert [r["step"] for r in train] == [2, 4] and [r["step"] for r in val] == [2, 4]

    # MLflow: the whole history of each metric, the config as parameters, the grids as artifacts
    from mlflow.tracking import MlflowClient

    monkeypatch.setenv("MLFLOW_ALLOW_FILE_STORE", "true")  # reading the file store back, as p2p writes it

    client = MlflowClient(tracking_uri=(run / "mlruns").resolve().as_uri())
    (experiment,) = [e for e in client.search_experiments() if e.name == "p2p"]
    (mlrun,) = client.search_runs([experiment.experiment_id])
    for key in ("G_L1", "D_fake", "img_per_s"):
        history = client.get_metric_history(mlrun.info.run_id, key)
        assert [(m.step, m.value) for m in history] == [(r["step"], pytest.approx(r[key])) for r in train], key
    psnr = client.get_metric_history(mlrun.info.run_id, "val/psnr")
    assert [(m.step, m.value) for m in psnr] == [(r["step"], pytest.approx(r["psnr"])) for r in val]
    assert mlrun.data.params["train.max_steps"] == "4" and mlrun.data.params["model.ngf"] == "8"
    artifacts = [a.path for a in client.list_artifacts(mlrun.info.run_id, "samples")]
    assert artifacts == ["samples/step-00000002.png", "samples/step-00000004.png"]

    # W&B offline: every row and validation at its step, the grids, the resolved config
    from helpers import wandb_records

    (record,) = list((run / "wandb").glob("offline-run-*/run-*.wandb"))
    logged = {r["_step"]: r for r in wandb_records.history(record)}
    assert sorted(logged) == [2, 4]
    for r, v in zip(train, val):
        got = logged[r["step"]]
        assert got["G_L1"] == pytest.approx(r["G_L1"]) and got["val/psnr"] == pytest.approx(v["psnr"])
        assert got["samples/_type"] == "images/separated" and got["samples/count"] == 1
    config = wandb_records.config(record)
    assert config["train.max_steps"] == 4 and config["run.trackers"] == "tensorboard,wandb,mlflow"

    # TensorBoard: the scalars of every row and validation, and the grids
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(run / "tb")).Reload()
    assert [(e.step, e.value) for e in events.Scalars("G_L1")] == [(r["step"], pytest.approx(r["G_L1"])) for r in train]
    assert [e.step for e in events.Scalars("val/psnr")] == [2, 4]
    assert [e.step for e in events.Images("samples")] == [2, 4]


@pytest.mark.slow
def test_two_processes_make_one_tracker_run(tmp_path, monkeypatch):
    """2 gloo processes (torchrun, about a minute on 2 CPU cores): rank 0 alone starts the
    trackers, so the run has one MLflow run and one W&B offline run, not one per rank."""
    from mlflow.tracking import MlflowClient

    torchrun("-m", "p2p", "train", f"run.out_dir={tmp_path}", "run.name=dd", *TINY, "train.max_steps=2",
             "run.trackers=wandb,mlflow", timeout=600, WANDB_MODE="offline", MLFLOW_TRACKING_URI="",
             WANDB_SILENT="true")
    run = tmp_path / "dd"
    assert [r["step"] for r in _rows(run / "metrics.jsonl")] == [2]
    assert len(list((run / "wandb").glob("offline-run-*"))) == 1
    monkeypatch.setenv("MLFLOW_ALLOW_FILE_STORE", "true")  # reading the file store back
    client = MlflowClient(tracking_uri=(run / "mlruns").resolve().as_uri())
    (experiment,) = [e for e in client.search_experiments() if e.name == "p2p"]
    (mlrun,) = client.search_runs([experiment.experiment_id])
    assert [m.step for m in client.get_metric_history(mlrun.info.run_id, "G_L1")] == [2]


def test_a_tracker_that_is_not_installed_is_one_line_at_start_up(tmp_path):
    # stands in for an environment without wandb: a package of that name that fails to import
    shadow = tmp_path / "shadow" / "wandb"
    shadow.mkdir(parents=True)
    (shadow / "__init__.py").write_text("raise ImportError(\"No module named 'wandb'\")\n")
    proc = run_p2p("train", f"run.out_dir={tmp_path}", "run.name=x", *TINY, "train.max_steps=2",
                   "run.trackers=tensorboard,wandb", check=False, PYTHONPATH=f"{shadow.parent}:{ROOT}")
    assert proc.returncode == 2 and "wandb is not installed" in proc.stderr, proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1 and not (tmp_path / "x" / "metrics.jsonl").exists()
    proc = run_p2p("train", f"run.out_dir={tmp_path}", "run.trackers=tensorbord", check=False)
    assert proc.returncode == 2 and "'tensorbord' is not a tracker" in proc.stderr
