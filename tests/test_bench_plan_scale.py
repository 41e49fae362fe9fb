"""`p2p bench scale --simulate`: one rank's plan, index parse, start-up and world-size change at
N samples and W ranks, from a synthetic manifest and only the index files the measured ranks
touch. Small sizes here; benchmarks/RESULTS.md has 1M..100M. Timings are recorded, not asserted."""

from __future__ import annotations

import json
import math

import pytest

from helpers.runs import run_p2p
from p2p.bench.plan_scale import measure_cell, shard_counts, write_folder
from p2p.bench.plan_scale_report import CHANGE_FIGURES, FIGURES
from p2p.bench.plan_scale_report import fit_growth
from p2p.data.plan import train_plan
from p2p.data.wds import ShardSet


def test_a_synthetic_folder_is_a_shard_folder_the_loader_reads(tmp_path):
    write_folder(tmp_path, 2500, 1000)
    shards = ShardSet(str(tmp_path), "train")
    assert shards.counts.tolist() == [1000, 1000, 500] == shard_counts(2500, 1000)
    row = measure_cell({"folder": str(tmp_path), "n": 2500, "world": 2, "shard_size": 1000, "batch_size": 4,
                        "max_parse": 10**6, "baseline_max": 10**6})
    assert row["baseline_equal"], "the whole-epoch baseline plans the same samples"
    assert row["shards_touched"] == 2 and row["indexes_written"] == 2  # rank 1's range: shards 1 and 2 of 3
    first = train_plan(shards.counts, 4, 0, 0, 1, 2)[0]
    assert row["first_key"] == shards.key(int(first[0]), int(first[1]))
    for key in ("manifest_s", "plan_s", "index_s", "first_keys_s", "baseline_plan_s"):
        assert row[key] > 0, key


def test_a_continued_epoch_cell_measures_the_change(tmp_path):
    write_folder(tmp_path, 4000, 500)
    row = measure_cell({"folder": str(tmp_path), "n": 4000, "world": 3, "shard_size": 500, "batch_size": 4,
                        "max_parse": 10**6, "baseline_max": 0, "history": [[4, 4, 100]]})
    assert row["w0"] == 4 and row["change_s"] > 0 and row["change_first_keys_s"] > 0
    assert "baseline_plan_s" not in row and "plan_s" not in row


def test_growth_fit_recovers_known_exponents():
    rows = [{"n": n, "share": n // w, "f": 3e-6 * n ** 0.05 * (n // w) ** 0.9}
            for n in (10**6, 10**7, 10**8) for w in (8, 64, 1024)]
    g = fit_growth(rows, "f")
    assert math.isclose(g["in_n"], 0.05, abs_tol=0.01) and math.isclose(g["in_share"], 0.9, abs_tol=0.01)
    assert fit_growth(rows[:2], "f") is None


@pytest.mark.slow
def test_bench_scale_simulate_small(tmp_path):
    out = tmp_path / "out"
    proc = run_p2p("bench", "scale", "--simulate", "--sizes", "20000,40000", "--worlds", "2,4", "--changes", "4:2",
                   "--shard-size", "100", "--batch-size", "4", "--work", tmp_path / "work", "--out", out, timeout=600)
    payload = json.loads((out / "plan-scale.json").read_text())
    assert [(r["n"], r["world"]) for r in payload["results"]] == [(20000, 2), (20000, 4), (40000, 2), (40000, 4)]
    assert all(r["baseline_equal"] for r in payload["results"])
    assert [(r["n"], r["w0"], r["world"]) for r in payload["changes"]] == [(20000, 4, 2), (40000, 4, 2)]
    assert set(payload["growth"]) == set(FIGURES) | set(CHANGE_FIGURES)
    assert any(t["target"].startswith("first_keys_s: exponent in N") for t in payload["targets"])
    assert (out / "plan-scale-plan_s.png").exists() and (out / "plan-scale-change_s.png").exists()
    assert (out / "plan-scale.md").read_text().startswith("`p2p bench scale --simulate --sizes 20000,40000")
    assert "targets missed" in proc.stdout
    touched = sum(r.get("indexes_written", 0) for r in payload["results"] + payload["changes"])
    assert len(list((tmp_path / "work").rglob("*.idx"))) == touched < 400  # only what the ranks touch


@pytest.mark.parametrize("args, message", [
    (["--changes", "1024-512"], "--changes '1024-512': give OLD:NEW pairs"),
    (["--sizes", "10"], "give sample counts of at least 1000"),
    (["--sizes", "2000", "--worlds", "1024"], "N=2,000 cannot give each of 1024 processes a batch"),
])
def test_bad_simulate_flags_are_one_line_errors(tmp_path, args, message):
    proc = run_p2p("bench", "scale", "--simulate", *args, "--work", tmp_path / "w", "--out", tmp_path / "o",
                   check=False, timeout=120)
    assert proc.returncode == 2 and message in proc.stderr and "Traceback" not in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1
