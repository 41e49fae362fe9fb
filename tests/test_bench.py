"""`p2p bench step|ranks|profile|all` in toy sizes: well-formed JSON, rows with their baseline and
ratio, skipped rows kept with a reason, report.md with tables, PNG plots. No timing thresholds:
the numbers on a shared 2-core machine say nothing."""

from __future__ import annotations

import json
import math
import sys
import types

import pytest
import torch

from helpers.requirements import require_c_compiler
from helpers.runs import TINY, run_p2p
from p2p.errors import UsageError

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
# toy networks and images, passed to the benchmarks as their own sizes
TOY_MODEL = {"ngf": 8, "ndf": 8, "num_downs": 5}
TOY_STEP = {**TOY_MODEL, "image_size": 32, "batch_size": 2, "steps": 1, "warmup": 1, "repeats": 1}
TOY_FLAGS = ["--ngf", 8, "--ndf", 8, "--num-downs", 5, "--image-size", 32]


def check_rows(rows: list[dict], baseline: str) -> None:
    assert rows and any(r["name"] == baseline for r in rows)
    for r in rows:
        assert r["baseline"] == baseline
        assert "name" in r and "img_per_s" in r and "ratio" in r
        if r.get("skipped"):
            assert r["img_per_s"] is None and r["ratio"] is None and isinstance(r["skipped"], str)
        else:
            assert r["img_per_s"] > 0 and math.isfinite(r["ratio"]) and r["ratio"] > 0
    assert next(r for r in rows if r["name"] == baseline)["ratio"] == pytest.approx(1.0)


def check_environment(env: dict) -> None:
    for key in ("date", "cpu", "cpu_cores", "torch", "python", "cuda_build", "cuda_available", "gpu", "dali"):
        assert key in env


# ------------------------------------------------------------------------------ step


def test_step_rows_and_skips(tmp_path):
    from p2p.bench.step import MODES, StepOptions, run_step

    payload = run_step(StepOptions(device="cpu", **TOY_STEP), progress=lambda s: None)
    check_environment(payload["environment"])
    rows = payload["results"]
    check_rows(rows, "baseline")
    assert [r["name"] for r in rows] == list(MODES)  # nothing silently dropped
    by = {r["name"]: r for r in rows}
    for gpu_only in ("fp16", "cuda_graphs", "compile"):
        assert by[gpu_only]["skipped"]
    for name in ("baseline", "channels_last", "fused_adam", "no_sync", "bf16", "all", "p2p_default"):
        assert by[name]["img_per_s"] > 0 and by[name]["step_ms"] > 0 and "mfu" not in by[name]
    assert by["baseline"]["adam"] == "for-loop" and by["baseline"]["sync_every_step"]
    assert by["fused_adam"]["adam"] in ("fused", "foreach")
    assert by["all"]["channels_last"] and by["all"]["precision"] == "bf16" and not by["all"]["sync_every_step"]
    c = payload["config"]
    assert c["model"] == "custom" and (c["ngf"], c["num_downs"], c["ndf"]) == (8, 5, 8)
    assert c["flops_per_image"] > 0 and c["peak_flops"] is None
    assert any("no GPU" in n for n in payload["notes"])


def test_step_prices_the_model_choices_with_their_own_flops():
    from p2p.bench.step import MODEL_CHOICES, StepOptions, run_step
    from p2p.bench.workload import model_sizes, workload_config
    from p2p.config import with_values
    from p2p.tasks import build_task
    from p2p.train.flops import step_flops_per_image
    from p2p.train.nets import architectures

    step = {**TOY_STEP, "image_size": 64}
    payload = run_step(StepOptions(device="cpu", **step, modes=("resnet_9blocks", "multiscale_feat")),
                       progress=lambda s: None)
    rows = payload["results"]
    check_rows(rows, "baseline")
    by = {r["name"]: r for r in rows}
    assert list(by) == ["baseline", "p2p_default", "resnet_9blocks", "multiscale_feat"]  # the default is added
    cfg = workload_config(model_sizes("small", 8, 8, 5), 64, 2)
    task = build_task(cfg.task)
    for name, row in by.items():
        c = with_values(cfg, MODEL_CHOICES.get(name, {}))
        assert row["flops_per_image"] == step_flops_per_image(*architectures(c, task), 64, c.loss), name
    assert by["resnet_9blocks"]["model_changes"] == {"model.generator": "resnet", "model.n_blocks": 9}
    # a second scale and the extra D pass of feature matching cost FLOPs on top of the default
    assert by["multiscale_feat"]["flops_per_image"] > by["p2p_default"]["flops_per_image"]
    assert by["resnet_9blocks"]["flops_per_image"] != by["p2p_default"]["flops_per_image"]
    for name in MODEL_CHOICES:
        assert by[name]["vs_p2p_default"] == pytest.approx(by[name]["img_per_s"] / by["p2p_default"]["img_per_s"])
        assert by[name]["adam"] == by["p2p_default"]["adam"]  # the default's setup, other networks
    # a choice that does not fit the image size is kept, skipped, with the reason
    small = run_step(StepOptions(device="cpu", **TOY_STEP, modes=("multiscale_feat",)), progress=lambda s: None)
    row = next(r for r in small["results"] if r["name"] == "multiscale_feat")
    assert "does not fit this size" in row["skipped"] and row["img_per_s"] is None


def test_step_command_writes_json(tmp_path):
    out = tmp_path / "step.json"
    proc = run_p2p("bench", "step", *TOY_FLAGS, "--batch-size", 2, "--steps", 1, "--repeats", 1,
                   "--modes", "no_sync,cuda_graphs", "--json", out)
    assert "no GPU" in proc.stdout
    payload = json.loads(out.read_text())
    assert set(payload) >= {"environment", "config", "results"}
    rows = payload["results"]
    assert [r["name"] for r in rows] == ["baseline", "no_sync", "cuda_graphs"]  # baseline added
    check_rows(rows, "baseline")


def test_step_options_are_checked():
    from p2p.bench.step import StepOptions, run_step

    with pytest.raises(UsageError, match="unknown mode"):
        run_step(StepOptions(device="cpu", **TOY_STEP, modes=("baseline", "warp_drive")))
    with pytest.raises(UsageError, match="divisible"):
        run_step(StepOptions(device="cpu", **{**TOY_STEP, "image_size": 40}))


# ------------------------------------------------------------------------------ profile


def test_profile_writes_a_chrome_trace(tmp_path):
    require_c_compiler()
    from p2p.bench.profile import run_profile

    payload = run_profile(overrides=TINY + [f"run.out_dir={tmp_path}"], steps=2, warmup=1, out_dir=tmp_path,
                          progress=lambda s: None)
    s = payload["summary"]
    trace = json.loads((tmp_path / "trace.json").read_text())
    assert trace["traceEvents"]
    names = {e.get("name") for e in trace["traceEvents"]}
    assert {"p2p.data_wait", "p2p.prepare", "p2p.train_step"} <= names
    assert 0.0 <= s["data_wait_fraction"] <= 1.0 and s["img_per_s"] > 0
    assert s["bottleneck"].startswith(("data-bound", "compute-bound"))
    assert s["top_ops_cpu"] and all(not o["name"].startswith("p2p.") for o in s["top_ops_cpu"])
    assert s["device_step"] == "c-kernel" and 0.0 < s["device_step_share"] < 1.0 and s["device_step_ms"] > 0
    assert s["device_step_share"] + s["data_wait_fraction"] <= 1.0
    (me,) = s["per_rank"]  # one process: its own step time, data wait and CPU wait
    assert me["rank"] == 0 and me["step_s"] > 0 and me["data_wait_s"] >= 0 and me["cpu_wait_s"] >= 0
    # the backend that ran (auto resolves to folder for the embedded photos), and what was asked
    assert (payload["config"]["backend"], payload["config"]["backend_configured"]) == ("folder", "auto")
    check_environment(payload["environment"])


def test_verdict_names_the_bottleneck():
    from p2p.bench.profile import verdict

    ops = [{"name": "aten::convolution_backward", "self_cpu_share": 0.38}]
    assert verdict(0.62, ops, "cpu") == "data-bound: 62% of wall time waiting for batches"
    assert verdict(0.05, ops, "cpu").startswith("compute-bound: top op aten::convolution_backward 38%")


# ------------------------------------------------------------------------------ ranks


@pytest.mark.slow
def test_scaling_launches_real_processes():
    from p2p.bench.ranks import ScalingOptions, run_scaling

    payload = run_scaling(ScalingOptions(procs=(1, 2), device="cpu", **TOY_STEP), progress=lambda s: None)
    rows = payload["results"]
    check_rows(rows, "1 process")
    assert [r["procs"] for r in rows] == [1, 2]
    assert rows[1]["world_size"] == 2 and len(rows[1]["rank_img_per_s"]) == 2
    assert rows[0]["efficiency"] == pytest.approx(1.0) and rows[1]["efficiency"] > 0
    assert rows[1]["global_batch"] == 4 and all(r["threads_per_process"] >= 1 for r in rows)
    assert payload["config"]["backend"] == "gloo"


# ------------------------------------------------------------------------------ all + report


@pytest.mark.slow
def test_all_tiny_writes_results_report_and_plots(tmp_path):
    out = tmp_path / "bench"
    run_p2p("bench", "all", "--quick", "--out", out, *TOY_FLAGS, "--batch-size", 4, "--photos", 16,
            "--photo-scale", 0.25, timeout=300)
    results = json.loads((out / "results.json").read_text())
    check_environment(results["environment"])
    assert results["command"].startswith("p2p bench all")
    for name, baseline in (("lab", "skimage.rgb2lab per image (baseline)"), ("step", "baseline"),
                           ("ranks", "1 process")):
        assert results[name]["command"].startswith(f"p2p bench {name}")
        check_rows(results[name]["rows"], baseline)
    data = results["data"]
    assert "error" not in data, data.get("error")
    if not data.get("skipped"):  # p2p.bench.data present: rows against its own baseline
        rows = data["rows"]
        check_rows(rows, rows[0]["baseline"])
        assert (out / "work" / "shards" / "manifest.json").exists()
    prof = results["profile"]["summary"]
    assert prof["bottleneck"] and (out / "profile" / "trace.json").exists()

    report = (out / "report.md").read_text()
    assert "| mode |" in report and "|---|" in report and "## Weak scaling" in report
    assert "p2p bench step" in report and "![step](step.png)" in report
    for png in ("step.png", "lab.png", "ranks.png", "profile.png"):
        assert (out / png).read_bytes()[:8] == PNG_MAGIC, png


def test_report_renders_skips_and_errors(tmp_path):
    from p2p.bench.report import write_report

    rows = [{"name": "baseline", "img_per_s": 10.0, "baseline": "baseline", "ratio": 1.0, "precision": "fp32"},
            {"name": "bf16", "img_per_s": 25.0, "baseline": "baseline", "ratio": 2.5, "precision": "bf16",
             "mfu": 0.4},
            {"name": "cuda_graphs", "img_per_s": None, "baseline": "baseline", "ratio": None,
             "skipped": "CUDA graphs need a GPU"}]
    results = {"command": "p2p bench all", "environment": {"date": "today", "cpu": "x", "cpu_cores": 2},
               "data": {"skipped": "p2p.bench.data is not in this build"},
               "lab": {"error": "RuntimeError: boom"},
               "step": {"command": "p2p bench step", "config": {"model": "tiny"}, "rows": rows},
               "ranks": {"command": "p2p bench ranks", "rows": [
                   {"name": "1 process", "procs": 1, "img_per_s": 5.0, "img_per_s_per_process": 5.0,
                    "efficiency": 1.0, "ratio": 1.0, "baseline": "1 process"},
                   {"name": "2 processes", "procs": 2, "img_per_s": 9.0, "img_per_s_per_process": 4.5,
                    "efficiency": 0.9, "ratio": 1.8, "baseline": "1 process"}]}}
    report = write_report(results, tmp_path).read_text()
    assert "Skipped: p2p.bench.data is not in this build" in report
    assert "**Failed:** `RuntimeError: boom`" in report
    assert "| bf16 | bf16 | 25.00 |" in report and "40.0%" in report
    assert "skipped: CUDA graphs need a GPU" in report
    assert "| 2 processes | 9.00 | 4.50 | 90.0% | 1.80x |" in report
    assert (tmp_path / "step.png").read_bytes()[:8] == PNG_MAGIC
    assert (tmp_path / "ranks.png").read_bytes()[:8] == PNG_MAGIC


def test_all_records_a_missing_data_benchmark(tmp_path, monkeypatch):
    from p2p.bench import all_bench

    options = all_bench.AllOptions(quick=True, device="cpu", **TOY_MODEL, image_size=32)
    monkeypatch.setitem(sys.modules, "p2p.bench.data", None)  # import fails: module missing
    assert "not in this build" in all_bench.data_section(options, tmp_path)["skipped"]
    monkeypatch.setitem(sys.modules, "p2p.bench.data", types.ModuleType("p2p.bench.data"))  # no entry yet
    assert "no run_data(" in all_bench.data_section(options, tmp_path)["skipped"]


def test_photo_folder_is_coco_like_and_deterministic(tmp_path):
    from PIL import Image

    from p2p.bench.photos import make_photo_folder

    a = make_photo_folder(tmp_path / "a", count=6, scale=0.25)
    b = make_photo_folder(tmp_path / "b", count=6, scale=0.25)
    assert [p.name for p in a] == [p.name for p in b] and all(p.suffix == ".jpg" for p in a)
    assert all(pa.read_bytes() == pb.read_bytes() for pa, pb in zip(a, b))
    sizes = {Image.open(p).size for p in a}
    assert len(sizes) > 1 and all(min(s) >= 80 for s in sizes)


def test_bench_suites_are_registered():
    import argparse

    from p2p.cli.bench import add_arguments

    parser = argparse.ArgumentParser()
    add_arguments(parser)
    for suite in ("step", "ranks", "profile", "all"):
        args = parser.parse_args([suite])
        assert args.suite == suite and callable(args.run_suite)
    assert torch.get_num_threads() >= 1


def test_step_flops_count_each_new_term():
    from p2p.config import LossConfig
    from p2p.models import DiscriminatorArch, GeneratorArch, build_discriminator, build_generator
    from p2p.perceptual import vgg19_features
    from p2p.train.flops import forward_flops, step_flops_per_image

    g, d1, d2 = GeneratorArch(1, 2, 5, 8), DiscriminatorArch(3, 8, 3), DiscriminatorArch(3, 8, 3, "batch", 2)
    with torch.device("meta"):
        G, D, vgg = build_generator(g), build_discriminator(d1), vgg19_features()
    gf, df = forward_flops(G, (1, 1, 64, 64)), forward_flops(D, (1, 3, 64, 64))
    half = forward_flops(D, (1, 3, 32, 32))  # the second scale sees the pair pooled to half size
    assert step_flops_per_image(g, d1, 64) == 3 * gf + 8 * df
    assert step_flops_per_image(g, d2, 64) == 3 * gf + 8 * (df + half)
    assert step_flops_per_image(g, d2, 64, LossConfig(lambda_feat=10)) == 3 * gf + 9 * (df + half)
    vf = forward_flops(vgg, (1, 3, 64, 64))
    assert step_flops_per_image(g, d1, 64, LossConfig(lambda_vgg=1, vgg_weights="v")) == 3 * gf + 8 * df + 3 * vf
