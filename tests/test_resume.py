"""Exact resume: a run that is cut (train.stop_after, a signal, a second process group) and
resumed ends with the same weights, optimizer state and logged losses as a run that never
stopped. Dropout is on (model.num_downs=6 has dropout levels) and the loader runs in a worker
process, so every RNG a step draws from (dropout masks, crops, flips, the loader's seeds) has
to be saved and restored for these to pass."""

from __future__ import annotations

import signal
import subprocess
import sys

import pytest
import torch

from helpers import image_folders as F
from helpers.runs import ROOT, load_ckpt, p2p_env, run_p2p, torchrun, wait_for
from helpers.same_run import assert_same_run, rows
from p2p.cli.train import STOPPED_ON_SIGNAL

pytestmark = pytest.mark.slow

# Small, but with what makes resume hard: dropout (levels 4.. of a 6-level U-Net), batch norm
# (running stats in the state dict), a loader worker, random crops and flips, and an epoch of 6
# batches so every cut below crosses an epoch boundary after resuming.
EXACT = [
    "run.deterministic=true", "data.image_size=64", "data.load_size=72", "model.num_downs=6", "model.ngf=8",
    "model.ndf=8", "model.dropout=true", "train.batch_size=4", "data.epoch_size=24", "data.val_images=4",
    "data.workers=1", "train.log_every=1", "train.sample_every=0", "train.eval_every=0", "train.ckpt_every=0",
]
def test_cut_and_resumed_run_equals_the_uninterrupted_one(tmp_path):
    common = [f"run.out_dir={tmp_path}", *EXACT, "train.max_steps=10"]
    run_p2p("train", *common, "run.name=straight")
    stopped = run_p2p("train", *common, "run.name=cut", "train.stop_after=5", check=False)
    assert stopped.returncode == STOPPED_ON_SIGNAL, stopped.stderr[-2000:]  # saved before max_steps
    assert load_ckpt(tmp_path / "cut" / "checkpoints" / "last.pt")["step"] == 5
    proc = run_p2p("train", *common, "run.name=cut")
    assert "resumed" in proc.stderr
    assert_same_run(tmp_path / "straight", tmp_path / "cut")


def test_two_ranks_cut_and_resumed_equal_two_ranks_uninterrupted(tmp_path):
    common = ["-m", "p2p", "train", f"run.out_dir={tmp_path}", *EXACT, "train.max_steps=8", "data.epoch_size=32"]
    torchrun(*common, "run.name=straight")
    stopped = torchrun(*common, "run.name=cut", "train.stop_after=3", check=False)
    assert stopped.returncode != 0 and f"exitcode  : {STOPPED_ON_SIGNAL}" in stopped.stderr, stopped.stderr[-3000:]
    ck = load_ckpt(tmp_path / "cut" / "checkpoints" / "last.pt")
    assert ck["step"] == 3 and ck["world_size"] == 2 and len(ck["rng"]) == 2
    torchrun(*common, "run.name=cut")
    assert_same_run(tmp_path / "straight", tmp_path / "cut")
    assert all(r["world_size"] == 2 for r in rows(tmp_path / "cut"))


def test_two_ranks_with_ema_multiscale_d_and_feature_matching_resume_exactly_on_every_rank(tmp_path):
    """Issue 11's terms under DDP and resume. Each rank keeps its own EMA, whose batch-norm
    statistics are its own G's and differ between ranks, while the checkpoint holds one EMA
    (their mean): so every rank has to rebuild its EMA on resume, parameters from the checkpoint
    and statistics from its own restored G. Compared rank by rank with an uninterrupted run."""
    common = [f"run.out_dir={tmp_path}", *EXACT, "train.max_steps=8", "data.epoch_size=32",
              "train.ema_decay=0.8", "model.num_d=2", "loss.lambda_feat=10"]
    for leg, extra in (("straight", []), ("cut", ["train.stop_after=3"]), ("resumed", [])):
        (tmp_path / leg).mkdir()
        run = "straight" if leg == "straight" else "cut"
        torchrun("tests/helpers/train_worker.py", tmp_path / leg, *common, f"run.name={run}", *extra)
    assert load_ckpt(tmp_path / "cut" / "rank0.pt")["step"] == 3
    assert_same_run(tmp_path / "straight", tmp_path / "cut")  # the saved EMA included
    stats = ("running_mean", "running_var")
    for rank in (0, 1):
        a, b = (load_ckpt(tmp_path / leg / f"rank{rank}.pt") for leg in ("straight", "resumed"))
        differ = [k for k in a["G_ema"] if not torch.equal(a["G_ema"][k], b["G_ema"][k])]
        assert not differ, f"rank {rank}: {len(differ)} EMA tensors differ after resume, e.g. {differ[:3]}"
    r0, r1 = (load_ckpt(tmp_path / "resumed" / f"rank{r}.pt")["G_ema"] for r in (0, 1))
    assert any(not torch.equal(r0[k], r1[k]) for k in r0 if k.endswith(stats)), "ranks' statistics should differ"
    assert all(torch.equal(r0[k], r1[k]) for k in r0 if not k.endswith(stats + ("num_batches_tracked",)))


def test_signalled_and_resumed_run_equals_the_uninterrupted_one(tmp_path):
    common = [f"run.out_dir={tmp_path}", *EXACT, "train.max_steps=40"]
    run_p2p("train", *common, "run.name=straight")
    log = open(tmp_path / "sig.log", "w")
    proc = subprocess.Popen([sys.executable, "-m", "p2p", "train", *common, "run.name=sig"], stdout=log,
                            stderr=subprocess.STDOUT, env=p2p_env(), cwd=ROOT)
    try:
        run_dir = tmp_path / "sig"
        wait_for(lambda: (run_dir / "metrics.jsonl").exists() and len(rows(run_dir)) >= 3, what="three steps")
        # Frozen between two steps, the signal cannot lose the race against the end of the run:
        # it is delivered when the process continues, well before step 40.
        proc.send_signal(signal.SIGSTOP)
        seen = rows(run_dir)[-1]["step"]
        assert seen < 40
        proc.send_signal(signal.SIGTERM)
        proc.send_signal(signal.SIGCONT)
        assert proc.wait(timeout=120) == STOPPED_ON_SIGNAL
    finally:
        proc.kill()
    stopped = load_ckpt(run_dir / "checkpoints" / "last.pt")["step"]
    assert seen <= stopped < 40
    run_p2p("train", *common, "run.name=sig")
    assert_same_run(tmp_path / "straight", run_dir)


@pytest.fixture(scope="module")
def shards(tmp_path_factory):
    from p2p.data.shards import make_shards

    root = tmp_path_factory.mktemp("resume_shards")
    F.make_coco_like(root / "src", n=40, seed=3, scale=0.25)
    out = root / "shards"
    make_shards(root / "src", out, size=72, val_fraction=0.1, shard_size_mb=0.05, workers=2)
    return out


@pytest.mark.parametrize("backend", ["wds", "dali"])
def test_resume_mid_epoch_from_shards(tmp_path, shards, backend):
    if backend == "dali":
        from helpers.requirements import require_dali

        require_dali()
    # 36 train samples / batch 4 = 9 batches per epoch: the cut at step 4 is mid-epoch.
    common = [f"run.out_dir={tmp_path}", *EXACT, f"data.source={shards}", f"data.backend={backend}",
              "train.max_steps=12"]
    run_p2p("train", *common, "run.name=straight")
    assert run_p2p("train", *common, "run.name=cut", "train.stop_after=4", check=False).returncode == STOPPED_ON_SIGNAL
    ck = load_ckpt(tmp_path / "cut" / "checkpoints" / "last.pt")
    assert ck["step"] == 4 and ck["epoch"] == 0 and 0 < ck["batch_in_epoch"] < 9
    run_p2p("train", *common, "run.name=cut")
    assert_same_run(tmp_path / "straight", tmp_path / "cut")


def test_cut_and_resumed_run_with_every_new_term_equals_the_uninterrupted_one(tmp_path):
    """The generator's EMA (saved, its buffers this rank's G's), the multi-scale discriminator,
    feature matching, hinge and the official per-epoch lr (6 batches per epoch: the cut at 5
    is mid-epoch, before the lr's first change) resume bit-exactly too."""
    common = [f"run.out_dir={tmp_path}", *EXACT, "train.max_steps=10", "train.ema_decay=0.8", "model.num_d=2",
              "loss.lambda_feat=10", "loss.gan_mode=hinge", "optim.lr_policy=official", "optim.n_epochs=1",
              "optim.n_epochs_decay=1"]
    run_p2p("train", *common, "run.name=straight")
    assert run_p2p("train", *common, "run.name=cut", "train.stop_after=5", check=False).returncode == STOPPED_ON_SIGNAL
    run_p2p("train", *common, "run.name=cut")
    assert_same_run(tmp_path / "straight", tmp_path / "cut")  # the EMA's tensors included
    a = load_ckpt(tmp_path / "straight" / "checkpoints" / "last.pt")
    assert "generator_ema" in a
    assert "scales.1.model.0.weight" in a["discriminator"]
    assert {r["lr"] for r in rows(tmp_path / "cut")} == {2e-4, 1e-4}
