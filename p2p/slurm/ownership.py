"""Whether a Slurm job is the job a registry row recorded: what `p2p cancel` checks before it
acts, so that it stops only this user's p2p jobs.

A registry row is a claim (a line in a file anyone with the user's rights can edit, about a job
id that a re-installed cluster hands out again); Slurm is the witness. A job is confirmed when
Slurm's record of it (squeue for the live job, sacct for every run of a requeued one) has
- this process's user id (root too: root's p2p never cancels another user's job),
- the job name the row recorded, a p2p name (`p2p-<run.name>`),
- the working directory `p2p submit` ran sbatch in (the row's `workdir`),
- a submit time inside the window the row recorded around sbatch (SLACK_S either side, for
  clocks), or, for a requeued job, the first run's submit time (Slurm gives each requeue a new
  one; sacct keeps the earlier runs, which squeue does not).
"""

from __future__ import annotations

import datetime
import os
import re
from dataclasses import dataclass

from p2p.slurm.sacct import array_ids, run_slurm

SLACK_S = 10
# Rows written before the window was recorded carry only `submitted` (local time, to the
# second, taken after sbatch returned).
OLD_ROW_WINDOW_S = 120
# states with which a run of a job ends when Slurm starts it again under the same id
REQUEUED_STATES = {"REQUEUED", "PREEMPTED", "NODE_FAIL"}


@dataclass
class SlurmRecord:
    job_id: str
    uid: int | None
    name: str
    submit: int | None  # seconds since the epoch
    workdir: str
    state: str


def _records(cmd: list[str]) -> list[SlurmRecord]:
    # times as epoch seconds: no time zone between the submitting shell and this one
    proc = run_slurm(cmd, env={**os.environ, "SLURM_TIME_FORMAT": "%s"})
    out = []
    for line in proc.stdout.splitlines() if proc.returncode == 0 else []:
        parts = line.split("|")
        if len(parts) < 6:
            continue
        jid, uid, name, submit, workdir, state = (p.strip() for p in parts[:6])
        for j in array_ids(jid):
            out.append(SlurmRecord(j, int(uid) if uid.isdigit() else None, name,
                                   int(submit) if submit.isdigit() else None, workdir,
                                   state.split()[0] if state else "UNKNOWN"))
    return out


def slurm_records(job_id: str) -> list[SlurmRecord]:
    """Every record Slurm has of `job_id` (an array id: of each element): sacct's runs, oldest
    first, then squeue's live one (sacct lags behind the controller)."""
    fields = "JobID,UID,JobName,Submit,WorkDir,State"
    runs = _records(["sacct", "-X", "-D", "-n", "-P", "-o", fields, "-j", job_id])
    live = _records(["squeue", "-h", "-r", "-t", "all", "-o", "%i|%U|%j|%V|%Z|%T", "-j", job_id])
    return runs + live


def recorded_window(row: dict) -> tuple[float, float] | None:
    """When the row says sbatch ran: (earliest, latest) in epoch seconds, or None."""
    window = row.get("submit_window")
    if isinstance(window, list) and len(window) == 2 and all(isinstance(t, (int, float)) for t in window):
        return float(window[0]), float(window[1])
    try:
        when = datetime.datetime.fromisoformat(str(row.get("submitted"))).timestamp()
    except ValueError:
        return None
    return when - OLD_ROW_WINDOW_S, when


def _when(epoch: int | None) -> str:
    return "?" if epoch is None else datetime.datetime.fromtimestamp(epoch).isoformat(timespec="seconds")


def _user(uid: int | None) -> str:
    import pwd

    try:
        return pwd.getpwuid(uid).pw_name if uid is not None else "?"
    except KeyError:
        return f"uid {uid}"


def refusal(row: dict, records: list[SlurmRecord]) -> str | None:
    """Why the job of registry `row` is not the job Slurm has under its id (None: it is)."""
    job_id = row["job_id"]
    mine = [r for r in records if r.job_id == job_id]
    if not mine:
        return f"Slurm does not know job {job_id} (any more)"
    current = mine[-1]
    workdir = row.get("workdir") or row.get("cwd")
    window = recorded_window(row)
    if workdir is None or window is None:
        return (f"the registry row of job {job_id} does not say where and when it was submitted (an older p2p "
                f"wrote it)")
    said = (f"Slurm has job {job_id} as {current.name!r} of user {_user(current.uid)}, submitted "
            f"{_when(current.submit)} in {current.workdir}")
    if current.uid != os.getuid():
        return f"{said}: not your job"
    if current.name != row.get("name") or not re.fullmatch(r"p2p-.+", current.name):
        return f"{said}, not the p2p job {row.get('name')!r} the registry recorded"
    if os.path.normpath(current.workdir) != os.path.normpath(workdir):
        return f"{said}; the registry recorded {workdir}"
    chain = [current]  # this run, and the runs it continues (requeues keep the id, not the submit time)
    for earlier in reversed(mine[:-1]):
        if earlier.state not in REQUEUED_STATES and earlier.submit != chain[-1].submit:
            break
        chain.append(earlier)
    lo, hi = window
    if not any(r.submit is not None and lo - SLACK_S <= r.submit <= hi + SLACK_S for r in chain):
        return (f"{said}; the registry recorded a submission at {_when(int(hi))}: another job has this id now "
                f"(job ids start over when a cluster is reinstalled)")
    return None
