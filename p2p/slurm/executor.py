"""The submitit executor for a config, and the sbatch script it writes.

sbatch runs `srun --kill-on-bad-exit=1 python -m submitit.core._submit FOLDER` on every task,
which unpickles the submitted `p2p.slurm.job.TrainJob` and calls it. The script exports
OMP_NUM_THREADS=slurm.cpus_per_task and TORCH_NCCL_ASYNC_ERROR_HANDLING=1 (unless set: a rank
that times out in a collective tears its process down, and srun --kill-on-bad-exit=1 then ends
the whole step instead of leaving the others hanging). Everything else comes from the submitting
shell (sbatch's default --export=ALL): NCCL_SOCKET_IFNAME / GLOO_SOCKET_IFNAME (the interface the
nodes reach each other on, e.g. ib0 or eth0, when the first one found is wrong), NCCL_DEBUG=INFO.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import submitit

from p2p.config import Config
from p2p.errors import UsageError


class ScriptOnlyExecutor(submitit.SlurmExecutor):
    """A SlurmExecutor that exists without Slurm on this machine, for `p2p submit --dry-run`: it
    only builds scripts (submitit's own class refuses to start when srun is not on PATH)."""

    @classmethod
    def affinity(cls) -> int:
        return 2


def tasks_per_node(cfg: Config) -> int:
    s = cfg.slurm
    return s.tasks_per_node or s.gpus_per_node or 1


def setup_lines(cfg: Config) -> list[str]:
    """Shell lines the job script runs before srun (environment every task inherits)."""
    return [
        f"export OMP_NUM_THREADS={cfg.slurm.cpus_per_task}",
        "export TORCH_NCCL_ASYNC_ERROR_HANDLING=${TORCH_NCCL_ASYNC_ERROR_HANDLING:-1}",
    ]


def slurm_parameters(cfg: Config, name: str) -> dict:
    """SlurmExecutor parameters (sbatch option names, underscores for dashes) for this config."""
    s = cfg.slurm
    params = dict(
        job_name=name, nodes=s.nodes, ntasks_per_node=tasks_per_node(cfg), cpus_per_task=s.cpus_per_task,
        time=s.time_min, signal_delay_s=s.signal_delay_s, array_parallelism=s.array_parallelism,
        # A task that dies ends the step (no rank left waiting in a collective); srun in Slurm
        # 22.05 does not inherit --cpus-per-task from the allocation, so pass it again.
        srun_args=["--kill-on-bad-exit=1", f"--cpus-per-task={s.cpus_per_task}"],
        setup=setup_lines(cfg),
    )
    if s.gpus_per_node:
        params["gpus_per_node"] = s.gpus_per_node
    if s.mem_gb:
        params["mem"] = f"{s.mem_gb}GB"
    for key in ("partition", "account", "qos", "constraint"):
        if getattr(s, key):
            params[key] = getattr(s, key)
    extra = {k: v for k, v in s.extra.items() if v is not None and v is not False}
    if extra:
        params["additional_parameters"] = extra
    return params


def make_executor(cfg: Config, folder: Path, name: str, dry_run: bool = False):
    if dry_run:
        cls = ScriptOnlyExecutor
    elif shutil.which("sbatch") is None or shutil.which("srun") is None:
        raise UsageError("Slurm is not available here (no sbatch/srun on PATH): run `p2p submit` on a login "
                         "node of the cluster, or `p2p train` to train on this machine")
    else:
        cls = submitit.SlurmExecutor
    ex = cls(folder, max_num_timeout=cfg.slurm.max_requeues)  # creates nothing until a submission
    ex.update_parameters(**slurm_parameters(cfg, name))
    return ex


def submission_script(ex: submitit.SlurmExecutor, count: int) -> str:
    """The sbatch script that submitting `count` jobs through `ex` writes: one job, or a job array
    when `ex.batch()` holds several (what `p2p submit --dry-run` prints). Private submitit API
    (checked against 1.5): `_submit_command` writes `_make_submission_file_text(command, uid)` with
    command `_submitit_command_str`, and an array is submitted from a copy of the executor whose
    parameters say `map_count`."""
    script_ex = type(ex)(ex.folder, max_num_timeout=ex.max_num_timeout)
    script_ex.update_parameters(**ex.parameters)
    if count > 1:
        script_ex.parameters["map_count"] = count
    return script_ex._make_submission_file_text(script_ex._submitit_command_str, "dry-run")


def sbatch_refusal(e: Exception) -> UsageError:
    """One line out of what submitit raises when sbatch refuses a job (bad partition, account, limits)."""
    lines = [ln.strip() for ln in str(e).splitlines() if ln.strip()]
    why = next((ln for ln in lines if "error" in ln.lower() and "sbatch" in ln.lower()), lines[-1] if lines else repr(e))
    return UsageError(f"sbatch refused the job: {why}")
