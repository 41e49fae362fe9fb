"""Following jobs on the local Slurm cluster from tests (tests/test_submit.py, tests/faults/):
their accounting states (bounded waits: slurmdbd records a state a few seconds after it
happens), the run folder's metrics rows, the job id `p2p submit` printed."""

from __future__ import annotations

import json
import re
import subprocess
import time
from pathlib import Path

# Small jobs that fit the 2-core test cluster: one core per task, a 5-minute limit.
SLURM = ["slurm.partition=debug", "slurm.cpus_per_task=1", "slurm.time_min=5"]
TERMINAL = {"COMPLETED", "FAILED", "CANCELLED", "TIMEOUT", "NODE_FAIL", "OUT_OF_MEMORY", "BOOT_FAIL", "DEADLINE"}


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


def metrics(run_dir: Path) -> list[dict]:
    path = run_dir / "metrics.jsonl"
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def submitted_id(text: str) -> str:
    m = re.search(r"submitted job (\d+)", text)
    assert m, f"no 'submitted job ID' line in:\n{text}"
    return m.group(1)
