"""Sweeps: `--sweep key=v1,v2` items, their cross product, and a run name for each element."""

from __future__ import annotations

import itertools
import re

from p2p.errors import UsageError


def parse_sweep(items: list[str]) -> list[tuple[str, list[str]]]:
    """`key=v1,v2` items -> [(key, [raw values])], keys unique."""
    sweep: dict[str, list[str]] = {}
    for item in items:
        if "=" not in item:
            raise UsageError(f"--sweep {item!r}: expected key=value1,value2,...")
        key, raw = item.split("=", 1)
        key = key.strip()
        values = [v.strip() for v in raw.split(",")]
        if not key or any(v == "" for v in values):
            raise UsageError(f"--sweep {item!r}: expected key=value1,value2,... with no empty value")
        if key.startswith("slurm.") or key == "run.name":
            raise UsageError(f"--sweep {key}: an array shares one sbatch script and names its run folders "
                             f"itself; sweep other keys")
        if key in sweep:
            raise UsageError(f"--sweep {key} given twice; list all values once: {key}=a,b,c")
        if len(set(values)) != len(values):
            raise UsageError(f"--sweep {item!r}: repeated value")
        sweep[key] = values
    return list(sweep.items())


def _safe(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9._=+-]", "_", text)


def sweep_elements(base_name: str, sweep: list[tuple[str, list[str]]]) -> list[tuple[str, dict[str, str]]]:
    """(run name, {key: raw value}) for each point of the cross product. The name lists the keys
    that vary, e.g. demo-optim.lr=0.0002 (all keys when none varies)."""
    varying = [k for k, vs in sweep if len(vs) > 1] or [k for k, _ in sweep]
    out, seen = [], set()
    for combo in itertools.product(*[vs for _, vs in sweep]):
        point = dict(zip([k for k, _ in sweep], combo))
        name = _safe("-".join([base_name] + [f"{k}={point[k]}" for k in varying]))
        while name in seen:
            name += "_"
        seen.add(name)
        out.append((name, point))
    return out
