"""Fault: a run stops before train.max_steps (here train.stop_after; a signal, a full disk or a
dead worker take the same path). `p2p train` prints the exact command that goes on, the folder
to run it in and where last.pt is; running that line resumes the run."""

from __future__ import annotations

import re
import shlex
import subprocess

import pytest

from helpers.runs import ROOT, TINY, load_ckpt, p2p_env, run_p2p
from p2p.cli.train import STOPPED_ON_SIGNAL

pytestmark = pytest.mark.slow


def test_a_stopped_run_prints_the_command_that_resumes_it(tmp_path):
    args = [*TINY, "train.max_steps=6", f"run.out_dir={tmp_path}", "run.name=hint", "train.stop_after=2"]
    proc = run_p2p("train", *args, check=False)
    assert proc.returncode == STOPPED_ON_SIGNAL, proc.stderr[-2000:]
    last = (tmp_path / "hint" / "checkpoints" / "last.pt").resolve()
    lines = [ln for ln in proc.stderr.splitlines() if ln.startswith("p2p train: to resume, run: ")]
    assert len(lines) == 1, proc.stderr[-2000:]
    m = re.fullmatch(r"p2p train: to resume, run: cd (\S+) && (.+); last\.pt: (\S+) \(step (\d+)\)", lines[0])
    assert m, lines[0]
    folder, command, path, step = m.groups()
    assert shlex.split(folder) == [str(ROOT)] and path == str(last) and int(step) == load_ckpt(last)["step"] == 2
    words = shlex.split(command)
    assert words[-len(args):] == args and words[:-len(args)][-2:] == ["p2p", "train"]
    again = subprocess.run(words, cwd=shlex.split(folder)[0], capture_output=True, text=True, timeout=300,
                           env=p2p_env())
    assert again.returncode == STOPPED_ON_SIGNAL and "step 2 -> 6" in again.stderr and "(resumed)" in again.stderr
    assert load_ckpt(last)["step"] == 4


def test_ctrl_c_prints_the_command_that_resumes_it(tmp_path):
    """Fault: the user presses Ctrl-C (SIGINT) mid-run: exit 130, and the resume line names the
    last periodic checkpoint."""
    import signal
    import sys

    from helpers.runs import wait_for

    args = [*TINY, "train.max_steps=100000", "train.ckpt_every=1", f"run.out_dir={tmp_path}", "run.name=ctrlc"]
    proc = subprocess.Popen([sys.executable, "-m", "p2p", "train", *args], cwd=ROOT, env=p2p_env(),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    last = (tmp_path / "ctrlc" / "checkpoints" / "last.pt").resolve()
    try:
        wait_for(last.exists, timeout=120, what="a first checkpoint")
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=60)
    finally:
        proc.kill()
    assert proc.returncode == 130, err[-2000:]
    lines = [ln for ln in err.splitlines() if ln.startswith("p2p train: to resume, run: ")]
    assert len(lines) == 1 and lines[0].endswith(f"; last.pt: {last}"), err[-2000:]
