"""`p2p submit` / `p2p jobs` / `p2p cancel` and slurm/train.sbatch on the real local Slurm cluster
(`slurm/local-cluster up`: node1 + node2 in partition `debug`, with accounting).

Without a cluster these tests are skipped, or fail when P2P_REQUIRE_SLURM=1. Every wait is
bounded, and every job a test submitted is cancelled at teardown if it still runs. Jobs run
this checkout's p2p with this interpreter (`sys.executable`; PYTHONPATH points here too).
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest

from conftest import ROOT, TINY, load_ckpt, p2p_env, require_slurm

pytestmark = [pytest.mark.slurm, pytest.mark.slow]

# Small jobs that fit the 2-core test cluster: one core per task, a 5-minute limit.
SLURM = ["slurm.partition=debug", "slurm.cpus_per_task=1", "slurm.time_min=5"]
TERMINAL = {"COMPLETED", "FAILED", "CANCELLED", "TIMEOUT", "NODE_FAIL", "OUT_OF_MEMORY", "BOOT_FAIL", "DEADLINE"}


# Submissions rejected before sbatch runs: these cases need no cluster.
NO_CLUSTER = "test_invalid_submissions_exit_2_before_anything_is_queued"


@pytest.fixture(autouse=True)
def _cluster(request):
    needs = getattr(request.node, "callspec", None)
    if request.node.originalname != NO_CLUSTER or (needs and needs.params.get("needs_slurm")):
        require_slurm()


class Env:
    """One test's registry and run folders, and the jobs it must clean up."""

    def __init__(self, tmp: Path):
        self.tmp = tmp
        self.runs = tmp / "runs"
        self.registry = tmp / "jobs.jsonl"

    def env(self) -> dict:
        return p2p_env(P2P_JOBS_REGISTRY=str(self.registry))

    def p2p(self, *args, timeout: float = 60, **env) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-m", "p2p", *map(str, args)], capture_output=True, text=True,
                              timeout=timeout, env={**self.env(), **env}, cwd=ROOT)

    def overrides(self, name: str, *extra: str) -> list[str]:
        return [*TINY, "data.workers=0", f"run.out_dir={self.runs}", f"run.name={name}", *SLURM, *extra]

    def job_ids(self) -> list[str]:
        if not self.registry.exists():
            return []
        return [json.loads(line)["job_id"] for line in self.registry.read_text().splitlines() if line.strip()]


@pytest.fixture
def senv(tmp_path: Path):
    e = Env(tmp_path)
    yield e
    for job_id in e.job_ids():  # never leave a test's job running on the shared cluster
        if sacct_state(job_id) not in TERMINAL:
            subprocess.run(["scancel", job_id], timeout=20, check=False)


def sacct_rows(job_id: str, duplicates: bool = False) -> list[str]:
    cmd = ["sacct", "-X", "-n", "-P", "-o", "State", "-j", job_id] + (["-D"] if duplicates else [])
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=20).stdout
    return [line.split()[0] for line in out.splitlines() if line.strip()]


def sacct_state(job_id: str) -> str:
    rows = sacct_rows(job_id)
    return rows[-1] if rows else ""


def final_state(job_id: str, timeout: float = 30) -> str:
    """The job's accounting state once it is final. slurmdbd records array elements a few seconds
    after they end, so one read right after `--wait` returned can still say RUNNING."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and sacct_state(job_id) not in TERMINAL:
        time.sleep(0.5)
    return sacct_state(job_id)


def wait_for(predicate, timeout: float, what: str, poll: float = 0.3):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(poll)
    pytest.fail(f"timed out after {timeout:.0f}s waiting for {what}")


def metrics(run_dir: Path) -> list[dict]:
    path = run_dir / "metrics.jsonl"
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def submitted_id(text: str) -> str:
    m = re.search(r"submitted job (\d+)", text)
    assert m, f"no 'submitted job ID' line in:\n{text}"
    return m.group(1)


def logs(folder: Path, pattern: str) -> str:
    return "\n".join(p.read_text() for p in sorted(folder.glob(pattern)))


# --------------------------------------------------------------------------------------


def test_two_node_job_completes_with_world_size_2(senv):
    proc = senv.p2p("submit", *senv.overrides("two", "train.max_steps=6", "slurm.nodes=2", "slurm.tasks_per_node=1"),
                    "--wait", "--timeout", "150", timeout=200)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    job_id = submitted_id(proc.stdout)
    run_dir = senv.runs / "two"
    assert f"run folder {run_dir}" in proc.stdout
    assert "COMPLETED" in proc.stdout
    rows = metrics(run_dir)
    assert rows and {r["world_size"] for r in rows} == {2}, rows
    assert rows[-1]["step"] == 6
    assert load_ckpt(run_dir / "checkpoints" / "last.pt")["step"] == 6
    assert final_state(job_id) == "COMPLETED"
    # Both tasks ran this checkout's p2p, with the interpreter of this test run.
    out = logs(run_dir / "slurm", f"{job_id}_*_log.out")
    assert "rank 0/2" in out and "rank 1/2" in out, out
    assert f"p2p from {ROOT / 'p2p'}" in out, out
    assert sys.executable in (run_dir / "slurm" / f"{job_id}_submission.sh").read_text()


def test_usr2_checkpoints_requeues_and_resumes_without_losing_a_step(senv):
    """`scancel --signal=USR2` is what Slurm sends before a time limit: the 2-rank job saves,
    requeues itself (same id), resumes from last.pt and logs every step exactly once."""
    max_steps = 120
    out_path = senv.tmp / "submit.out"
    run_dir = senv.runs / "pre"
    with open(out_path, "w") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "p2p", "submit",
             *senv.overrides("pre", f"train.max_steps={max_steps}", "train.log_every=1",
                             "slurm.nodes=2", "slurm.tasks_per_node=1"),
             "--wait", "--timeout", "200"],
            stdout=out, stderr=subprocess.STDOUT, text=True, env=senv.env(), cwd=ROOT)
    try:
        job_id = wait_for(lambda: re.search(r"submitted job (\d+)", out_path.read_text()), 30, "submission").group(1)
        wait_for(lambda: len(metrics(run_dir)) >= 3, 90, "the first training steps")
        subprocess.run(["scancel", "--signal=USR2", job_id], check=True, timeout=20)
        rc = proc.wait(timeout=240)
    finally:
        if proc.poll() is None:
            proc.kill()
    text = out_path.read_text()
    assert rc == 0, text + logs(run_dir / "slurm", "*_0_log.err")[-3000:]

    steps = [r["step"] for r in metrics(run_dir)]
    assert steps == list(range(1, max_steps + 1)), f"steps lost or repeated: {steps}"
    assert load_ckpt(run_dir / "checkpoints" / "last.pt")["step"] == max_steps

    err = logs(run_dir / "slurm", f"{job_id}_0_log.err")
    saved = re.search(r"received SIGUSR2: saved step (\d+)", err)
    assert saved and 0 < int(saved.group(1)) < max_steps, err[-3000:]
    assert f"step {saved.group(1)} -> {max_steps}" in err and "(resumed)" in err, err[-3000:]
    out = logs(run_dir / "slurm", f"{job_id}_0_log.out")
    assert "Requeued job" in out and "restart 1 (requeues by p2p: 1)" in out, out
    assert "rank 1 stopped (SIGUSR2)" in logs(run_dir / "slurm", f"{job_id}_1_log.out")
    assert sacct_rows(job_id, duplicates=True) == ["REQUEUED", "COMPLETED"]


def test_sweep_runs_as_array_with_one_run_folder_per_element(senv):
    proc = senv.p2p("submit", *senv.overrides("sw", "train.max_steps=4"), "--sweep", "optim.lr=0.0002,0.0001",
                    "--wait", "--timeout", "150", timeout=200)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    array_id = submitted_id(proc.stdout)
    assert "array of 2" in proc.stdout
    for index, lr in enumerate((0.0002, 0.0001)):
        run_dir = senv.runs / f"sw-optim.lr={lr}"
        assert f"run folder {run_dir}" in proc.stdout
        sweep = json.loads((run_dir / "sweep.json").read_text())
        assert sweep["overrides"] == {"optim.lr": lr} and sweep["job_id"] == f"{array_id}_{index}"
        assert f"lr: {lr}" in (run_dir / "config.yaml").read_text()
        assert metrics(run_dir)[-1]["step"] == 4
        assert final_state(f"{array_id}_{index}") == "COMPLETED"
    assert senv.job_ids() == [f"{array_id}_0", f"{array_id}_1"]


def test_job_that_fails_inside_slurm_makes_wait_fail_with_the_log(senv):
    """An image folder that exists (so submission accepts it) but holds no images: the job fails."""
    empty = senv.tmp / "no-images"
    empty.mkdir()
    proc = senv.p2p("submit", *senv.overrides("bad", "train.max_steps=4", f"data.source={empty}"),
                    "--wait", "--timeout", "120", timeout=180)
    assert proc.returncode == 1, proc.stdout + proc.stderr
    job_id = submitted_id(proc.stdout)
    assert f"job {job_id} FAILED" in proc.stdout
    assert "last lines of" in proc.stdout and "no images for the train split" in proc.stdout, proc.stdout
    assert final_state(job_id) == "FAILED"


def test_jobs_lists_and_cancel_stops_a_running_job(senv):
    proc = senv.p2p("submit", *senv.overrides("long", "train.max_steps=100000"))
    assert proc.returncode == 0, proc.stderr
    job_id = submitted_id(proc.stdout)

    def listed():
        p = senv.p2p("jobs", "--json")
        assert p.returncode == 0, p.stderr
        # Registered jobs first; then p2p-named jobs Slurm knows that this registry does not.
        rows = [r for r in json.loads(p.stdout) if "note" not in r]
        return rows if rows and rows[0]["state"] == "RUNNING" and rows[0]["step"] else None

    rows = wait_for(listed, 90, "p2p jobs to show the job RUNNING with a step", poll=1)
    assert [r["job_id"] for r in rows] == [job_id]
    assert rows[0]["name"] == "p2p-long" and rows[0]["run_dir"] == str(senv.runs / "long")
    assert rows[0]["max_steps"] == 100000 and rows[0]["img_per_s"] > 0
    assert Path(rows[0]["stderr"]).exists()
    table = senv.p2p("jobs")
    assert table.returncode == 0 and job_id in table.stdout and "RUNNING" in table.stdout, table.stdout

    cancel = senv.p2p("cancel", job_id)
    assert cancel.returncode == 0, cancel.stderr
    assert f"cancelled job {job_id}" in cancel.stdout
    wait_for(lambda: sacct_state(job_id) == "CANCELLED", 60, "the job to be CANCELLED")
    assert json.loads(senv.p2p("jobs", "--json", job_id).stdout)[0]["state"] == "CANCELLED"
    # The trainer's SIGTERM handler saved where it stopped.
    wait_for(lambda: (senv.runs / "long" / "checkpoints" / "last.pt").exists(), 20, "last.pt after cancel")

    again = senv.p2p("cancel", job_id)
    assert again.returncode == 0 and "already ended: CANCELLED" in again.stdout
    unknown = senv.p2p("cancel", "99999999")
    assert unknown.returncode == 2 and "unknown job id 99999999" in unknown.stderr, unknown.stderr
    assert senv.p2p("cancel", "abc").returncode == 2


@pytest.mark.parametrize("args, message, needs_slurm", [
    (["slurm.nodez=2"], "did you mean slurm.nodes?", False),
    (["slurm.time_min=1"], "slurm.signal_delay_s=120: must be shorter than the time limit", False),
    (["data.source=/nonexistent/images"], "data.source='/nonexistent/images': no such folder", False),
    (["--sweep", "optim.lr"], "expected key=value1,value2", False),
    (["--sweep", "slurm.nodes=1,2"], "sweep other keys", False),
    (["--timeout", "5"], "--timeout only applies with --wait", False),
    (["no-sbatch"], "Slurm is not available here (no sbatch/srun on PATH)", False),
    (["slurm.partition=no-such-partition"], "sbatch refused the job: sbatch: error: invalid partition", True),
])
def test_invalid_submissions_exit_2_before_anything_is_queued(senv, args, message, needs_slurm):
    env = {}
    if args == ["no-sbatch"]:  # a machine without Slurm: only the venv's programs on PATH
        args, env = [], {"PATH": str(Path(sys.executable).parent)}
    proc = senv.p2p("submit", f"run.out_dir={senv.runs}", *args, **env)
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert message in proc.stderr and len(proc.stderr.strip().splitlines()) == 1, proc.stderr
    assert not senv.registry.exists() and not senv.runs.exists()


def test_plain_sbatch_script_two_nodes_with_requeue(senv):
    """slurm/train.sbatch: 2 nodes via srun + p2p.dist's Slurm detection; USR2 mid-run makes the
    script requeue the job, which resumes and completes."""
    max_steps = 120
    run_dir = senv.runs / "sb"
    log = senv.tmp / "sbatch.out"
    sub = subprocess.run(
        ["sbatch", "--parsable", "-p", "debug", "-N2", "--ntasks-per-node=1", "--cpus-per-task=1", "--time=5",
         "-o", str(log), str(ROOT / "slurm" / "train.sbatch"),
         *TINY, "train.log_every=1", f"train.max_steps={max_steps}", f"run.out_dir={senv.runs}", "run.name=sb"],
        capture_output=True, text=True, timeout=30, env=p2p_env(P2P_PYTHON=sys.executable), cwd=senv.tmp)
    assert sub.returncode == 0, sub.stderr
    job_id = sub.stdout.strip().split(";")[0]
    try:
        wait_for(lambda: len(metrics(run_dir)) >= 3, 90, "the first training steps")
        # `p2p jobs` shows p2p-named jobs it did not submit too (run folder unknown, log known).
        listed = {r["job_id"]: r for r in json.loads(senv.p2p("jobs", "--json").stdout)}
        assert listed[job_id]["name"] == "p2p-train" and listed[job_id]["stdout"] == str(log), listed
        subprocess.run(["scancel", "--signal=USR2", job_id], check=True, timeout=20)
        wait_for(lambda: sacct_state(job_id) in TERMINAL, 150, "the requeued job to end", poll=1)
    finally:
        if sacct_state(job_id) not in TERMINAL:
            subprocess.run(["scancel", job_id], timeout=20, check=False)
    text = log.read_text()
    assert final_state(job_id) == "COMPLETED", text[-3000:]
    assert sacct_rows(job_id, duplicates=True) == ["REQUEUED", "COMPLETED"]
    rows = metrics(run_dir)
    assert {r["world_size"] for r in rows} == {2}
    assert [r["step"] for r in rows] == list(range(1, max_steps + 1))
    assert "requeueing job" in text and "restart 1" in text and "(resumed)" in text and "p2p: run complete" in text
