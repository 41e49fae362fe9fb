"""The jobs registry: one JSON line per submitted job (or array element), appended by
`p2p submit` and read by `p2p jobs` / `p2p cancel`, so they work long after the submission.
`$P2P_JOBS_REGISTRY`, else `${XDG_CACHE_HOME:-~/.cache}/p2p/jobs.jsonl`."""

from __future__ import annotations

import json
import os
from pathlib import Path


def registry_path() -> Path:
    if os.environ.get("P2P_JOBS_REGISTRY"):
        return Path(os.environ["P2P_JOBS_REGISTRY"])
    cache = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(cache) / "p2p" / "jobs.jsonl"


def register(records: list[dict]) -> None:
    path = registry_path()
    path.parent.mkdir(parents=True, exist_ok=True)
    text = "".join(json.dumps(r) + "\n" for r in records)
    with open(path, "a") as f:  # one O_APPEND write: submissions from several shells do not interleave
        f.write(text)


def read_registry() -> list[dict]:
    path = registry_path()
    if not path.exists():
        return []
    rows = []
    for line in path.read_text().splitlines():
        try:
            row = json.loads(line)
        except json.JSONDecodeError:
            continue
        if isinstance(row, dict) and "job_id" in row:
            rows.append(row)
    return rows


def select(rows: list[dict], ids: list[str]) -> list[dict]:
    """The rows of these job ids; an array's id selects all its elements."""
    return [r for r in rows if r["job_id"] in ids or r["job_id"].split("_")[0] in ids]
