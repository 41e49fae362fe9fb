"""Fault: the world size changes between a checkpoint and its resume (a 2-process job requeued
on 1 node, or on 4). The data position is the images read so far in the epoch: no image of the
epoch is read twice or skipped (but for fewer than world x batch that cannot fill a batch on
every process), the lr schedule is unchanged, and the notice says what was reseeded. DALI
refuses with one line."""

from __future__ import annotations

import json
import shutil
import sys
from collections import Counter

import numpy as np
import pytest

from helpers import image_folders as F
from helpers.runs import ROOT, TINY, load_ckpt, p2p_env, run_p2p, torchrun
from p2p.cli.train import STOPPED_ON_SIGNAL
from p2p.config import load_config
from p2p.data.plan import continued_plan, rank_samples, train_plan
from p2p.train.schedule import lr_factor

RECORDER = str(ROOT / "tests" / "helpers" / "key_recorder.py")
BATCH = 4


# ---------------------------------------------------------------------------------------------
# the plan alone (no processes)


def _first_orders(counts, world, epoch=0, seed=0):
    return [rank_samples(counts, seed, epoch, r, world) for r in range(world)]


def _ids(rows, counts):
    starts = np.concatenate([[0], np.cumsum(counts)[:-1]])
    return [int(starts[s] + m) for s, m in np.asarray(rows).reshape(-1, 2)]


@pytest.mark.parametrize("history, world, batch", [
    ([(2, 4, 2)], 1, 4), ([(2, 4, 2)], 4, 4), ([(2, 4, 3)], 3, 2),  # world and batch size changed
    ([(2, 4, 1), (4, 4, 1)], 1, 4), ([(8, 2, 1), (3, 4, 2), (1, 4, 1)], 2, 4),  # changed more than once
])
def test_a_continued_epoch_reads_every_unread_sample_once(history, world, batch):
    counts = np.array([13, 7, 20, 11, 9], dtype=np.int64)  # 60 samples in uneven shards
    n = int(counts.sum())
    firsts = _first_orders(counts, history[0][0])
    read = []
    # what the history read: the plain plan's first batches, then each continued part's
    w0, b0, k0 = history[0]
    for r in range(w0):
        plan = train_plan(counts, b0, 0, 0, r, w0)
        read += _ids(plan[: k0 * b0], counts)
    for i, (w, b, k) in enumerate(history[1:], start=1):
        for r in range(w):
            part, _ = continued_plan(firsts, history[:i], r, w, b)
            read += _ids(part[: k * b], counts)
    now = []
    for r in range(world):
        part, left = continued_plan(firsts, history, r, world, batch)
        assert len(part) % batch == 0
        now.append(_ids(part, counts))
    assert len({len(p) for p in now}) == 1, "every rank gets the same number of batches"
    seen = read + [i for p in now for i in p]
    assert not [k for k, c in Counter(seen).items() if c > 1], "a sample read twice in one epoch"
    unread = n - len(seen)
    assert 0 <= unread < world * batch, f"{unread} samples skipped with {world} x batch {batch}"


# ---------------------------------------------------------------------------------------------
# real runs: 2 gloo processes, then 1 and 4


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return F.folder_and_shards(tmp_path_factory.mktemp("world_size"), n=48, seed=5, shard_mb=0.02)


def _records(out) -> list[dict]:
    rows = []
    for p in sorted(out.glob("keys-rank*.jsonl")):
        rows += [json.loads(line) for line in p.read_text().splitlines()]
    return rows


def _metrics(run_dir) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def _train(world: int, out, args, check_rc=STOPPED_ON_SIGNAL):
    if world == 1:
        import subprocess

        proc = subprocess.run([sys.executable, RECORDER, str(out), *args], capture_output=True, text=True,
                              timeout=300, env=p2p_env(), cwd=ROOT)
        assert proc.returncode == check_rc, proc.stderr[-3000:]
        return proc
    proc = torchrun(RECORDER, str(out), *args, nproc=world, timeout=400, check=False)
    assert proc.returncode != 0 and f"exitcode  : {check_rc}" in proc.stderr, proc.stderr[-3000:]
    return proc


@pytest.mark.slow
@pytest.mark.parametrize("backend", ["folder", "wds"])
def test_two_processes_resume_with_one_and_with_four(tmp_path, data, backend):
    source = data / ("images" if backend == "folder" else "shards")
    common = [*TINY, f"data.source={source}", f"data.backend={backend}", "data.val_fraction=0.15", "train.log_every=1",
              "train.max_steps=40", "optim.decay_start=1", f"run.out_dir={tmp_path}"]
    from p2p.data import build_loader

    loader = build_loader(load_config(None, [*common, "run.name=x"]), "train", 0, 1)
    n = len(loader.samples) if backend == "folder" else loader.shards.total  # the epoch's images
    per_rank = (n // 2) // BATCH
    assert per_rank >= 3, f"{n} training images: too few for a cut mid-epoch"

    _train(2, tmp_path / "keys-two", [*common, "run.name=two", "train.stop_after=2"])
    before = [r for r in _records(tmp_path / "keys-two") if r["epoch"] == 0]
    assert len(before) == 2 * 2 and sum(len(r["keys"]) for r in before) == 16
    read = [k for r in before for k in r["keys"]]

    for world in (1, 4):
        name = f"w{world}"
        shutil.copytree(tmp_path / "two", tmp_path / name)
        rest = n - 16
        left_batches = (rest // world) // BATCH  # what the new world reads of epoch 0
        proc = _train(world, tmp_path / f"keys-{name}", [*common, f"run.name={name}",
                                                         f"train.stop_after={left_batches + 1}"])
        after = _records(tmp_path / f"keys-{name}")
        epoch0 = [r for r in after if r["epoch"] == 0]
        assert len(epoch0) == world * left_batches, "the rest of epoch 0, in whole batches on every rank"
        assert {r["step"] for r in after} == set(range(3, 3 + left_batches + 1)), "steps continue from 3"
        seen = read + [k for r in epoch0 for k in r["keys"]]
        twice = [k for k, c in Counter(seen).items() if c > 1]
        assert not twice, f"{world} process(es): read twice in epoch 0: {twice[:5]}"
        assert 0 <= n - len(seen) < world * BATCH, f"{world} process(es): {n - len(seen)} of {n} images skipped"
        assert all(r["epoch"] == 1 for r in after if r["step"] == 3 + left_batches), "then epoch 1 starts"
        ck = load_ckpt(tmp_path / name / "checkpoints" / "last.pt")  # one batch into epoch 1, a plain one
        assert (ck["epoch"], ck["batch_in_epoch"], ck["epoch_history"]) == (1, 1, [])
        assert ck["images_in_epoch"] == world * BATCH and ck["world_size"] == world
        notices = [ln for ln in proc.stderr.splitlines() if "notice:" in ln]
        assert any("reseeded" in ln and "a checkpoint of 2" in ln for ln in notices), notices
        assert any("after the 16 image(s) read" in ln for ln in notices), notices
        # the schedule is a function of the step: unchanged by the new world size (a row's lr is
        # the one its last step used, read back from the optimizer: the schedule at step - 1)
        run_cfg = load_config(None, [*common, f"run.name={name}"])
        for row in _metrics(tmp_path / name):
            assert row["lr"] == pytest.approx(run_cfg.optim.lr * lr_factor(row["step"] - 1, run_cfg), rel=1e-12)
        assert {r["world_size"] for r in _metrics(tmp_path / name) if r["step"] > 2} == {world}


@pytest.mark.slow
def test_dali_refuses_another_world_size_mid_epoch_with_one_line(tmp_path, data):
    from helpers.requirements import require_dali

    require_dali()
    common = [*TINY, f"data.source={data / 'shards'}", "data.backend=dali", "train.max_steps=40",
              f"run.out_dir={tmp_path}", "run.name=d"]
    stopped = torchrun("-m", "p2p", "train", *common, "train.stop_after=2", nproc=2, timeout=400, check=False)
    assert f"exitcode  : {STOPPED_ON_SIGNAL}" in stopped.stderr, stopped.stderr[-3000:]
    proc = run_p2p("train", *common, check=False)
    assert proc.returncode == 2, proc.stderr[-3000:]
    errors = [ln for ln in proc.stderr.splitlines() if "error:" in ln]
    assert len(errors) == 1 and "data.backend=dali cannot continue epoch 0 with 1 process(es)" in errors[0], errors
    assert "resume with 2 process(es)" in errors[0] and "Traceback" not in proc.stderr
