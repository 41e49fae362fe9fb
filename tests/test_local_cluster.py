"""Tests against the real local Slurm cluster started by ``slurm/local-cluster up``.

Every test here needs a running cluster (two slurmd "nodes", node1 and node2, in partition
``debug``, with accounting). Without one they are skipped, unless ``P2P_REQUIRE_SLURM=1``
is set (as CI does), in which case they fail. Every wait is bounded.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

PARTITION = "debug"
NODES = ["node1", "node2"]


# --------------------------------------------------------------------------------------
# Skip / require logic: shared with the other Slurm tests (tests/helpers/requirements.py).

from helpers.requirements import require_module, require_slurm  # noqa: E402


@pytest.fixture(autouse=True)
def _slurm_cluster() -> None:
    require_slurm()


pytestmark = pytest.mark.slurm


# --------------------------------------------------------------------------------------
# Helpers


def run(cmd: list[str], timeout: float = 60) -> str:
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
    assert proc.returncode == 0, f"{' '.join(cmd)} exited {proc.returncode}: {proc.stderr.strip()}"
    return proc.stdout


def sacct_state(job_id: str) -> str:
    out = run(["sacct", "-j", job_id, "-X", "-n", "-P", "-o", "State"], timeout=20).strip()
    return out.splitlines()[0].split()[0] if out else ""


def wait_sacct_state(job_id: str, wanted: set[str], timeout: float) -> str:
    """Poll sacct until the job's state is in `wanted`; cancel the job and fail on timeout."""
    terminal = {"COMPLETED", "FAILED", "CANCELLED", "TIMEOUT", "NODE_FAIL", "OUT_OF_MEMORY", "BOOT_FAIL", "DEADLINE"}
    deadline = time.monotonic() + timeout
    state = ""
    while time.monotonic() < deadline:
        state = sacct_state(job_id)
        if state in wanted:
            return state
        if state in terminal:
            pytest.fail(f"job {job_id} ended in state {state}, wanted one of {sorted(wanted)}")
        time.sleep(0.5)
    subprocess.run(["scancel", job_id], timeout=20, check=False)
    pytest.fail(f"job {job_id} not in {sorted(wanted)} within {timeout:.0f}s (last state {state or 'unknown'})")


def wait_submitit(job, timeout: float) -> None:
    """Wait (bounded) until a submitit job is done; cancel it and fail with its logs otherwise."""
    deadline = time.monotonic() + timeout
    while not job.done(force_check=True):
        if time.monotonic() > deadline:
            job.cancel(check=False)
            pytest.fail(
                f"submitit job {job.job_id} not done within {timeout:.0f}s (state {job.state})\n"
                f"stdout:\n{job.stdout()}\nstderr:\n{job.stderr()}"
            )
        time.sleep(1)


@pytest.fixture
def executor(tmp_path: Path):
    submitit = require_module("submitit")
    cloudpickle = require_module("cloudpickle")
    # The job's Python cannot import this test module (pytest puts tests/ on sys.path only
    # in this process), so ship its functions and classes by value.
    cloudpickle.register_pickle_by_value(sys.modules[__name__])
    ex = submitit.AutoExecutor(folder=tmp_path / "submitit", cluster="slurm")
    ex.update_parameters(slurm_partition=PARTITION, timeout_min=30, cpus_per_task=1, mem_gb=2)
    yield ex
    cloudpickle.unregister_pickle_by_value(sys.modules[__name__])


# --------------------------------------------------------------------------------------
# Plain Slurm


def test_sinfo_lists_both_nodes_in_debug():
    out = run(["sinfo", "-h", "-N", "-p", PARTITION, "-o", "%N %P %t"], timeout=20)
    rows = {line.split()[0]: line.split()[1:] for line in out.splitlines() if line.strip()}
    assert sorted(rows) == NODES, out
    for node, (partition, state) in rows.items():
        assert partition.rstrip("*") == PARTITION, out
        assert state in {"idle", "mix", "alloc"}, f"{node} is {state}:\n{out}"
    # `debug` is the default partition (sinfo marks it with '*').
    assert any(p == f"{PARTITION}*" for p, _ in rows.values()), out


def test_srun_runs_one_task_per_node():
    out = run(
        ["srun", "-p", PARTITION, "-N2", "-n2", "--ntasks-per-node=1", "--time=1",
         "bash", "-c", 'echo "$SLURM_NODEID $SLURMD_NODENAME $SLURM_PROCID"'],
        timeout=60,
    )
    lines = sorted(line.split() for line in out.splitlines() if line.strip())
    # One task on each node: node ids 0/1 on node1/node2, task ranks 0 and 1.
    assert [line[:2] for line in lines] == [["0", "node1"], ["1", "node2"]], out
    assert sorted(line[2] for line in lines) == ["0", "1"], out


def test_sbatch_job_completes_in_sacct(tmp_path: Path):
    out_file = tmp_path / "out.txt"
    job_id = run(
        ["sbatch", "--parsable", "-p", PARTITION, "--time=1", "-o", str(out_file),
         "--wrap", "echo hello from $SLURMD_NODENAME"],
        timeout=30,
    ).strip().split(";")[0]
    assert job_id.isdigit(), job_id
    assert wait_sacct_state(job_id, {"COMPLETED"}, timeout=60) == "COMPLETED"
    deadline = time.monotonic() + 10
    while not out_file.exists() and time.monotonic() < deadline:
        time.sleep(0.2)
    assert out_file.read_text().startswith("hello from node"), out_file.read_text()


def test_oversubscribe_lets_two_jobs_share_node1(tmp_path: Path):
    """OverSubscribe=FORCE: two array elements, each asking for all CPUs of node1, run at once."""
    cpus = run(["sinfo", "-h", "-N", "-n", "node1", "-o", "%c"], timeout=20).split()[0]
    script = (
        f'touch {tmp_path}/started.$SLURM_ARRAY_TASK_ID; '
        f'for i in $(seq 100); do [ -e {tmp_path}/started.0 ] && [ -e {tmp_path}/started.1 ] && exit 0; sleep 0.2; done; exit 1'
    )
    job_id = run(
        ["sbatch", "--parsable", "-p", PARTITION, "-w", "node1", f"--cpus-per-task={cpus}",
         "--array=0-1", "--time=1", "-o", "/dev/null", "--wrap", script],
        timeout=30,
    ).strip().split(";")[0]
    for task in ("0", "1"):
        assert wait_sacct_state(f"{job_id}_{task}", {"COMPLETED"}, timeout=60) == "COMPLETED"


# --------------------------------------------------------------------------------------
# submitit


def _report_environment() -> dict:
    import submitit

    env = submitit.JobEnvironment()
    return {"global_rank": env.global_rank, "num_tasks": env.num_tasks, "hostnames": list(env.hostnames)}


def test_submitit_two_nodes_job_environment(executor):
    executor.update_parameters(nodes=2, tasks_per_node=1, name="p2p-test-env")
    job = executor.submit(_report_environment)
    wait_submitit(job, timeout=90)
    results = job.results()
    assert sorted(r["global_rank"] for r in results) == [0, 1], results
    assert {r["num_tasks"] for r in results} == {2}, results
    assert all(r["hostnames"] == NODES for r in results), results
    assert sacct_state(str(job.job_id)) == "COMPLETED"


def _load_state(path: str) -> dict:
    p = Path(path)
    return json.loads(p.read_text()) if p.exists() else {"done": [], "starts": []}


def _save_state(path: str, state: dict) -> None:
    tmp = Path(path + ".tmp")
    tmp.write_text(json.dumps(state))
    os.replace(tmp, path)  # atomic: a signal never leaves a half-written state


try:
    from submitit.helpers import Checkpointable as _Checkpointable
    from submitit.helpers import DelayedSubmission as _DelayedSubmission
except ImportError:  # submitit missing: the executor fixture skips or fails the tests that use it
    _Checkpointable = object  # type: ignore[assignment,misc]
    _DelayedSubmission = None  # type: ignore[assignment]


class SlowCounter(_Checkpointable):
    """Counts to `total`, one step every `step_s`, saving progress after each step."""

    def __call__(self, state_path: str, total: int, step_s: float, start: int = 0) -> list[int]:
        state = _load_state(state_path)
        assert len(state["done"]) == start, f"resumed at {start} but {len(state['done'])} steps were saved"
        state["starts"].append({"start": start, "restart_count": int(os.environ.get("SLURM_RESTART_COUNT", "0"))})
        _save_state(state_path, state)
        for i in range(start, total):
            time.sleep(step_s)
            state["done"].append(i)
            _save_state(state_path, state)
        return state["done"]

    def checkpoint(self, state_path: str, total: int, step_s: float, start: int = 0):
        # Called by submitit on USR2: resume from what was saved, not from the original start.
        saved = len(_load_state(state_path)["done"])
        return _DelayedSubmission(SlowCounter(), state_path, total, step_s, start=saved)


def test_submitit_checkpointable_requeued_on_usr2(executor, tmp_path: Path):
    total, step_s = 10, 0.5
    state_path = str(tmp_path / "counter.json")
    executor.update_parameters(nodes=1, tasks_per_node=1, name="p2p-test-requeue")
    job = executor.submit(SlowCounter(), state_path, total, step_s)
    job_id = str(job.job_id)

    def wait_state(ok, timeout: float, what: str) -> None:
        deadline = time.monotonic() + timeout
        while not ok(_load_state(state_path)):
            if time.monotonic() > deadline:
                job.cancel(check=False)
                pytest.fail(f"job {job_id}: {what} within {timeout:.0f} s (state {job.state})\n{job.stderr()}")
            time.sleep(0.2)

    # Let it make some progress, then "preempt" it.
    wait_state(lambda st: len(st["done"]) >= 2, 60, "no progress")
    run(["scancel", "--signal=USR2", job_id], timeout=20)
    # Requeued jobs wait AuthInfo cred_expire (20 s in slurm.conf) before they start again. Wait
    # for that second start before asking submitit: between the requeue and the restart, its
    # state can read as finished (seen once), and the wait below would give up at once.
    wait_state(lambda st: len(st["starts"]) >= 2, 120, "no second start after USR2")
    wait_submitit(job, timeout=120)
    done = job.result()
    state = _load_state(state_path)
    assert done == list(range(total)), state
    assert state["done"] == list(range(total)), f"progress lost or repeated: {state}"
    starts = state["starts"]
    assert len(starts) >= 2, f"job was not requeued: {state}\n{job.stderr()}"
    assert starts[0]["start"] == 0 and starts[1]["start"] >= 2, state
    assert starts[1]["restart_count"] >= 1, state
    assert sacct_state(job_id) == "COMPLETED"
