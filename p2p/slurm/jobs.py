"""What `p2p jobs` lists and `p2p cancel` stops: the registry's jobs (and p2p-named jobs Slurm
knows that the registry does not, e.g. from slurm/train.sbatch: listed, never cancelled) with
their Slurm state and the last metrics of their run folder."""

from __future__ import annotations

import re
from dataclasses import dataclass, field

from p2p.errors import UsageError
from p2p.slurm.ownership import refusal, slurm_records
from p2p.slurm.registry import read_registry, registry_path, select
from p2p.slurm.sacct import (TERMINAL, last_metrics, query_states, run_slurm, slurm_name,
                             unregistered_p2p_jobs)


def find_jobs(ids: list[str], last: int) -> list[dict]:
    """Registry rows of these ids (of the `last` most recent submissions when no id is given,
    all when `last` <= 0), then the unregistered p2p jobs. An id no one knows is a UsageError."""
    rows = read_registry()
    known = {r["job_id"] for r in rows}
    if ids:
        rows = select(rows, ids)
        others = [i for i in ids if not select(rows, [i])]
        rows += unregistered_p2p_jobs(known, others) if others else []
        unknown = [i for i in ids if not select(rows, [i])]
        if unknown:
            raise UsageError(f"unknown job id {', '.join(unknown)}: Slurm knows no p2p job by that id "
                             f"(registry {registry_path()})")
        return rows
    rows = rows[-last:] if last > 0 else rows
    return rows + unregistered_p2p_jobs(known, None)


def job_status(rows: list[dict]) -> list[dict]:
    """One dict per job: its registry row joined with Slurm's state and the run's last metrics
    (what `p2p jobs --json` prints)."""
    states = query_states([r["job_id"] for r in rows])
    out = []
    for r in rows:
        st = states.get(r["job_id"], {})
        row = last_metrics(r["run_dir"]) if r["run_dir"] else {}
        out.append({
            "job_id": r["job_id"], "name": r.get("name", ""), "state": st.get("state", "UNKNOWN"),
            "exit_code": st.get("exit_code", ""), "elapsed": st.get("elapsed", ""), "nodes": st.get("nodes", ""),
            "restarts": st.get("restarts", 0), "step": row.get("step"), "max_steps": r.get("max_steps"),
            "img_per_s": row.get("img_per_s"), "metrics": row, "run_dir": r["run_dir"],
            "stdout": r.get("stdout"), "stderr": r.get("stderr"), "submitted": r.get("submitted"),
            "sweep": r.get("sweep"), **({"note": r["note"]} if "note" in r else {}),
        })
    return out


@dataclass
class CancelTarget:
    job_id: str
    name: str | None
    registered: list[dict] = field(default_factory=list)  # its registry rows (an array: every element)


@dataclass
class Cancelled:
    target: CancelTarget
    state: str | None  # before the cancel
    done: bool  # scancel ran and succeeded
    error: str = ""  # why scancel failed

    @property
    def already_ended(self) -> bool:
        return self.state in TERMINAL


def cancel_targets(ids: list[str]) -> list[CancelTarget]:
    """The jobs to cancel, all checked before any is: each id must be in the registry, and Slurm
    must confirm that the job under it is the one recorded there, this user's p2p job
    (p2p.slurm.ownership); anything else is a UsageError naming what Slurm has instead."""
    for job_id in ids:
        if not re.fullmatch(r"\d+(_\d+)?", job_id):
            raise UsageError(f"{job_id!r} is not a Slurm job id (like 1234 or 1234_0); see `p2p jobs`")
    rows = read_registry()
    targets = []
    for job_id in ids:
        mine = select(rows, [job_id])
        if not mine:
            name = slurm_name(job_id)
            if name is None:
                raise UsageError(f"unknown job id {job_id}: Slurm does not know it and the registry has no row for it "
                                 f"(see `p2p jobs`)")
            raise UsageError(f"job {job_id} ({name}) is not in the p2p registry ({registry_path()}): p2p cancel stops "
                             f"only jobs that `p2p submit` queued; nothing cancelled")
        records = slurm_records(job_id)
        confirmed = []
        for element in dict.fromkeys(r["job_id"] for r in mine):  # an array: each element; newest row first
            candidates = [r for r in reversed(mine) if r["job_id"] == element]
            why = [refusal(r, records) for r in candidates]
            if all(why):
                raise UsageError(f"job {element} is not the job the p2p registry recorded: {why[0]}; nothing cancelled")
            confirmed.append(candidates[why.index(None)])
        targets.append(CancelTarget(job_id, confirmed[0].get("name"), confirmed))
    return targets


def cancel(target: CancelTarget) -> Cancelled:
    """scancel the job (an array: its confirmed elements) unless it already ended. Slurm sends
    the tasks SIGTERM: a running trainer saves checkpoints/last.pt on the way out."""
    ids = [r["job_id"] for r in target.registered]
    known = query_states(ids)
    states = {i: known.get(i, {}).get("state") for i in ids}
    alive = [i for i in ids if states[i] not in TERMINAL]
    if not alive:
        return Cancelled(target, states[ids[0]], False)
    proc = run_slurm(["scancel", *alive])
    if proc.returncode != 0:
        return Cancelled(target, states[alive[0]], False, (proc.stderr or proc.stdout).strip())
    return Cancelled(target, states[alive[0]], True)
