"""Fault: `p2p cancel` stopping jobs that are not this user's p2p jobs. It cancelled any job
whose name starts with p2p (an unrelated `p2poolminer`), trusted registry rows blindly (a
hand-added row cancelled a non-p2p job), cancelled another user's job when run as root, and
acted on stale rows (job ids start over on a re-installed cluster). Now a job is cancelled only
when the registry recorded it and Slurm confirms it (p2p.slurm.ownership): this user's, the
recorded p2p name, working directory and submit time; anything else is one line, exit 2, and
the job keeps running. All on the real local cluster, with plain `sleep` jobs."""

from __future__ import annotations

import datetime
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from helpers.requirements import require_slurm
from helpers.runs import ROOT, p2p_env, wait_for
from p2p.slurm.ownership import SLACK_S

pytestmark = [pytest.mark.slow, pytest.mark.slurm]
STRANGER = "p2pstranger"


@pytest.fixture(autouse=True)
def _cluster():
    require_slurm()


class Jobs:
    """This test's jobs and registry; every job is cancelled at the end."""

    def __init__(self, tmp: Path):
        self.registry, self.cwd, self.ids = tmp / "jobs.jsonl", tmp, []

    def sbatch(self, name: str, *extra: str, cwd: Path | None = None) -> tuple[str, list[int]]:
        before = int(time.time())
        proc = subprocess.run(["sbatch", "--parsable", "-J", name, "-p", "debug", "-t", "5", "-o", "/dev/null",
                               *extra, "--wrap", "sleep 300"], capture_output=True, text=True, timeout=30,
                              cwd=cwd or self.cwd, check=True)
        job_id = proc.stdout.strip().split(";")[0]
        self.ids.append(job_id)
        return job_id, [before, int(time.time()) + 1]

    def record(self, job_id: str, name: str, window: list[int], workdir: Path | None = None) -> None:
        """The row `p2p submit` would have written (here by hand)."""
        row = {"job_id": job_id, "name": name, "run_dir": "", "cwd": str(workdir or self.cwd),
               "workdir": str(workdir or self.cwd), "submit_window": window,
               "submitted": datetime.datetime.fromtimestamp(window[1]).isoformat(timespec="seconds")}
        with open(self.registry, "a") as f:
            f.write(json.dumps(row) + "\n")

    def p2p(self, *args) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-m", "p2p", *args], capture_output=True, text=True, timeout=60,
                              cwd=ROOT, env=p2p_env(P2P_JOBS_REGISTRY=str(self.registry)))


@pytest.fixture
def jobs(tmp_path):
    j = Jobs(tmp_path)
    yield j
    if j.ids:
        subprocess.run(["scancel", *j.ids], timeout=20, check=False)


def state(job_id: str) -> str:
    out = subprocess.run(["squeue", "-h", "-t", "all", "-j", job_id, "-o", "%T"], capture_output=True, text=True,
                         timeout=20).stdout.split()
    return out[0] if out else ""


def refused(proc, needle: str) -> None:
    assert proc.returncode == 2, proc.stdout + proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and needle in lines[0] and "Traceback" not in proc.stderr, proc.stderr


def test_a_p2p_named_job_p2p_did_not_submit_is_neither_cancelled_nor_listed(jobs):
    job_id, _ = jobs.sbatch("p2poolminer")
    refused(jobs.p2p("cancel", job_id), "is not in the p2p registry")
    assert state(job_id) in ("PENDING", "RUNNING")
    listed = json.loads(jobs.p2p("jobs", "--json").stdout)
    assert job_id not in [r["job_id"] for r in listed]


def test_a_hand_added_row_for_a_non_p2p_job_is_refused(jobs):
    job_id, window = jobs.sbatch("sleepy")
    jobs.record(job_id, "sleepy", window)
    refused(jobs.p2p("cancel", job_id), "not the p2p job")
    jobs.record(job_id, "p2p-sleepy", window)  # a row that claims a p2p name the job does not have
    refused(jobs.p2p("cancel", job_id), "not the p2p job")
    assert state(job_id) in ("PENDING", "RUNNING")


def test_another_users_job_is_refused_even_as_root(jobs):
    if os.geteuid() != 0 or shutil.which("useradd") is None:
        pytest.skip("submitting as another user needs root and useradd")
    if subprocess.run(["id", STRANGER], capture_output=True).returncode != 0:
        subprocess.run(["useradd", "--system", "--no-create-home", STRANGER], check=True, timeout=30)
    job_id, window = jobs.sbatch("p2p-foreign", f"--uid={STRANGER}", "--chdir=/tmp", cwd=Path("/tmp"))
    jobs.record(job_id, "p2p-foreign", window, workdir=Path("/tmp"))  # everything else matches
    refused(jobs.p2p("cancel", job_id), f"of user {STRANGER}")
    assert state(job_id) in ("PENDING", "RUNNING")


def test_a_stale_row_for_a_reused_job_id_is_refused(jobs):
    job_id, window = jobs.sbatch("p2p-stale")
    a_year_ago = [t - 365 * 86400 for t in window]
    jobs.record(job_id, "p2p-stale", a_year_ago)
    refused(jobs.p2p("cancel", job_id), "another job has this id now")
    assert state(job_id) in ("PENDING", "RUNNING")


def test_the_recorded_job_is_cancelled_after_a_requeue_too(jobs):
    """Slurm gives a requeued job a new submit time; the first run's, in sacct, still matches."""
    job_id, window = jobs.sbatch("p2p-requeued", "--requeue")
    jobs.record(job_id, "p2p-requeued", window)
    wait_for(lambda: state(job_id) == "RUNNING", 90, "the job to start", poll=0.5)
    time.sleep(max(0.0, window[1] + SLACK_S + 2 - time.time()))  # the requeue's submit time: outside the window
    subprocess.run(["scontrol", "requeue", job_id], check=True, timeout=20)
    wait_for(lambda: state(job_id) in ("PENDING", "RUNNING"), 30, "the requeued job", poll=0.5)
    now = subprocess.run(["squeue", "-h", "-j", job_id, "-o", "%V"], capture_output=True, text=True, timeout=20,
                         env={**os.environ, "SLURM_TIME_FORMAT": "%s"}).stdout.strip()
    assert int(now) > window[1] + SLACK_S, "the requeue kept the submit time: this test tests nothing"
    proc = jobs.p2p("cancel", job_id)
    assert proc.returncode == 0 and f"cancelled job {job_id}" in proc.stdout, proc.stdout + proc.stderr
    wait_for(lambda: state(job_id) in ("CANCELLED", ""), 30, "the job to be cancelled", poll=0.5)
