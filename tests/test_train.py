"""The trainer end to end on CPU: run folder, predict, eval, resume, signals, faults."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import torch
from PIL import Image

from p2p.config import load_config
from p2p.models import load_generator
from p2p.cli.train import STOPPED_ON_SIGNAL
from p2p.train.loop import TrainingError, train
from p2p.train.schedule import lr_factor

from helpers.runs import ROOT, TINY, load_ckpt, p2p_env, run_p2p

pytestmark = pytest.mark.slow


def rows(run_dir):
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def test_train_then_predict_then_eval(tmp_path):
    run = tmp_path / "e2e"
    run_p2p("train", f"run.out_dir={tmp_path}", "run.name=e2e", *TINY, "train.max_steps=6",
            "train.sample_every=3", "train.eval_every=3", "train.ckpt_every=3", "train.keep_last=1")
    assert load_config(run / "config.yaml").train.max_steps == 6
    metrics = rows(run)
    assert [r["step"] for r in metrics] == [2, 4, 6]
    for r in metrics:
        assert r["world_size"] == 1 and r["img_per_s"] > 0 and r["global_batch"] == 4
        assert all(np.isfinite(r[k]) for k in ("G_GAN", "G_L1", "D_real", "D_fake"))
    ckpts = sorted(p.name for p in (run / "checkpoints").iterdir())
    assert ckpts == ["best.pt", "last.pt", "step-00000006.pt"]
    assert sorted(p.name for p in (run / "samples").iterdir()) == ["step-00000003.png", "step-00000006.png"]
    grid = Image.open(run / "samples" / "step-00000006.png")
    assert grid.size[0] > 3 * 32  # input | output | target
    assert list((run / "tb").glob("events.out.tfevents*"))
    assert [json.loads(x)["step"] for x in (run / "val.jsonl").read_text().splitlines()] == [3, 6]
    G = load_generator(run / "checkpoints" / "last.pt")
    assert (G.down[0].conv.in_channels, G.up[0].conv.out_channels) == (1, 2)

    # predict keeps each input's own size, for colour and grayscale inputs of odd sizes
    src = tmp_path / "in"
    src.mkdir()
    from p2p.data.folder import embedded_photo
    Image.fromarray(embedded_photo("coffee")[:70, :53]).save(src / "a.jpg")
    Image.fromarray(embedded_photo("chelsea")[:45, :90, 0]).save(src / "b.png")
    run_p2p("predict", run / "checkpoints" / "last.pt", src, "--out", tmp_path / "out")
    assert Image.open(tmp_path / "out" / "a.png").size == (53, 70)
    assert Image.open(tmp_path / "out" / "b.png").size == (90, 45)

    run_p2p("eval", run / "checkpoints" / "last.pt", "--data", src, "--json", tmp_path / "eval.json")
    result = json.loads((tmp_path / "eval.json").read_text())
    assert result["count"] == 2 and result["ssim"] <= 1.0
    # exactly the metric keys; without weights files FID, KID and LPIPS are not computed (null)
    assert list(result) == ["psnr", "ssim", "l1", "colorfulness", "delta_colorfulness", "fid", "kid", "lpips",
                            "count"]
    assert result["fid"] is None and result["kid"] is None and result["lpips"] is None
    meta = json.loads((tmp_path / "eval.meta.json").read_text())
    assert meta["checkpoint"] == str(run / "checkpoints" / "last.pt") and meta["task"] == "colorize"
    assert meta["geometry"] == {"mode": "scale", "size": 40} and meta["source"] == str(src)


def lightness_error(inp, out):
    """|L(out) - L(in)| over the pixels whose output colour is in gamut (clipping a predicted
    colour to sRGB moves its L; nothing else may), and the PSNR of L (range 100) over all."""
    from skimage.color import lab2rgb, rgb2lab

    l_in = rgb2lab(np.asarray(inp.convert("RGB")))[..., 0]
    lab_out = rgb2lab(np.asarray(out.convert("RGB")))
    err = np.abs(lab_out[..., 0] - l_in)
    # in gamut: the output's own Lab goes back to its RGB without clipping (to 8-bit rounding)
    back = lab2rgb(lab_out)
    in_gamut = (np.abs(back * 255 - np.asarray(out.convert("RGB"))) < 1.5).all(-1)
    psnr = 10 * np.log10(100.0 ** 2 / np.mean(err ** 2))
    return err[in_gamut], psnr


def test_colorize_predict_keeps_the_full_resolution_lightness(tmp_path):
    """A colorizer changes colour, never detail: L of the output is L of the input, pixel for
    pixel, on a large detailed photo (colour and grayscale), whatever size the model saw."""
    run_p2p("train", f"run.out_dir={tmp_path}", "run.name=l", *TINY, "train.max_steps=2")
    from p2p.data.folder import embedded_photo
    src = tmp_path / "in"
    src.mkdir()
    Image.fromarray(embedded_photo("astronaut")).save(src / "astronaut.png")  # 512 x 512, fine texture
    Image.fromarray(embedded_photo("motorcycle_left")).save(src / "moto.jpg", quality=95)  # 741 x 500
    Image.fromarray(embedded_photo("hubble_deep_field")).convert("L").save(src / "gray.png")  # a gray input
    run_p2p("predict", tmp_path / "l" / "checkpoints" / "last.pt", src, "--out", tmp_path / "out")
    for name in ("astronaut", "moto", "gray"):
        inp = Image.open(next(src.glob(f"{name}.*")))
        out = Image.open(tmp_path / "out" / f"{name}.png")
        assert out.size == inp.size
        err, psnr = lightness_error(inp, out)
        assert err.size > 0.9 * inp.size[0] * inp.size[1], f"{name}: most pixels must be in gamut"
        # 8-bit rounding of the output moves L by up to ~0.5; a model-size L would be off by many
        assert np.percentile(err, 99) < 0.8 and psnr > 45, (name, np.percentile(err, 99), psnr)


def test_rerun_with_more_steps_continues(tmp_path):
    common = [f"run.out_dir={tmp_path}", "run.name=grow", *TINY, "optim.lr_policy=constant"]
    run_p2p("train", *common, "train.max_steps=4")
    run_p2p("train", *common, "train.max_steps=6")
    assert [r["step"] for r in rows(tmp_path / "grow")] == [2, 4, 6]
    done = run_p2p("train", *common, "train.max_steps=6")  # already finished: nothing to do
    assert "already reached step 6" in done.stderr


def _start(tmp_path, name, *extra):
    log = open(tmp_path / f"{name}.log", "w")
    proc = subprocess.Popen([sys.executable, "-m", "p2p", "train", f"run.out_dir={tmp_path}", f"run.name={name}",
                             *TINY, "train.max_steps=100000", "train.log_every=1", *extra],
                            stdout=log, stderr=subprocess.STDOUT, env=p2p_env(), cwd=ROOT)
    return proc


def _wait_for(predicate, timeout=120, what="condition"):
    deadline = time.time() + timeout
    while time.time() < deadline:
        if predicate():
            return
        time.sleep(0.2)
    raise AssertionError(f"timed out waiting for {what}")


def _metric_steps(run_dir):
    path = run_dir / "metrics.jsonl"
    return [r["step"] for r in rows(run_dir)] if path.exists() else []


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGUSR2])
def test_signal_checkpoints_and_exits_cleanly(tmp_path, sig):
    proc = _start(tmp_path, "sig")
    try:
        _wait_for(lambda: len(_metric_steps(tmp_path / "sig")) >= 3, what="three steps")
        proc.send_signal(sig)
        assert proc.wait(timeout=120) == STOPPED_ON_SIGNAL  # saved; run the same command to resume
    finally:
        proc.kill()
    ck = load_ckpt(tmp_path / "sig" / "checkpoints" / "last.pt")
    assert ck["step"] == _metric_steps(tmp_path / "sig")[-1] >= 3
    assert f"received {sig.name}" in (tmp_path / "sig.log").read_text()
    # and the same command resumes from there
    proc = run_p2p("train", f"run.out_dir={tmp_path}", "run.name=sig", *TINY, f"train.max_steps={ck['step'] + 2}")
    assert f"step {ck['step']} -> {ck['step'] + 2}" in proc.stderr.replace("\n", " ")


def test_kill_9_never_leaves_an_unloadable_checkpoint(tmp_path):
    last = tmp_path / "k9" / "checkpoints" / "last.pt"
    seen = []
    rng = np.random.default_rng(0)
    for attempt in range(4):
        proc = _start(tmp_path, "k9", "train.ckpt_every=1", "train.keep_last=2")
        try:
            _wait_for(lambda: last.exists() and (not seen or load_ckpt(last)["step"] > seen[-1]),
                      what="a new checkpoint")
            time.sleep(float(rng.uniform(0.0, 0.6)))  # land anywhere, including mid-write
            proc.kill()
            proc.wait(timeout=30)
        finally:
            proc.kill()
        ck = load_ckpt(last)  # must always load
        assert torch.isfinite(ck["generator"]["down.0.conv.weight"]).all()
        seen.append(ck["step"])
        assert not list((tmp_path / "k9" / "checkpoints").glob("step-*.pt"))[2:]
    assert seen == sorted(seen) and seen[-1] > seen[0]


def test_nonfinite_loss_stops_and_keeps_the_last_good_checkpoint(tmp_path, monkeypatch):
    import p2p.tasks as tasks

    real, calls = tasks.Colorize.prepare, [0]

    def poisoned(self, *args, **kwargs):  # prepare() runs once per step, in step order
        calls[0] += 1
        inp, target = real(self, *args, **kwargs)
        return inp, target * float("nan") if calls[0] >= 4 else target  # the 4th step goes bad

    monkeypatch.setattr(tasks.Colorize, "prepare", poisoned)
    cfg = load_config(None, [f"run.out_dir={tmp_path}", "run.name=nan", *TINY, "train.max_steps=10",
                             "train.log_every=1", "train.ckpt_every=2"])
    with pytest.raises(TrainingError, match=r"non-finite loss \w+=nan in the steps up to 4"):
        train(cfg)
    ck = load_ckpt(tmp_path / "nan" / "checkpoints" / "last.pt")
    assert ck["step"] == 2 and all(torch.isfinite(v).all() for v in ck["generator"].values())


def test_nonfinite_through_the_cli_is_exit_1(tmp_path):
    # A run that diverged: its checkpoint's discriminator weights are huge but finite (so the
    # resume takes them), and the first step's D outputs overflow. Every config key is bounded
    # (issue 22), so a config alone can no longer ask for an lr of 1e30 to make this happen.
    from p2p.checkpoint_file import sealed

    common = [f"run.out_dir={tmp_path}", "run.name=diverged", *TINY, "loss.gan_mode=lsgan", "run.deterministic=true"]
    run_p2p("train", *common, "train.max_steps=2")
    last = tmp_path / "diverged" / "checkpoints" / "last.pt"
    ck = load_ckpt(last)
    ck["discriminator"] = {k: v * 1e30 if v.is_floating_point() else v for k, v in ck["discriminator"].items()}
    torch.save(sealed(ck), last)
    proc = run_p2p("train", *common, "train.max_steps=6", check=False)
    assert proc.returncode == 1, proc.stderr[-2000:]
    assert "non-finite loss" in proc.stderr and "Traceback" not in proc.stderr


@pytest.mark.parametrize("precision, dtype", [("fp32", torch.float32), ("bf16", torch.bfloat16),
                                              ("fp16", torch.float16)])
def test_mixed_precision_on_cpu_runs_in_that_dtype(tmp_path, monkeypatch, precision, dtype):
    import p2p.train.nets as nets

    seen = set()
    real = nets.build_generator

    def watched(arch):  # record the dtype the convolutions compute in, during training steps
        net = real(arch)
        for m in net.modules():
            if isinstance(m, torch.nn.Conv2d):
                m.register_forward_hook(lambda mod, a, out: seen.add(out.dtype) if mod.training else None)
        return net

    monkeypatch.setattr(nets, "build_generator", watched)
    cfg = load_config(None, [f"run.out_dir={tmp_path}", "run.name=amp", *TINY, "train.max_steps=4",
                             f"train.precision={precision}"])
    train(cfg)
    assert seen == {dtype}
    last = rows(tmp_path / "amp")[-1]
    assert all(np.isfinite(last[k]) for k in ("G_GAN", "G_L1", "D_real", "D_fake"))
    # fp16 trains with one dynamic loss scale per network, and its rows say so
    assert ("loss_scale_g" in last and "loss_scale_d" in last) == (precision == "fp16")


def test_gpu_only_modes_degrade_with_a_notice_on_cpu(tmp_path):
    proc = run_p2p("train", f"run.out_dir={tmp_path}", *TINY, "train.max_steps=2", "train.compile=true",
                   "train.cuda_graphs=true")
    assert "torch.compile is used on GPU only" in proc.stderr and "CUDA graphs need a GPU" in proc.stderr


def test_out_of_memory_gives_advice(tmp_path, monkeypatch):
    import p2p.train.run as run

    def oom(*a, **kw):
        raise torch.OutOfMemoryError("CUDA out of memory")

    monkeypatch.setattr(run, "train_step", oom)
    cfg = load_config(None, [f"run.out_dir={tmp_path}", *TINY, "train.max_steps=2"])
    with pytest.raises(TrainingError, match="lower train.batch_size"):
        train(cfg)


def test_other_tasks_train(tmp_path):
    for task in ("gray2rgb", "restore"):
        run_p2p("train", f"run.out_dir={tmp_path}", f"run.name={task}", f"task.name={task}", *TINY,
                "train.max_steps=2", "train.eval_every=2")
        assert rows(tmp_path / task)[-1]["step"] == 2


def test_lr_policies():
    cfg = load_config(None, ["train.max_steps=100"])
    assert lr_factor(0, cfg) == 1.0 and lr_factor(50, cfg) == 1.0 and 0 < lr_factor(99, cfg) < 0.05
    cfg = load_config(None, ["train.max_steps=100", "optim.lr_policy=step", "optim.step_size=30", "optim.gamma=0.5"])
    assert lr_factor(29, cfg) == 1.0 and lr_factor(30, cfg) == 0.5 and lr_factor(61, cfg) == 0.25
    cfg = load_config(None, ["train.max_steps=100", "optim.lr_policy=cosine"])
    assert lr_factor(0, cfg) == 1.0 and abs(lr_factor(50, cfg) - 0.5) < 1e-9 and lr_factor(100, cfg) < 1e-9


def test_different_model_in_the_run_folder_is_refused(tmp_path):
    run_p2p("train", f"run.out_dir={tmp_path}", "run.name=x", *TINY, "train.max_steps=2")
    proc = run_p2p("train", f"run.out_dir={tmp_path}", "run.name=x", *TINY, "model.ngf=16", "train.max_steps=4",
                   check=False)
    assert proc.returncode == 2 and "different model" in proc.stderr


def test_missing_data_source_is_exit_2(tmp_path):
    proc = run_p2p("train", f"run.out_dir={tmp_path}", *TINY, f"data.source={tmp_path / 'nope'}", check=False)
    assert proc.returncode == 2 and "no such folder" in proc.stderr and "Traceback" not in proc.stderr


def test_best_pt_follows_train_best_metric(tmp_path):
    """train.best_metric=delta_colorfulness (lower is better) picks its own best step, not PSNR's;
    the checkpoint says by what and how good."""
    run = tmp_path / "cf"
    run_p2p("train", f"run.out_dir={tmp_path}", "run.name=cf", *TINY, "train.max_steps=10", "train.eval_every=2",
            "optim.lr=0.01", "optim.lr_policy=constant", "run.deterministic=true",
            "train.best_metric=delta_colorfulness")
    val = [json.loads(x) for x in (run / "val.jsonl").read_text().splitlines()]
    best = min(val, key=lambda r: r["delta_colorfulness"])
    by_psnr = max(val, key=lambda r: r["psnr"])["step"]
    assert best["step"] != by_psnr, f"the setup no longer tells the two metrics apart: {val}"
    saved = load_ckpt(run / "checkpoints" / "best.pt")
    assert saved["step"] == best["step"] and saved["best_metric"] == "delta_colorfulness"
    assert saved["best"] == pytest.approx(best["delta_colorfulness"], rel=1e-6)


def test_changing_train_best_metric_on_resume_starts_best_pt_over(tmp_path):
    common = [f"run.out_dir={tmp_path}", "run.name=ch", *TINY, "train.eval_every=2", "optim.lr=0.01",
              "optim.lr_policy=constant"]
    run_p2p("train", *common, "train.max_steps=4")
    assert load_ckpt(tmp_path / "ch" / "checkpoints" / "best.pt")["best_metric"] == "psnr"
    proc = run_p2p("train", *common, "train.max_steps=6", "train.best_metric=l1")
    assert "best.pt was chosen by psnr; from now on by train.best_metric=l1" in proc.stdout + proc.stderr
    saved = load_ckpt(tmp_path / "ch" / "checkpoints" / "best.pt")
    # the first validation after the change is the best so far, whatever PSNR said before
    assert (saved["step"], saved["best_metric"]) == (6, "l1")


def test_decode_threads_asked_of_the_folder_loader_are_a_notice(tmp_path):
    proc = run_p2p("train", f"run.out_dir={tmp_path}", *TINY, "train.max_steps=1", "data.worker_kind=thread")
    assert ("notice: data.worker_kind=thread applies to the wds and nvjpeg backends; the folder loader loads in "
            "worker processes") in proc.stdout + proc.stderr


def test_best_metric_without_its_weights_is_exit_2(tmp_path):
    proc = run_p2p("train", f"run.out_dir={tmp_path}", *TINY, "train.eval_every=2", "train.best_metric=lpips",
                   check=False, P2P_LPIPS_WEIGHTS="")
    assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr
    assert "train.best_metric=lpips needs LPIPS weights" in proc.stderr and len(proc.stderr.splitlines()) == 1


def test_eval_numbers_agree_with_skimage_and_best_pt_is_the_best_step(tmp_path):
    from skimage.metrics import peak_signal_noise_ratio, structural_similarity

    run = tmp_path / "ev"
    # A high lr makes validation PSNR go up and down (deterministic on CPU), so the best step is
    # neither the first nor the last one and best.pt has something to get wrong.
    run_p2p("train", f"run.out_dir={tmp_path}", "run.name=ev", *TINY, "train.max_steps=10", "train.eval_every=2",
            "optim.lr=0.01", "optim.lr_policy=constant", "run.deterministic=true")
    val = [json.loads(x) for x in (run / "val.jsonl").read_text().splitlines()]
    best_step = max(val, key=lambda r: r["psnr"])["step"]
    assert best_step not in (val[0]["step"], val[-1]["step"]), f"the setup no longer tells best from last: {val}"
    assert load_ckpt(run / "checkpoints" / "best.pt")["step"] == best_step

    # `p2p eval` scores what `p2p predict` returns: recompute every number with skimage from
    # predict's PNGs and the originals (three photos of different shapes).
    src = tmp_path / "in"
    src.mkdir()
    from p2p.data.folder import embedded_photo
    crops = [embedded_photo("astronaut")[40:160, 60:240], embedded_photo("coffee")[::3, ::3],
             embedded_photo("motorcycle_right")[100:400:2, 300:500:2]]
    for i, c in enumerate(crops):
        Image.fromarray(c).save(src / f"{i}.png")
    ckpt = run / "checkpoints" / "best.pt"
    run_p2p("eval", ckpt, "--data", src, "--json", tmp_path / "eval.json")
    got = json.loads((tmp_path / "eval.json").read_text())
    run_p2p("predict", ckpt, src, "--out", tmp_path / "out")
    ref = {"psnr": [], "ssim": [], "colorfulness": []}
    for i, c in enumerate(crops):
        target = c.astype(np.float64) / 255
        out = np.asarray(Image.open(tmp_path / "out" / f"{i}.png")).astype(np.float64) / 255
        ref["psnr"].append(peak_signal_noise_ratio(target, out, data_range=1.0))
        ref["ssim"].append(structural_similarity(target, out, data_range=1.0, channel_axis=-1))
        rg = 255 * (out[..., 0] - out[..., 1])
        yb = 255 * (0.5 * (out[..., 0] + out[..., 1]) - out[..., 2])
        ref["colorfulness"].append(np.hypot(rg.std(), yb.std()) + 0.3 * np.hypot(rg.mean(), yb.mean()))
    assert got["count"] == 3
    # eval scores float outputs, predict writes 8-bit PNGs: the rounding is the only difference
    tol = {"psnr": 0.1, "ssim": 2e-3, "colorfulness": 0.3}
    for k, values in ref.items():
        assert abs(got[k] - np.mean(values)) < tol[k], (k, got[k], np.mean(values))
