"""A stop signal during a run's first step (a cold torch.compile of the full networks takes
minutes) ends a single-process run at once: there is nothing new to save, and a time limit's
grace would otherwise run out inside the compile and end in SIGKILL (issue 21). After the first
step a signal stops at the next step boundary with a checkpoint, as before."""

from __future__ import annotations

import os
import signal
import time

from helpers.runs import TINY
from p2p.config import load_config
from p2p.train.loop import train
from p2p.train.run import Run


def test_a_signal_in_the_first_step_ends_the_run_at_once(tmp_path, monkeypatch):
    real, reached = Run.step, []

    def compiling(self, inp, target):  # the first step: a long compile, signalled half-way
        if not reached:
            os.kill(os.getpid(), signal.SIGTERM)
            time.sleep(30)
            reached.append("the compile went on after the signal")
        return real(self, inp, target)

    monkeypatch.setattr(Run, "step", compiling)
    cfg = load_config(None, [f"run.out_dir={tmp_path}", "run.name=cold", *TINY, "train.max_steps=6"])
    result = train(cfg)
    assert not reached and result.preempted and result.signal == "SIGTERM" and result.step == 0
    assert not (tmp_path / "cold" / "checkpoints" / "last.pt").exists()  # nothing new to save


def test_after_the_first_step_a_signal_still_saves_at_the_step_boundary(tmp_path, monkeypatch):
    real, calls = Run.step, []

    def signalled(self, inp, target):
        calls.append(1)
        out = real(self, inp, target)
        if len(calls) == 2:
            os.kill(os.getpid(), signal.SIGTERM)
        return out

    monkeypatch.setattr(Run, "step", signalled)
    cfg = load_config(None, [f"run.out_dir={tmp_path}", "run.name=warm", *TINY, "train.max_steps=6"])
    result = train(cfg)
    assert result.signal == "SIGTERM" and result.step == 2 and len(calls) == 2
    assert (tmp_path / "warm" / "checkpoints" / "last.pt").exists()
