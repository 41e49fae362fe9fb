"""benchmarks/gpu-check.sh and its report (`p2p bench gpu-report`): the training check judges
loss curves and what the metrics rows say ran; the script keeps to its deadline and reports the
parts that did not run. The GPU figures themselves can only come from a GPU node."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from helpers.runs import ROOT, TINY, p2p_env, run_p2p
from p2p.bench.gpu_check import GRAPH_WARMUP, compare_losses, in_effect, pytest_summary, read_parts


@pytest.fixture(scope="module")
def eager_rows(tmp_path_factory) -> list[dict]:
    """The metrics rows of a real (CPU) training: 12 steps, a row every 2."""
    out = tmp_path_factory.mktemp("gpu_check_run")
    run_p2p("train", f"run.out_dir={out}", *TINY, "train.max_steps=12", "run.name=eager")
    return [json.loads(line) for line in (out / "eager" / "metrics.jsonl").read_text().splitlines()]


def test_losses_within_tolerance_pass_and_a_drift_fails(eager_rows):
    same = compare_losses(eager_rows, [dict(r) for r in eager_rows], window=4)
    assert same["passed"] and same["worst_deviation"]["G_L1"] == 0 and len(same["windows"]) == 3
    drifted = [dict(r, G_L1=r["G_L1"] * (1.2 if r["step"] > 8 else 1.0)) for r in eager_rows]
    result = compare_losses(eager_rows, drifted, window=4)
    assert not result["passed"] and result["worst_deviation"]["G_L1"] == pytest.approx(0.2)
    assert not compare_losses(eager_rows, eager_rows[:-2], window=4)["passed"]  # a run cut short


def graphed(rows: list[dict]) -> list[dict]:
    """Rows as a run with graphs in effect writes them: replays every step after the warm-up."""
    out, done = [], 0
    for r in rows:
        replays = max(0, r["step"] - GRAPH_WARMUP) - done
        done += replays
        out.append(dict(r, cuda_graphs=True, compiled=True, graph_replays=replays))
    return out


def test_graphs_and_compile_in_effect_are_read_off_the_rows(eager_rows):
    assert not in_effect(eager_rows, 12)["passed"]  # CPU rows: no graphs, nothing compiled
    rows = graphed(eager_rows)
    assert in_effect(rows, 12)["passed"] and in_effect(rows, 12)["graph_replays"] == 12 - GRAPH_WARMUP
    failed = [dict(r) for r in rows]
    failed[2]["notices"] = ["CUDA graph capture failed at step call 4 (...); running eager steps from here on"]
    assert not in_effect(failed, 12)["passed"]
    fewer = [dict(r) for r in rows]
    fewer[-1]["graph_replays"] -= 1  # one step of the interval ran eagerly
    assert not in_effect(fewer, 12)["passed"]
    uncompiled = [dict(r) for r in rows]
    uncompiled[0]["compiled"] = False
    assert not in_effect(uncompiled, 12)["passed"]


def test_pytest_report_counts_and_names_the_failures(tmp_path):
    (tmp_path / "test_x.py").write_text("import pytest\n\ndef test_ok():\n    pass\n\ndef test_bad():\n    assert 0\n\n"
                                        "def test_skip():\n    pytest.skip('no GPU')\n")
    subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", str(tmp_path / "test_x.py"),
                    "--junitxml", str(tmp_path / "r.xml"), "-o", "addopts="], cwd=tmp_path, capture_output=True)
    s = pytest_summary(tmp_path / "r.xml")
    assert (s["tests"], s["passed"], s["failures"], s["skipped"]) == (3, 1, 1, 1)
    assert s["failed_tests"] == ["test_x::test_bad"] and "no GPU" in s["skipped_tests"][0]
    assert pytest_summary(tmp_path / "missing.xml") is None


@pytest.mark.slow
def test_the_check_keeps_its_deadline_and_reports_what_did_not_run(tmp_path):
    """A 6-second budget: the first part is cut at its limit, the rest are skipped, and the
    report still comes, saying so, with exit 1. (P2P_GPU_CHECK_STUB=1: toy sizes, on the CPU.)"""
    wheels, out = tmp_path / "wheels", tmp_path / "out"
    wheels.mkdir()
    proc = subprocess.run(["bash", "benchmarks/gpu-check.sh", str(wheels), str(out)], cwd=ROOT, capture_output=True,
                          text=True, timeout=300,
                          env=p2p_env(P2P_GPU_CHECK_STUB="1", P2P_GPU_CHECK_BUDGET_S="6", PYTHON=sys.executable))
    assert proc.returncode == 1, proc.stdout[-2000:] + proc.stderr[-2000:]
    parts = {p["name"]: p for p in read_parts(out / "parts.tsv")}
    assert list(parts) == ["install", "environment", "shards", "pytest", "lab", "step", "train-eager", "train-fast",
                           "data", "report"]
    assert parts["install"]["limit_s"] <= 6 and parts["install"]["seconds"] < 6 + 20
    assert all(parts[n]["status"].startswith("skipped") for n in ("shards", "pytest", "step", "train-fast", "data"))
    result = json.loads((out / "gpu-check.json").read_text())
    assert not result["passed"] and result["pytest"] is None and result["training"]["eager"] == {"rows": 0}
    assert all(t["met"] is None for t in result["targets"])  # nothing measured, nothing guessed
    summary = (out / "summary.md").read_text()
    assert "NOT PASSED" in summary and "pytest -m gpu" in summary and "did not run" in summary
    again = subprocess.run(["bash", "benchmarks/gpu-check.sh", str(wheels), str(out)], cwd=ROOT, capture_output=True,
                           text=True, timeout=60, env=p2p_env())
    assert again.returncode == 2 and "not empty" in again.stderr  # never overwrites a previous check
