"""`p2p submit` / `p2p jobs` / `p2p cancel` and slurm/train.sbatch on the real local Slurm cluster
(`slurm/local-cluster up`: node1 + node2 in partition `debug`, with accounting).

Tests marked `slurm` need the cluster: without one they are skipped, or fail when
P2P_REQUIRE_SLURM=1. The others (dry runs, submissions refused before sbatch, the job's pickle)
need none and run under `-m "not slurm"` too. Every wait is bounded, and every job a test submitted is cancelled at teardown if it still runs. Jobs run
this checkout's p2p with this interpreter (`sys.executable`; PYTHONPATH points here too).
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

from helpers.runs import ROOT, TINY, load_ckpt, p2p_env, wait_for
from helpers.requirements import require_slurm
from helpers.slurm_jobs import SLURM, TERMINAL, final_state, metrics, sacct_rows, sacct_state, submitted_id

pytestmark = pytest.mark.slow



# PATH for a machine without Slurm: only the venv's programs.
NO_SLURM_PATH = str(Path(sys.executable).parent)


@pytest.fixture(autouse=True)
def _cluster(request):
    if request.node.get_closest_marker("slurm"):
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


def logs(folder: Path, pattern: str) -> str:
    return "\n".join(p.read_text() for p in sorted(folder.glob(pattern)))


def squeue_state(job_id: str) -> str:
    out = subprocess.run(["squeue", "-h", "-j", job_id, "-o", "%T"], capture_output=True, text=True, timeout=20).stdout
    return out.strip()


def saved_steps(err: str) -> list[int]:
    """Steps the trainer saved on a signal, from its log."""
    return [int(s) for s in re.findall(r"received SIGUSR2: saved step (\d+)", err)]


def signal_early(job_id: str, run_dir: Path, max_steps: int) -> int:
    """USR2 once the job trains, and long before it could finish: the test is about what happens
    mid-run, so a job that got close to max_steps first fails here instead of racing the signal."""
    wait_for(lambda: len(metrics(run_dir)) >= 3, 90, "the first training steps")
    step = metrics(run_dir)[-1]["step"]
    assert step < max_steps // 4, f"step {step} of {max_steps} before the signal: raise max_steps for this machine"
    subprocess.run(["scancel", "--signal=USR2", job_id], check=True, timeout=20)
    return step


# --------------------------------------------------------------------------------------


@pytest.mark.slurm
def test_two_node_job_completes_with_world_size_2(senv):
    args = senv.overrides("two", "train.max_steps=6", "slurm.nodes=2", "slurm.tasks_per_node=1")
    dry = senv.p2p("submit", "--dry-run", *args)
    assert dry.returncode == 0, dry.stderr
    proc = senv.p2p("submit", *args, "--wait", "--timeout", "150", timeout=200)
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
    script = (run_dir / "slurm" / f"{job_id}_submission.sh").read_text()
    assert sys.executable in script
    assert dry.stdout == script, "--dry-run printed another script than the one submitted"


@pytest.mark.slurm
def test_usr2_checkpoints_requeues_and_resumes_without_losing_a_step(senv):
    """`scancel --signal=USR2` is what Slurm sends before a time limit: the 2-rank job saves,
    requeues itself (same id), resumes from last.pt and logs every step exactly once."""
    max_steps = 200
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
        signal_early(job_id, run_dir, max_steps)
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
    saved = saved_steps(err)
    assert len(saved) == 1 and 0 < saved[0] < max_steps // 2, err[-3000:]  # the signal landed mid-run
    assert f"step {saved[0]} -> {max_steps}" in err and "(resumed)" in err, err[-3000:]
    out = logs(run_dir / "slurm", f"{job_id}_0_log.out")
    assert "Requeued job" in out and "restart 1 (requeues by p2p: 1)" in out, out
    assert "rank 1 stopped (SIGUSR2)" in logs(run_dir / "slurm", f"{job_id}_1_log.out")
    assert sacct_rows(job_id, duplicates=True) == ["REQUEUED", "COMPLETED"]


@pytest.mark.slurm
def test_sweep_runs_as_array_with_one_run_folder_per_element(senv):
    args = [*senv.overrides("sw", "train.max_steps=4"), "--sweep", "optim.lr=0.0002,0.0001"]
    dry = senv.p2p("submit", "--dry-run", *args)
    assert dry.returncode == 0, dry.stderr
    proc = senv.p2p("submit", *args, "--wait", "--timeout", "150", timeout=200)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    array_id = submitted_id(proc.stdout)
    script = (senv.runs / "sw-sweep" / "slurm" / f"{array_id}_submission.sh").read_text()
    assert "#SBATCH --array=0-1%2" in script
    assert dry.stdout == script, "--dry-run printed another script than the array submitted"
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


@pytest.mark.slurm
def test_wait_timeout_exits_124_and_leaves_the_job_running(senv):
    proc = senv.p2p("submit", *senv.overrides("slow", "train.max_steps=100000"), "--wait", "--timeout", "8")
    assert proc.returncode == 124, proc.stdout + proc.stderr
    job_id = submitted_id(proc.stdout)
    assert f"stopped waiting after 8 s; still running: {job_id}" in proc.stdout, proc.stdout
    assert squeue_state(job_id) in {"PENDING", "RUNNING"}, "the job left the queue when p2p stopped waiting"
    # Still training after p2p exited: new steps appear while squeue says RUNNING.
    seen = len(metrics(senv.runs / "slow"))
    wait_for(lambda: len(metrics(senv.runs / "slow")) > seen + 2 and squeue_state(job_id) == "RUNNING", 90,
             "the job to keep training after p2p stopped waiting")
    cancel = senv.p2p("cancel", job_id)
    assert cancel.returncode == 0, cancel.stderr
    wait_for(lambda: sacct_state(job_id) == "CANCELLED", 60, "the job to be CANCELLED")


@pytest.mark.slurm
def test_out_of_requeues_stops_cleanly_and_resubmitting_resumes(senv):
    """slurm.max_requeues=1: the first USR2 requeues and resumes, the second saves and ends the
    job FAILED with one line (no traceback); the same `p2p submit` then continues from last.pt."""
    max_steps = 100000  # never reached: each start ends with a signal (or train.stop_after below)
    run_dir = senv.runs / "mr"
    args = senv.overrides("mr", f"train.max_steps={max_steps}", "train.log_every=1", "slurm.max_requeues=1")
    proc = senv.p2p("submit", *args)
    assert proc.returncode == 0, proc.stderr
    job_id = submitted_id(proc.stdout)
    err_log = run_dir / "slurm" / f"{job_id}_0_log.err"

    signal_early(job_id, run_dir, max_steps)
    first = wait_for(lambda: saved_steps(err_log.read_text()) if err_log.exists() else None, 60, "the first save")[0]
    # Requeued (cred_expire: about 20 s in the queue), resumed from the saved step, training again.
    wait_for(lambda: "(resumed)" in err_log.read_text() and metrics(run_dir)[-1]["step"] >= first + 3, 120,
             "the requeued job to resume and train")
    assert sacct_rows(job_id, duplicates=True)[0] == "REQUEUED"
    assert f"step {first} -> {max_steps}" in err_log.read_text()
    subprocess.run(["scancel", "--signal=USR2", job_id], check=True, timeout=20)
    assert final_state(job_id, timeout=60) == "FAILED"
    assert sacct_rows(job_id, duplicates=True) == ["REQUEUED", "FAILED"]

    err = err_log.read_text()
    saved = saved_steps(err)
    assert len(saved) == 2 and saved[0] == first < saved[1], err[-3000:]
    assert load_ckpt(run_dir / "checkpoints" / "last.pt")["step"] == saved[1] == metrics(run_dir)[-1]["step"]
    stop_lines = [ln for ln in err.splitlines() if "not requeued" in ln]
    assert stop_lines == [f"p2p job: SIGUSR2: step {saved[1]} saved to {run_dir / 'checkpoints' / 'last.pt'}; "
                          f"not requeued: requeued 1 time(s) already (slurm.max_requeues=1); the same "
                          f"`p2p submit` command (same run.name) resumes it"], err[-3000:]
    assert "Traceback" not in err, err[-3000:]
    assert "restart 1 (requeues by p2p: 1)" in logs(run_dir / "slurm", f"{job_id}_0_log.out")

    again = senv.p2p("submit", *args, "train.stop_after=3", "--wait", "--timeout", "120", timeout=180)
    assert again.returncode == 0, again.stdout + again.stderr
    assert f"note: {run_dir / 'checkpoints' / 'last.pt'} exists: the job resumes from it" in again.stdout
    new_err = (run_dir / "slurm" / f"{submitted_id(again.stdout)}_0_log.err").read_text()
    assert f"step {saved[1]} -> {max_steps}" in new_err and "(resumed)" in new_err, new_err[-3000:]
    assert [r["step"] for r in metrics(run_dir)] == list(range(1, saved[1] + 4)), "steps lost or repeated"


@pytest.mark.slurm
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


@pytest.mark.slurm
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
    # The trainer's SIGTERM handler saved the step it stopped at: no trained step is lost.
    last = senv.runs / "long" / "checkpoints" / "last.pt"
    wait_for(last.exists, 20, "last.pt after cancel")
    assert load_ckpt(last)["step"] == metrics(senv.runs / "long")[-1]["step"] > 0
    # ... and said so in one line, without a traceback.
    err_log = senv.runs / "long" / "slurm" / f"{job_id}_0_log.err"
    wait_for(lambda: "p2p job: SIGTERM" in err_log.read_text(), 20, "the job's line about the SIGTERM")
    err = err_log.read_text()
    assert [ln for ln in err.splitlines() if ln.startswith("p2p job: SIGTERM")] == [
        f"p2p job: SIGTERM: step {load_ckpt(last)['step']} saved to {last}; the job was cancelled or preempted: "
        f"the same `p2p submit` command (same run.name) resumes it"], err[-3000:]
    assert "Traceback" not in err, err[-3000:]

    again = senv.p2p("cancel", job_id)
    assert again.returncode == 0 and "already ended: CANCELLED" in again.stdout
    unknown = senv.p2p("cancel", "99999999")
    assert unknown.returncode == 2 and "unknown job id 99999999" in unknown.stderr, unknown.stderr
    assert senv.p2p("cancel", "abc").returncode == 2


@pytest.mark.parametrize("args, message", [
    (["slurm.nodez=2"], "did you mean slurm.nodes?"),
    (["slurm.time_min=1"], "slurm.signal_delay_s=120: must be shorter than the time limit"),
    (["data.source=/nonexistent/images"], "data.source='/nonexistent/images': no such folder"),
    (["--sweep", "optim.lr"], "expected key=value1,value2"),
    (["--sweep", "slurm.nodes=1,2"], "sweep other keys"),
    (["--timeout", "5"], "--timeout only applies with --wait"),
    (["--dry-run", "--wait"], "--dry-run submits nothing, so there is nothing to --wait for"),
    (["slurm.nodez=2", "--dry-run"], "did you mean slurm.nodes?"),
    # A key after an option, after run.out_dir: positionals and options mix in any order.
    (["--dry-run", "slurm.nodez=2"], "did you mean slurm.nodes?"),
    (["data.source=/nonexistent/images", "--dry-run"], "data.source='/nonexistent/images': no such folder"),
    (["no-sbatch"], "Slurm is not available here (no sbatch/srun on PATH)"),
    pytest.param(["slurm.partition=no-such-partition"], "sbatch refused the job: sbatch: error: invalid partition",
                 marks=pytest.mark.slurm),
])
def test_invalid_submissions_exit_2_before_anything_is_queued(senv, args, message):
    env = {}
    if args == ["no-sbatch"]:  # a machine without Slurm: only the venv's programs on PATH
        args, env = [], {"PATH": NO_SLURM_PATH}
    proc = senv.p2p("submit", f"run.out_dir={senv.runs}", *args, **env)
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert message in proc.stderr and len(proc.stderr.strip().splitlines()) == 1, proc.stderr
    assert not senv.registry.exists() and not senv.runs.exists()


def dry_run(senv, *args) -> subprocess.CompletedProcess:
    """`p2p submit --dry-run` on a machine without Slurm; nothing may be created."""
    proc = senv.p2p("submit", "--dry-run", f"run.out_dir={senv.runs}", *args, PATH=NO_SLURM_PATH)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert proc.stdout.startswith("#!/bin/bash\n"), proc.stdout
    assert not senv.runs.exists() and not senv.registry.exists()
    return proc


def test_dry_run_prints_the_job_script_with_every_slurm_option(senv):
    proc = dry_run(senv, "run.name=dry", "slurm.nodes=2", "slurm.gpus_per_node=4", "slurm.cpus_per_task=3",
                   "slurm.mem_gb=16", "slurm.partition=gpu", "slurm.time_min=240", "slurm.signal_delay_s=90",
                   "slurm.account=proj", "slurm.qos=high", "slurm.constraint=h100", "slurm.extra.exclusive=true",
                   "slurm.extra.mail-type=END", "slurm.extra.requeue=false")
    lines = proc.stdout.splitlines()
    folder = senv.runs / "dry" / "slurm"
    for line in ("#SBATCH --nodes=2", "#SBATCH --gpus-per-node=4",
                 "#SBATCH --ntasks-per-node=4",  # tasks_per_node=0: one process per GPU
                 "#SBATCH --cpus-per-task=3", "#SBATCH --mem=16GB", "#SBATCH --partition=gpu", "#SBATCH --time=240",
                 "#SBATCH --signal=USR2@90", "#SBATCH --account=proj", "#SBATCH --qos=high",
                 "#SBATCH --constraint=h100", "#SBATCH --exclusive", "#SBATCH --mail-type=END",
                 "#SBATCH --job-name=p2p-dry", f"#SBATCH --output={folder}/%j_0_log.out",
                 f"#SBATCH --error={folder}/%j_0_log.err", "export OMP_NUM_THREADS=3"):
        assert line in lines, f"{line!r} missing from:\n{proc.stdout}"
    assert not any("--requeue" in ln or "--array" in ln for ln in lines), proc.stdout  # false drops an option
    srun = [ln for ln in lines if ln.startswith("srun ")]
    assert len(srun) == 1 and "--kill-on-bad-exit=1 --cpus-per-task=3" in srun[0], proc.stdout
    assert srun[0].endswith(f"{sys.executable} -u -m submitit.core._submit {folder}"), srun[0]
    assert "nothing queued" in proc.stderr and f"run folder {senv.runs / 'dry'}" in proc.stderr, proc.stderr


def test_dry_run_of_a_sweep_prints_the_array_script(senv):
    proc = dry_run(senv, "run.name=dsw", "slurm.array_parallelism=2", "slurm.tasks_per_node=2",
                   "slurm.gpus_per_node=4", "--sweep", "optim.lr=0.1,0.2,0.3")
    lines = proc.stdout.splitlines()
    folder = senv.runs / "dsw-sweep" / "slurm"
    for line in ("#SBATCH --array=0-2%2", "#SBATCH --ntasks-per-node=2", f"#SBATCH --error={folder}/%A_%a_0_log.err"):
        assert line in lines, f"{line!r} missing from:\n{proc.stdout}"
    assert "array of 3" in proc.stderr, proc.stderr
    for lr in ("0.1", "0.2", "0.3"):
        assert f"optim.lr={lr}: run folder {senv.runs / f'dsw-optim.lr={lr}'}" in proc.stderr, proc.stderr


def test_submitted_job_unpickles_from_the_library_alone(senv):
    """What sbatch's tasks load: submitit pickles the TrainJob by reference to its module, so a
    fresh interpreter must find it as p2p.slurm.job, without the command-line side."""
    from submitit.core.utils import DelayedSubmission

    from p2p.slurm.job import TrainJob
    from p2p.slurm.submission import plan

    sub = plan([*senv.overrides("pk"), "slurm.max_requeues=2"], [], dry_run=True)
    pickle = senv.tmp / "submitted.pkl"
    DelayedSubmission(TrainJob(sub.trees[0])).dump(pickle)
    code = ("import sys; from submitit.core.utils import DelayedSubmission; "
            f"job = DelayedSubmission.load({str(pickle)!r}).function; again = job.checkpoint().function; "
            "print(type(job).__module__, type(job).__name__, job.config['run']['name'], again.requeues, "
            "again.config['run']['resume'], sorted(m for m in sys.modules if m.startswith('p2p.cli')))")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60,
                          env=senv.env(), cwd=senv.tmp)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.split(None, 5) == ["p2p.slurm.job", "TrainJob", "pk", "1", "True", "[]\n"], proc.stdout


@pytest.mark.slurm
def test_plain_sbatch_script_two_nodes_with_requeue(senv):
    """slurm/train.sbatch: 2 nodes via srun + p2p.dist's Slurm detection; USR2 mid-run makes the
    script requeue the job, which resumes and completes."""
    max_steps = 200
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
        signal_early(job_id, run_dir, max_steps)
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
    saved = saved_steps(text)
    assert len(saved) == 1 and 0 < saved[0] < max_steps // 2, text[-3000:]  # the signal landed mid-run
    assert "requeueing job" in text and "restart 1" in text and "(resumed)" in text and "p2p: run complete" in text


def test_the_requeue_outlives_the_sigterm_that_ends_the_step(tmp_path):
    """When a task dies, srun SIGTERMs every process of the step, the requeueing task's
    `scontrol requeue` child included (it failed a requeue on the local cluster). Here a stand-in
    `scontrol` on PATH takes 1 s and the whole process group gets SIGTERM meanwhile: the requeue
    must still finish. No cluster needed: the signal is the real one, only scontrol is stood in."""
    import os
    import signal

    bin_dir, started, marker = tmp_path / "bin", tmp_path / "started", tmp_path / "requeued"
    bin_dir.mkdir()
    (bin_dir / "scontrol").write_text(f"#!/bin/sh\ntouch {started}\nsleep 1\necho \"$@\" > {marker}\n")
    (bin_dir / "scontrol").chmod(0o755)
    env = {**p2p_env(), "PATH": f"{bin_dir}:{os.environ['PATH']}"}
    code = "from p2p.slurm.job import _requeue; _requeue('42'); print('done', flush=True)"
    proc = subprocess.Popen([sys.executable, "-c", code], env=env, cwd=ROOT, start_new_session=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    wait_for(started.exists, 60, "the stand-in scontrol to start")
    os.killpg(proc.pid, signal.SIGTERM)  # the step's end: every process of the group
    out, err = proc.communicate(timeout=30)
    assert marker.read_text().split() == ["requeue", "42"], err
    assert proc.returncode == 0 and "done" in out, err
