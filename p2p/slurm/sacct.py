"""What Slurm says about jobs: states from sacct (then squeue for what sacct has not recorded
yet), p2p-named jobs the registry does not know, and what the run folders and logs say: the
last metrics row, the end of each task's log. Every Slurm command is bounded and never raises."""

from __future__ import annotations

import getpass
import json
import os
import re
import subprocess
from pathlib import Path

# Job states after which nothing more happens (sacct/squeue spelling).
TERMINAL = {"COMPLETED", "FAILED", "CANCELLED", "TIMEOUT", "NODE_FAIL", "OUT_OF_MEMORY", "BOOT_FAIL",
            "DEADLINE", "REVOKED", "SPECIAL_EXIT"}
# squeue knows a job from the moment sbatch returns: one that neither squeue nor sacct knows for
# this long is lost (e.g. the controller's state was reset).
LOST_AFTER_S = 120


def run_slurm(cmd: list[str], timeout: float = 30, env: dict | None = None) -> subprocess.CompletedProcess:
    """A Slurm command's result; a missing program or a timeout is a failed result, not an error."""
    try:
        return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=env)
    except (OSError, subprocess.TimeoutExpired) as e:
        return subprocess.CompletedProcess(cmd, 1, "", str(e))


def array_ids(job_id: str) -> list[str]:
    """sacct ids such as 12, 12_3 or 12_[0-3%2] -> the ids they stand for."""
    m = re.fullmatch(r"(\d+)_\[([0-9,\-]+)(?:%\d+)?\]", job_id)
    if not m:
        return [job_id]
    out = []
    for part in m.group(2).split(","):
        lo, _, hi = part.partition("-")
        out += [f"{m.group(1)}_{i}" for i in range(int(lo), int(hi or lo) + 1)]
    return out


def query_states(ids: list[str]) -> dict[str, dict]:
    """{id: {state, exit_code, elapsed, nodes, restarts}} from sacct, then squeue for the rest."""
    if not ids:
        return {}
    base = sorted({i.split("_")[0] for i in ids})
    out: dict[str, dict] = {}
    proc = run_slurm(["sacct", "-X", "-D", "-n", "-P", "-o", "JobID,State,ExitCode,Elapsed,NodeList",
                      "-j", ",".join(base)])
    if proc.returncode == 0:
        for line in proc.stdout.splitlines():  # -D: every run of a requeued job, oldest first
            parts = line.split("|")
            if len(parts) < 5:
                continue
            for jid in array_ids(parts[0]):
                state = parts[1].split()[0] if parts[1] else "UNKNOWN"
                prev = out.get(jid, {}).get("restarts", 0)  # each REQUEUED record is one requeue
                out[jid] = {"state": state, "exit_code": parts[2], "elapsed": parts[3], "nodes": parts[4],
                            "restarts": prev + (state == "REQUEUED")}
    missing = [i for i in ids if i not in out or out[i]["state"] in ("PENDING", "REQUEUED")]
    if missing:  # sacct lags behind the controller by a moment; squeue knows live jobs at once
        proc = run_slurm(["squeue", "-h", "-t", "all", "-o", "%i|%T|%M|%N",
                          "-j", ",".join(sorted({i.split("_")[0] for i in missing}))])
        if proc.returncode == 0:
            for line in proc.stdout.splitlines():
                parts = line.split("|")
                if len(parts) < 4:
                    continue
                for jid in array_ids(parts[0]):
                    if jid in missing:
                        row = out.setdefault(jid, {"exit_code": "", "restarts": 0})
                        row.update(state=parts[1], elapsed=parts[2], nodes=parts[3])
    for i in ids:
        if i in out and out[i]["state"] == "REQUEUED":
            out[i]["state"] = "PENDING"  # requeued and not yet running again
    return out


def submitted_states(ids: list[str], waited_s: float) -> dict[str, dict]:
    """query_states with a row for every id of a submission `waited_s` seconds old: one Slurm
    does not know (yet) is PENDING, and UNKNOWN (lost) after LOST_AFTER_S."""
    states = query_states(ids)
    for i in ids:
        if i not in states:
            states[i] = {"state": "UNKNOWN" if waited_s > LOST_AFTER_S else "PENDING", "restarts": 0}
    return states


def ended(state: dict) -> bool:
    """Nothing more will happen to this job (or nothing more can be learnt about it)."""
    return state.get("state") in TERMINAL | {"UNKNOWN"}


def unregistered_p2p_jobs(known: set[str], ids: list[str] | None) -> list[dict]:
    """Jobs named p2p-* that Slurm knows but the registry does not (e.g. from slurm/train.sbatch):
    this user's jobs in squeue, or the given ids (sacct too)."""
    found: dict[str, str] = {}
    cmds = [["squeue", "-h", "-t", "all", "-o", "%i|%j"] + (["-j", ",".join(ids)] if ids else ["-u", getpass.getuser()])]
    if ids:
        cmds.append(["sacct", "-X", "-n", "-P", "-o", "JobID,JobName", "-j", ",".join(ids)])
    for cmd in cmds:
        proc = run_slurm(cmd)
        for line in proc.stdout.splitlines() if proc.returncode == 0 else []:
            jid, _, name = line.partition("|")
            for j in array_ids(jid.strip()):
                if (name == "p2p" or name.startswith("p2p-")) and j not in known:  # not p2poolminer
                    found.setdefault(j, name)
    rows = []
    for jid, name in sorted(found.items()):
        show = run_slurm(["scontrol", "show", "job", "-o", jid]).stdout
        paths = dict(re.findall(r"\b(StdOut|StdErr|WorkDir)=(\S+)", show))
        rows.append({"job_id": jid, "name": name, "run_dir": "", "stdout": paths.get("StdOut"),
                     "stderr": paths.get("StdErr", paths.get("StdOut")), "max_steps": None,
                     "note": "not submitted by p2p submit: run folder unknown"})
    return rows


def slurm_name(job_id: str) -> str | None:
    """The job's name as sacct (or squeue, for a job sacct has not recorded yet) has it."""
    proc = run_slurm(["sacct", "-X", "-n", "-P", "-o", "JobName", "-j", job_id])
    names = proc.stdout.split() if proc.returncode == 0 else []
    if not names:
        proc = run_slurm(["squeue", "-h", "-t", "all", "-o", "%j", "-j", job_id])
        names = proc.stdout.split() if proc.returncode == 0 else []
    return names[0] if names else None


def last_metrics(run_dir: str | Path) -> dict:
    """The last row of <run_dir>/metrics.jsonl (read from the end of the file), or {}."""
    path = Path(run_dir) / "metrics.jsonl"
    try:
        with open(path, "rb") as f:
            f.seek(0, os.SEEK_END)
            size = f.tell()
            f.seek(max(0, size - 16384))
            lines = f.read().decode(errors="replace").splitlines()
    except OSError:
        return {}
    for line in reversed(lines):
        try:
            row = json.loads(line)
        except json.JSONDecodeError:
            continue
        if isinstance(row, dict):
            return row
    return {}


def tail(path: str | Path, n: int = 20) -> list[str]:
    try:
        with open(path, "rb") as f:
            f.seek(0, os.SEEK_END)
            f.seek(max(0, f.tell() - 65536))
            return f.read().decode(errors="replace").splitlines()[-n:]
    except OSError:
        return []


def failure_logs(record: dict, n: int = 20) -> list[tuple[Path, list[str]]]:
    """The last `n` lines worth showing for a job that did not complete: task 0's stderr (its
    stdout when stderr is empty), and another task's only when it mentions an error."""
    shown = []
    for task in range(int(record.get("tasks", 1))):
        for key in ("stderr", "stdout"):
            log = Path(record[key])  # task 0's log; task N writes <id>_N_log.*
            path = log.with_name(re.sub(r"_0_log\.(out|err)$", rf"_{task}_log.\1", log.name))
            lines = tail(path, n)
            if not lines or (task and not any(("Error" in ln or "error" in ln) for ln in lines)):
                continue
            shown.append((path, lines))
            break  # stderr holds the traceback; stdout only when stderr is empty
    return shown
