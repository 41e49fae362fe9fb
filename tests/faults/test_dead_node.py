"""Fault: one node's task of a 2-node Slurm job dies (kill -9 of its process, as a node that goes
down or the OOM killer would end it), on the real local cluster. The whole job ends within a
bounded time (srun --kill-on-bad-exit, then the survivor's next collective fails at once);
without requeues left it ends FAILED with one line and re-submitting the same command resumes
from last.pt; with slurm.max_requeues > 0 the surviving task requeues the job, which resumes
and finishes."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from helpers.faults import task_pids
from helpers.requirements import require_slurm
from helpers.runs import ROOT, TINY, load_ckpt, p2p_env, wait_for
from helpers.slurm_jobs import SLURM, TERMINAL, final_state, metrics, sacct_rows, sacct_state, submitted_id

pytestmark = [pytest.mark.slow, pytest.mark.slurm]
# From the kill to the job's final state: measured 1-3 s on the local cluster (srun ends the
# step at once; Slurm's KillWait, 5 s there, bounds a survivor that does not exit by itself).
JOB_ENDS_WITHIN_S = 60


@pytest.fixture
def cluster(tmp_path):
    require_slurm()
    registry = tmp_path / "jobs.jsonl"
    yield registry
    if registry.exists():  # never leave a job running on the shared cluster
        for line in registry.read_text().splitlines():
            job_id = json.loads(line)["job_id"]
            if sacct_state(job_id) not in TERMINAL:
                subprocess.run(["scancel", job_id], timeout=20, check=False)


def _submit(registry: Path, *args, timeout: float = 60) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "p2p", "submit", *args], capture_output=True, text=True,
                          timeout=timeout, env=p2p_env(P2P_JOBS_REGISTRY=str(registry)), cwd=ROOT)


def _kill_rank_1_when_trained(job_id: str, run_dir: Path, max_steps: int) -> tuple[int, float]:
    """SIGKILL the task on node2 (rank 1) once a checkpoint exists; (its step, the time of the kill)."""
    wait_for(lambda: (run_dir / "checkpoints" / "last.pt").exists() and len(metrics(run_dir)) >= 7, 120,
             "a checkpoint and a few steps")
    step = metrics(run_dir)[-1]["step"]
    assert step < max_steps // 3, f"step {step} of {max_steps} already: raise max_steps for this machine"
    pids = wait_for(lambda: task_pids(job_id, 1), 20, "rank 1's process")
    for pid in pids:
        os.kill(pid, signal.SIGKILL)
    return step, time.monotonic()


def _args(tmp_path: Path, name: str, *extra: str) -> list[str]:
    return [*TINY, "data.workers=0", "train.log_every=1", "train.ckpt_every=5", f"run.out_dir={tmp_path / 'runs'}",
            f"run.name={name}", *SLURM, "slurm.nodes=2", *extra]


def test_killed_task_fails_the_job_promptly_and_resubmitting_resumes(cluster, tmp_path):
    max_steps = 100000  # never reached: the kill ends the first job, train.stop_after the second
    run_dir = tmp_path / "runs" / "dead"
    args = _args(tmp_path, "dead", f"train.max_steps={max_steps}", "slurm.max_requeues=0")
    proc = _submit(cluster, *args)
    assert proc.returncode == 0, proc.stderr
    job_id = submitted_id(proc.stdout)
    _, killed_at = _kill_rank_1_when_trained(job_id, run_dir, max_steps)
    wait_for(lambda: sacct_state(job_id) in TERMINAL, JOB_ENDS_WITHIN_S, "the whole job to end", poll=0.5)
    took = time.monotonic() - killed_at
    assert final_state(job_id) == "FAILED" and took < JOB_ENDS_WITHIN_S, took
    err = (run_dir / "slurm" / f"{job_id}_0_log.err").read_text()
    errors = [ln for ln in err.splitlines() if ln.startswith("p2p job: error:")]
    saved = load_ckpt(run_dir / "checkpoints" / "last.pt")["step"]
    assert len(errors) == 1 and "another process of this job is stuck or gone" in errors[0], err[-3000:]
    assert f"last good checkpoint: {run_dir / 'checkpoints' / 'last.pt'} (step {saved})" in errors[0]
    assert "not requeued: requeued 0 time(s) already (slurm.max_requeues=0)" in err
    assert "Traceback" not in err, err[-3000:]

    again = _submit(cluster, *args, "train.stop_after=3", "--wait", "--timeout", "150", timeout=210)
    assert again.returncode == 0, again.stdout + again.stderr
    new_err = (run_dir / "slurm" / f"{submitted_id(again.stdout)}_0_log.err").read_text()
    assert f"step {saved} -> {max_steps}" in new_err and "(resumed)" in new_err, new_err[-3000:]
    assert load_ckpt(run_dir / "checkpoints" / "last.pt")["step"] == saved + 3


def test_killed_task_with_requeues_left_requeues_the_job_which_finishes(cluster, tmp_path):
    max_steps = 150
    run_dir = tmp_path / "runs" / "requeue"
    proc = _submit(cluster, *_args(tmp_path, "requeue", f"train.max_steps={max_steps}", "slurm.max_requeues=1"))
    assert proc.returncode == 0, proc.stderr
    job_id = submitted_id(proc.stdout)
    _kill_rank_1_when_trained(job_id, run_dir, max_steps)
    wait_for(lambda: sacct_state(job_id) in TERMINAL, 300,
             "the requeued job to finish", poll=1)
    assert final_state(job_id) == "COMPLETED"
    assert sacct_rows(job_id, duplicates=True) == ["REQUEUED", "COMPLETED"]
    logs = "\n".join(p.read_text() for p in sorted((run_dir / "slurm").glob(f"{job_id}_*_log.err")))
    assert f"p2p job: requeued job {job_id} after losing a task (requeue 1 of at most 1)" in logs, logs[-3000:]
    assert "(resumed)" in logs
    assert load_ckpt(run_dir / "checkpoints" / "last.pt")["step"] == max_steps
    assert metrics(run_dir)[-1]["step"] == max_steps and {r["world_size"] for r in metrics(run_dir)} == {2}
