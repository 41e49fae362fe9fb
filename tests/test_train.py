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
from p2p.train.loop import TrainingError, lr_factor, train

from conftest import ROOT, TINY, load_ckpt, p2p_env, run_p2p

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
    # colorize keeps the input's lightness: L of the output equals L of the input
    from skimage.color import rgb2lab
    a_in = rgb2lab(np.asarray(Image.open(src / "a.jpg").convert("RGB")))[..., 0]
    a_out = rgb2lab(np.asarray(Image.open(tmp_path / "out" / "a.png")))[..., 0]
    assert np.abs(a_in - a_out).mean() < 1.0

    run_p2p("eval", run / "checkpoints" / "last.pt", "--data", src, "--json", tmp_path / "eval.json")
    result = json.loads((tmp_path / "eval.json").read_text())
    assert result["metrics"]["count"] == result["count"] == 2
    assert {"psnr", "ssim", "l1", "colorfulness"} <= result["metrics"].keys()
    assert result["psnr"] == result["metrics"]["psnr"] and result["ssim"] <= 1.0


def test_resume_is_bit_identical(tmp_path):
    common = [f"run.out_dir={tmp_path}", "run.deterministic=true", *TINY, "train.max_steps=10",
              "data.epoch_size=24", "train.ckpt_every=0"]  # 6 batches per epoch: resume crosses an epoch
    run_p2p("train", *common, "run.name=straight")
    run_p2p("train", *common, "run.name=cut", "train.stop_after=5")
    assert load_ckpt(tmp_path / "cut" / "checkpoints" / "last.pt")["step"] == 5
    proc = run_p2p("train", *common, "run.name=cut")
    assert "resumed" in proc.stderr
    a = load_ckpt(tmp_path / "straight" / "checkpoints" / "last.pt")
    b = load_ckpt(tmp_path / "cut" / "checkpoints" / "last.pt")
    assert a["step"] == b["step"] == 10
    for net in ("generator", "discriminator"):
        assert a[net].keys() == b[net].keys()
        for k in a[net]:
            assert torch.equal(a[net][k], b[net][k]), f"{net}.{k} differs after resume"
    for opt in ("opt_g", "opt_d"):
        for pid, st in a[opt]["state"].items():
            assert torch.equal(st["exp_avg"], b[opt]["state"][pid]["exp_avg"])


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
        assert proc.wait(timeout=120) == 0
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

    real, calls = tasks.Colorize.convert, [0]

    def poisoned(self, images, gen):
        calls[0] += 1
        inp, target = real(self, images, gen)
        return inp, target * float("nan") if calls[0] >= 4 else target  # the 4th step goes bad

    monkeypatch.setattr(tasks.Colorize, "convert", poisoned)
    cfg = load_config(None, [f"run.out_dir={tmp_path}", "run.name=nan", *TINY, "train.max_steps=10",
                             "train.log_every=1", "train.ckpt_every=2"])
    with pytest.raises(TrainingError, match=r"non-finite loss \w+=nan in the steps up to 4"):
        train(cfg)
    ck = load_ckpt(tmp_path / "nan" / "checkpoints" / "last.pt")
    assert ck["step"] == 2 and all(torch.isfinite(v).all() for v in ck["generator"].values())


def test_nonfinite_through_the_cli_is_exit_1(tmp_path):
    proc = run_p2p("train", f"run.out_dir={tmp_path}", *TINY, "train.max_steps=3", "optim.lr=1e30",
                   "loss.gan_mode=lsgan", check=False)
    # a huge lr may or may not blow up in 3 steps; if it does, the run must say so in one line
    if proc.returncode:
        assert proc.returncode == 1 and "non-finite" in proc.stderr and "Traceback" not in proc.stderr


@pytest.mark.parametrize("precision", ["bf16", "fp16"])
def test_mixed_precision_on_cpu_runs(tmp_path, precision):
    run_p2p("train", f"run.out_dir={tmp_path}", "run.name=amp", *TINY, "train.max_steps=4",
            f"train.precision={precision}")
    last = rows(tmp_path / "amp")[-1]
    assert all(np.isfinite(last[k]) for k in ("G_GAN", "G_L1", "D_real", "D_fake"))


def test_gpu_only_modes_degrade_with_a_notice_on_cpu(tmp_path):
    proc = run_p2p("train", f"run.out_dir={tmp_path}", *TINY, "train.max_steps=2", "train.compile=true",
                   "train.cuda_graphs=true")
    assert "torch.compile is used on GPU only" in proc.stderr and "CUDA graphs need a GPU" in proc.stderr


def test_out_of_memory_gives_advice(tmp_path, monkeypatch):
    import p2p.train.loop as loop

    def oom(*a, **kw):
        raise torch.OutOfMemoryError("CUDA out of memory")

    monkeypatch.setattr(loop, "train_step", oom)
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
