"""Faults: a checkpoint whose checksum matches but whose training payload is wrong (edited and
re-sealed by hand or by another program): `step: 'abc'`, a tensor of another shape, Adam
moments that fit no parameter, an RNG state torch cannot take, an absurd architecture. A resume
was a traceback (or, for a buffer that broadcasts, silently wrong). Each field a resume reads is
checked first; a bad file is unreadable like a corrupt one: the run resumes from the newest
good checkpoint with a notice naming the field, and with none it exits 2 with one line."""

from __future__ import annotations

import pytest
import torch

from helpers.payloads import tiny_payload
from helpers.runs import TINY, load_ckpt, run_p2p
from p2p.checkpoint_file import sealed
from p2p.errors import CheckpointError
from p2p.train.checkpoint import Checkpoints


def _set(key, value):
    def edit(p):
        p[key] = value
    return edit


def _reshape_g(p):
    p["generator"]["down.1.conv.weight"] = torch.zeros(3, 3, 3, 3)


def _reshape_moment(p):
    first = next(iter(p["opt_g"]["state"]))
    p["opt_g"]["state"][first]["exp_avg"] = torch.zeros(2)


def _param_ids(p):
    p["opt_d"]["param_groups"][0]["params"] = p["opt_d"]["param_groups"][0]["params"][:-1]


def _rng(p):
    p["rng"] = [{"python": {"version": 3, "state": torch.zeros(5, dtype=torch.int64), "gauss": None}}]


def _rank_buffers(p):
    p["rank_buffers"] = [{"generator": {"down.1.norm.running_mean": torch.zeros(1)}, "discriminator": {}}]


def _arch(p):
    p["arch"]["generator"]["ngf"] = 10**6


def _nan(p):
    p["discriminator"]["model.0.weight"].view(-1)[0] = float("nan")


def _lr(p):
    p["opt_g"]["param_groups"][0]["lr"] = "fast"


CASES = [
    (_set("step", "abc"), "step='abc' is not a whole number"),
    (_set("step", -3), "step=-3"),
    (_set("epoch", 10**30), "epoch="),
    (_set("batch_in_epoch", 2.5), "batch_in_epoch=2.5"),
    (_set("best", "high"), "best='high' is not a finite number"),
    (_set("best", float("nan")), "best=nan"),
    (_set("epoch_history", [[1, 2]]), "epoch_history"),
    (_set("generator", [1, 2]), "generator is a list"),
    (_reshape_g, "size mismatch for down.1.conv.weight"),
    (_reshape_moment, "opt_g.state"),
    (_param_ids, "opt_d holds"),
    (_lr, "opt_g.param_groups.lr='fast'"),
    (_rng, "rng[0].numpy is a NoneType"),
    (_rank_buffers, "rank_buffers[0].generator"),
    (_arch, "ngf=1000000, outside 1..4096"),
    (_nan, "NaN or infinite"),
    (_set("opt_g", None), "opt_g is a NoneType"),
]


@pytest.mark.parametrize("edit, needle", CASES)
def test_a_resealed_payload_with_a_bad_field_is_unreadable_and_named(tmp_path, edit, needle):
    ck = Checkpoints(tmp_path, keep_last=0)
    payload = tiny_payload(4)
    edit(payload)
    ck.save(payload, 4)  # sealed: the checksum matches what was edited
    with pytest.raises(CheckpointError) as info:
        ck.find_resumable()
    message = str(info.value)
    assert "no readable checkpoint" in message and needle in message and "\n" not in message, message


def test_a_good_payload_passes(tmp_path):
    ck = Checkpoints(tmp_path, keep_last=0)
    ck.save(tiny_payload(4, ema=True), 4)
    assert ck.find_resumable().payload["step"] == 4


def _train(tmp_path, steps, check=True):
    return run_p2p("train", f"run.out_dir={tmp_path}", "run.name=r", *TINY, f"train.max_steps={steps}", check=check)


@pytest.mark.slow
def test_train_resumes_from_the_newest_good_file_and_exits_2_when_none_is(tmp_path):
    _train(tmp_path, 2)  # last.pt and step-00000002.pt: one file, two names
    ck = tmp_path / "r" / "checkpoints"
    good = load_ckpt(ck / "last.pt")
    bad = {**good, "step": "abc"}
    bad.pop("checksum")
    (ck / "last.pt").unlink()  # a new file: step-00000002.pt keeps the good bytes
    torch.save(sealed(bad), ck / "last.pt")
    proc = _train(tmp_path, 3)
    notice = next(ln for ln in proc.stderr.splitlines() if "unreadable" in ln)
    assert "last.pt holds an unusable training payload: step='abc'" in notice, proc.stderr[-2000:]
    assert "resumed from step-00000002.pt (step 2)" in notice and "Traceback" not in proc.stderr
    for path in ck.glob("*.pt"):  # now every file is bad
        torch.save(sealed({**bad, "generator": {**good["generator"], "down.0.conv.weight": torch.zeros(1)}}), path)
    proc = _train(tmp_path, 4, check=False)
    errors = [ln for ln in proc.stderr.splitlines() if "error:" in ln]
    assert proc.returncode == 2 and len(errors) == 1 and "Traceback" not in proc.stderr, proc.stderr[-3000:]
    assert "unusable training payload" in errors[0]
