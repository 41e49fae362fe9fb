"""Fault: two `p2p train` on the same run (the second with another lr). Both trained, shared
last.pt.tmp, the second died with a false "the previous last.pt is unchanged", and
metrics.jsonl ended with interleaved rows, steps duplicated and out of order. Now the first
holds the run folder's lock (p2p.run_folder) for its life; the second is refused with one line
naming it (host, pid, start time), exit 2, before it touches anything. A trainer killed with
SIGKILL leaves no stale lock: the next one resumes at once."""

from __future__ import annotations

import errno
import json
import os
import signal
import socket
import subprocess
import sys
import time

import pytest

from helpers.runs import ROOT, TINY, p2p_env, run_p2p, torchrun, wait_for
from p2p.errors import UsageError
from p2p.run_folder import RunFolderBusy, lock_run_folder


def _rows(run_dir) -> list[dict]:
    path = run_dir / "metrics.jsonl"
    return [json.loads(ln) for ln in path.read_text().splitlines() if ln.strip()] if path.exists() else []


def _start(out, name, *extra) -> subprocess.Popen:
    args = [*TINY, "train.max_steps=100000", "train.log_every=1", "train.ckpt_every=2", f"run.out_dir={out}",
            f"run.name={name}", *extra]
    return subprocess.Popen([sys.executable, "-m", "p2p", "train", *args], cwd=ROOT, env=p2p_env(),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _stop(proc: subprocess.Popen, sig=signal.SIGKILL) -> None:
    if proc.poll() is None:
        proc.send_signal(sig)
    proc.communicate(timeout=60)


@pytest.mark.slow
def test_second_trainer_on_a_running_run_is_refused_and_a_killed_one_leaves_no_lock(tmp_path):
    run_dir = tmp_path / "same"
    first = _start(tmp_path, "same")
    try:
        wait_for(lambda: len(_rows(run_dir)) >= 2 or first.poll() is not None, 120, "the first trainer's steps")
        assert first.poll() is None, first.communicate()[1][-2000:]
        second = run_p2p("train", *TINY, "train.max_steps=100000", "optim.lr=0.01", f"run.out_dir={tmp_path}",
                         "run.name=same", check=False)
        assert second.returncode == 2, second.stderr[-2000:]
        lines = second.stderr.strip().splitlines()
        assert len(lines) == 1 and "Traceback" not in second.stderr, second.stderr
        assert lines[0].startswith(f"p2p train: error: run folder {run_dir} is in use by another training process "
                                   f"(pid {first.pid} on host {socket.gethostname()}, started "), lines[0]
        assert first.poll() is None, "the first trainer stopped"
        seen = len(_rows(run_dir))
        wait_for(lambda: len(_rows(run_dir)) > seen + 1, 60, "the first trainer to go on")
    finally:
        _stop(first)  # SIGKILL: no clean-up runs, the kernel drops the lock
    steps = [r["step"] for r in _rows(run_dir)]
    assert steps == list(range(1, len(steps) + 1)), "rows interleaved, repeated or out of order"
    assert "lr: 0.01\n" not in (run_dir / "config.yaml").read_text()  # the second wrote no config

    again = run_p2p("train", *TINY, "train.max_steps=100000", "train.log_every=1", "train.stop_after=2",
                    f"run.out_dir={tmp_path}", "run.name=same", check=False)
    assert again.returncode == 75, again.stderr[-2000:]  # stopped after 2 more steps, resumable
    assert "(resumed)" in again.stderr and "in use" not in again.stderr


@pytest.mark.slow
def test_both_ranks_of_a_second_ddp_job_are_refused(tmp_path):
    """Only rank 0 locks; every rank learns it was refused and exits 2 with the same line."""
    holder = lock_run_folder(tmp_path / "ddp")
    try:
        proc = torchrun("-m", "p2p", "train", *TINY, "train.max_steps=2", f"run.out_dir={tmp_path}", "run.name=ddp",
                        check=False)
    finally:
        holder.release()
    assert proc.returncode != 0
    refusals = [ln for ln in proc.stderr.splitlines() if "is in use by another training process" in ln]
    assert len(refusals) == 2 and f"pid {os.getpid()}" in refusals[0], proc.stderr[-3000:]
    assert "UsageError" not in proc.stderr, proc.stderr[-3000:]  # one line each (torchrun adds its own report)
    assert not (tmp_path / "ddp" / "checkpoints").exists() and not (tmp_path / "ddp" / "metrics.jsonl").exists()


def test_the_lock_names_its_holder_and_is_free_again_after_release(tmp_path):
    held = lock_run_folder(tmp_path / "r")
    with pytest.raises(RunFolderBusy) as e:
        lock_run_folder(tmp_path / "r")  # another open of the file: flock refuses it, even in-process
    assert f"pid {os.getpid()} on host {socket.gethostname()}" in str(e.value)
    held.release()
    lock_run_folder(tmp_path / "r").release()


def test_a_forked_child_does_not_keep_the_lock(tmp_path):
    """Loader workers are forked while the trainer holds the lock: they must not hold it on after
    the trainer is gone (an orphaned worker would block the resumed run)."""
    held = lock_run_folder(tmp_path / "r")
    ready_r, ready_w = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child (its fork hooks have run) outlives the parent's hold for a moment
        os.write(ready_w, b"1")
        time.sleep(3)
        os._exit(0)
    try:
        os.read(ready_r, 1)
        held.release()
        lock_run_folder(tmp_path / "r").release()  # free although the child still lives
    finally:
        os.waitpid(pid, 0)


def test_a_symlinked_lock_file_is_not_followed(tmp_path):
    (tmp_path / "r").mkdir()
    victim = tmp_path / "victim"
    victim.write_text("keep me")
    (tmp_path / "r" / ".lock").symlink_to(victim)
    with pytest.raises(UsageError, match="symbolic link"):
        lock_run_folder(tmp_path / "r")
    assert victim.read_text() == "keep me"


def test_a_filesystem_without_locks_gives_a_notice_and_goes_on(tmp_path, monkeypatch):
    """ENOLCK (NFS without a lock manager; Lustre without -o flock) cannot be produced on this
    machine's filesystems, so flock is replaced by one that fails the same way."""
    import fcntl

    def no_locks(fd, op):
        raise OSError(errno.ENOLCK, os.strerror(errno.ENOLCK))

    monkeypatch.setattr(fcntl, "flock", no_locks)
    lock = lock_run_folder(tmp_path / "nfs")
    assert not lock.held and "cannot lock the run folder" in lock.notice and "No locks available" in lock.notice
    assert isinstance(RunFolderBusy("x"), UsageError)
