"""The report of `p2p bench scale --simulate` (p2p.bench.plan_scale): growth exponents, the
issue's targets, log-log plots and the markdown table."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np

FIGURES = {  # key: (what, unit)
    "manifest_s": ("manifest read (WdsLoader built)", "s"),
    "baseline_manifest_s": ("baseline: manifest read as before (JSON, every path, every tar stat'ed)", "s"),
    "plan_s": ("epoch plan of one rank", "s"),
    "plan_mb": ("epoch plan: peak memory", "MB"),
    "index_s": ("index files the rank touches, parsed", "s"),
    "index_mb": ("index files parsed: peak memory", "MB"),
    "first_keys_s": ("start-up to the first batch's keys", "s"),
    "first_keys_mb": ("start-up to the first batch's keys: peak memory", "MB"),
    "baseline_plan_s": ("baseline: whole epoch built, then sliced", "s"),
    "baseline_plan_mb": ("baseline: peak memory", "MB"),
}
CHANGE_FIGURES = {
    "change_s": ("world-size change mid-epoch: continued plan of one new rank", "s"),
    "change_mb": ("world-size change: peak memory", "MB"),
    "change_first_keys_s": ("after the change: start-up to the first batch's keys", "s"),
}

# The targets: at N = 100M and 1,024 ranks, per rank; the growth of every figure
TARGETS = {"plan_s": 1.0, "plan_mb": 100.0, "change_s": 5.0}
FLAT_IN_N, LINEAR_IN_SHARE = 0.1, 1.0


# Below these a figure is under what the timer and the resident-size counter resolve on a busy
# machine (a page, a scheduler tick): such cells are in the tables but not in the growth fit
RESOLUTION = {"s": 1e-3, "MB": 1.0}


def fit_growth(rows: list[dict], key: str, floor: float = 0.0) -> dict | None:
    """c * N^a * share^b fitted to the cells whose `key` is at least `floor` (least squares in
    log-log); None with too few such cells."""
    pts = [(r["n"], r["share"], r[key]) for r in rows if r.get(key) and r[key] > 0 and r[key] >= floor]
    if len({n for n, _, _ in pts}) < 2 or len({s for _, s, _ in pts}) < 2 or len(pts) < 3:
        return None
    x = np.array([[math.log(n), math.log(s), 1.0] for n, s, _ in pts])
    y = np.array([math.log(v) for _, _, v in pts])
    coef, *_ = np.linalg.lstsq(x, y, rcond=None)
    if np.linalg.matrix_rank(x) < 3:
        return None
    return {"in_n": round(float(coef[0]), 3), "in_share": round(float(coef[1]), 3), "cells": len(pts)}


def target_checks(plain: list[dict], changes: list[dict], growth: dict) -> list[dict]:
    """Each target of the issue: the figure measured, the limit, whether it holds."""
    top = max(r["n"] for r in plain)
    out = []
    for key in ("plan_s", "plan_mb"):
        for r in (r for r in plain if r["n"] == top and r["world"] == 1024):
            out.append({"target": f"{key} at N={top:,}, 1024 ranks", "value": r[key], "limit": TARGETS[key],
                        "met": r[key] <= TARGETS[key]})
    for r in (r for r in changes if r["n"] == top):
        out.append({"target": f"change_s {r['w0']}->{r['world']} at N={top:,}", "value": r["change_s"],
                    "limit": TARGETS["change_s"], "met": r["change_s"] <= TARGETS["change_s"]})
    for key, g in growth.items():
        if g is None or key.startswith("baseline"):
            continue
        out.append({"target": f"{key}: exponent in N at a fixed share", "value": g["in_n"], "limit": FLAT_IN_N,
                    "met": g["in_n"] <= FLAT_IN_N})
        out.append({"target": f"{key}: exponent in the share N/W", "value": g["in_share"], "limit": LINEAR_IN_SHARE,
                    "met": g["in_share"] <= LINEAR_IN_SHARE})
    return out


def plot_figures(plain: list[dict], changes: list[dict], growth: dict, out: Path) -> list[Path]:
    """One PNG per figure: the value against the share per rank (log-log), one line per N; lines
    that lie on each other are flat in N."""
    from p2p.bench.report import _pyplot, save_loglog

    plt = _pyplot()
    paths = []
    for key, (what, unit) in {**FIGURES, **CHANGE_FIGURES}.items():
        rows = changes if key in CHANGE_FIGURES else plain
        if not any(r.get(key) for r in rows):
            continue
        fig, ax = plt.subplots(figsize=(4.8, 3.5))
        for n in sorted({r["n"] for r in rows}):
            pts = sorted((r["share"], r[key]) for r in rows if r["n"] == n and r.get(key))
            if pts:
                ax.plot(*zip(*pts), "o-", label=f"N={n:,}")
        xlabel = "samples per rank N/min(W0, W1)" if key in CHANGE_FIGURES else "samples per rank N/W"
        g = growth.get(key)
        fit = f"N^{g['in_n']:.2f} x (N/W)^{g['in_share']:.2f}" if g else "no fit"
        paths.append(save_loglog(plt, fig, ax, xlabel, unit, f"{what}\n{fit}", out / f"plan-scale-{key}.png"))
    return paths


def _cell(v, unit: str) -> str:
    return "-" if v is None else f"{v:.1f}" if unit == "MB" else f"{v:.3g}"


def report_lines(payload: dict) -> list[str]:
    plain, changes = payload["results"], payload["changes"]
    lines = [f"`{payload['command']}`", "", "| N | W | N/W | shards touched | "
             + " | ".join(f"{k} ({u})" for k, (_, u) in FIGURES.items()) + " |", "|---" * (len(FIGURES) + 4) + "|"]
    for r in plain:
        lines.append(f"| {r['n']:,} | {r['world']} | {r['share']:,} | {r.get('shards_touched', '-')} | "
                     + " | ".join(_cell(r.get(k), u) for k, (_, u) in FIGURES.items()) + " |")
    lines += ["", "| N | W0 -> W1 | " + " | ".join(f"{k} ({u})" for k, (_, u) in CHANGE_FIGURES.items()) + " |",
              "|---" * (len(CHANGE_FIGURES) + 2) + "|"]
    for r in changes:
        lines.append(f"| {r['n']:,} | {r['w0']} -> {r['world']} | "
                     + " | ".join(_cell(r.get(k), u) for k, (_, u) in CHANGE_FIGURES.items()) + " |")
    lines += ["", "| figure | exponent in N (fixed N/W) | exponent in N/W | cells fitted (>= 1 ms or 1 MB) |",
              "|---|---|---|---|"]
    for key, g in payload["growth"].items():
        if g:
            lines.append(f"| {key} | {g['in_n']:.2f} | {g['in_share']:.2f} | {g['cells']} |")
    lines += ["", "| target | measured | limit | met |", "|---|---|---|---|"]
    for t in payload["targets"]:
        lines.append(f"| {t['target']} | {t['value']:.3g} | {t['limit']:g} | {'yes' if t['met'] else 'NO'} |")
    lines += ["", f"disk: {payload['disk_bytes'] / 1e6:.0f} MB in {payload['config']['work']} "
              f"(manifests and the index files of the shards measured ranks touch)"]
    return lines


def finish(payload: dict, out: Path) -> dict:
    """Growth fits, targets, plots, plan-scale.json and plan-scale.md from the measured cells
    (`results`, `changes`) of `payload`; also re-renders a saved plan-scale.json."""
    from p2p.atomic import write_text
    from p2p.bench.common import write_json

    plain, changes = payload["results"], payload["changes"]
    units = {k: unit for k, (_, unit) in {**FIGURES, **CHANGE_FIGURES}.items()}
    payload["growth"] = {k: fit_growth(changes if k in CHANGE_FIGURES else plain, k, RESOLUTION[unit])
                         for k, unit in units.items()}
    payload["targets"] = target_checks(plain, changes, payload["growth"])
    payload["report"] = report_lines(payload)
    write_json(out / "plan-scale.json", payload)
    plot_figures(plain, changes, payload["growth"], out)
    write_text(out / "plan-scale.md", "\n".join(payload["report"]) + "\n")
    return payload
