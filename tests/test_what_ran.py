"""What the rows say ran, and what a cut benchmark keeps (issue 21): `compiled` names the networks
whose own torch.compile compiled, not a process-wide count; simplejpeg missing is a notice and a
field in the metrics and bench rows; `bench step` and `bench data` hand over their payload as
they measure, so a run cut at a time limit keeps its figures."""

from __future__ import annotations

import json

import pytest
import torch
from torch import nn

from helpers.image_folders import folder_and_shards
from helpers.runs import ROOT, TINY, run_p2p
from p2p.train.compiled import GraphCounter
from p2p.train.in_effect import InEffect


def test_compiled_names_the_networks_whose_own_compile_ran():
    """The fused device step's torch.compile raises dynamo's process-wide graph count in every GPU
    run; a network that never compiled must still not be listed."""
    other = torch.compile(lambda x: x * 2 + 1, backend="eager")  # stands in for the device step's compile
    other(torch.ones(3))
    from torch._dynamo.utils import counters

    assert counters["stats"]["unique_graphs"] > 0  # what the old `compiled` read
    g, d = GraphCounter("G", backend="eager"), GraphCounter("D", backend="eager")
    speedups = InEffect("fp32", False, True, "foreach", counters={"G": g, "D": d})
    assert speedups.row()["compiled"] == []
    G = torch.compile(nn.Linear(4, 2), backend=g)
    G(torch.ones(1, 4)).sum().backward()
    assert g.graphs >= 1 and d.graphs == 0
    assert speedups.row()["compiled"] == ["G"]


@pytest.fixture(scope="module")
def shards(tmp_path_factory):
    return folder_and_shards(tmp_path_factory.mktemp("what_ran"), n=12, seed=3, shard_mb=0.05) / "shards"


def test_bench_step_hands_over_each_round(tmp_path):
    from p2p.bench.step import StepOptions, run_step

    got = []
    final = run_step(StepOptions(device="cpu", ngf=8, ndf=8, num_downs=5, image_size=32, batch_size=2, steps=1,
                                 warmup=1, repeats=2, modes=("baseline", "channels_last")),
                     progress=lambda s: None, partial=lambda p: got.append(json.loads(json.dumps(p, default=str))))
    assert got and all(p["partial"] for p in got) and "partial" not in final
    built = [p for p in got if p["rounds_done"] == 0]
    assert built and all(r.get("img_per_s") is None for r in built[0]["results"])  # built, not yet timed
    first_round = [p for p in got if p["rounds_done"] == 1]
    assert len(first_round) == 1 and all(r["img_per_s"] > 0 and r["repeats"] == 1 for r in first_round[0]["results"])
    assert all(r["repeats"] == 2 for r in final["results"])


def test_bench_data_hands_over_each_row_and_names_its_decoder(shards, monkeypatch):
    from p2p.bench.data import DataOptions, run_data
    from p2p.data import decode

    def rows_of(options):
        got, said = [], []
        final = run_data(str(shards), options, said.append, partial=lambda p: got.append([dict(r) for r in p["results"]]))
        return final, got, said

    options = DataOptions(quick=True, batch_size=4, image_size=32, backends=("wds",), workers=(0,))
    final, got, said = rows_of(options)
    assert [len(rows) for rows in got] == list(range(1, len(final["results"]) + 1))  # after every row
    wds = [r for r in final["results"] if r["backend"] == "wds"]
    assert wds and all(r["decoder"] == "simplejpeg" for r in wds) and not any("notice" in s for s in said)
    monkeypatch.setattr(decode, "simplejpeg", None)  # a node without simplejpeg
    final, got, said = rows_of(options)
    assert all(r["decoder"] == "torchvision" for r in final["results"] if r["backend"] == "wds")
    assert final["config"]["decoder"] == "torchvision" and "simplejpeg" in final["config"]["notices"][0]
    assert any(s.startswith("notice: simplejpeg is not installed") for s in said)


@pytest.mark.slow
def test_training_without_simplejpeg_says_so_in_its_rows(shards, tmp_path):
    hidden = tmp_path / "hidden" / "simplejpeg"
    hidden.mkdir(parents=True)
    (hidden / "__init__.py").write_text("raise ImportError(\"No module named 'simplejpeg'\")\n")
    proc = run_p2p("train", f"data.source={shards}", "data.backend=wds", f"run.out_dir={tmp_path}", "run.name=t",
                   *TINY, "train.max_steps=4", PYTHONPATH=f"{hidden.parent}:{ROOT}")
    assert "notice: simplejpeg is not installed" in proc.stderr + proc.stdout
    rows = [json.loads(line) for line in (tmp_path / "t" / "metrics.jsonl").read_text().splitlines()]
    assert all(r["jpeg_decoder"] == "torchvision" for r in rows)
    assert any("simplejpeg is not installed" in n for n in rows[0]["notices"])
    assert rows[0]["compiled"] == []
