"""What `benchmarks/gpu-check.sh` found (`p2p bench gpu-report OUT --work WORK`).

The script runs each part under its own time limit, in the work folder WORK, and leaves there:
`check.json` (its plan), `environment.json`, `pytest.xml` / `pytest-trainings.xml` (JUnit, or
the `-v` logs when pytest was cut), `NAME.json` for each bench suite with a GPU-check part in
p2p.specs.suites (data, lab, step: rewritten as rows are measured; the part names the row keys
kept here) and `runs/eager`, `runs/fast` (the two 300-step
colorization trainings from the same seed: bf16 eager, and bf16 + CUDA graphs + torch.compile).
This module reads them into one result, `OUT/gpu-check.json`, a short `OUT/summary.md` and
`OUT/results.tar.gz` (p2p.bench.gpu_check_files), after every part: the output folder holds a
current verdict at every moment. A part that did not run or did not finish is reported as such,
never guessed.

The training check. The two runs see the same batches in the same order, but their dropout
masks differ (inductor draws its own random numbers) and compiled bf16 kernels round
differently, so their per-step losses drift apart like two seeds of one run. What must hold is
that the fast run trains the same way: the losses averaged over each window of WINDOW steps
agree within TOLERANCE (G_L1 relative to the eager mean; the adversarial terms, which hover
around 0.5-0.8, absolute). And the metrics rows must show what ran: every row with
`cuda_graphs` true and G and D in `compiled`, the graph replaying every step after the
warm-up, and no notice of a failed capture or a recompile limit.

No torch here (the report runs after every part); GRAPH_WARMUP is p2p.train.graphs.WARMUP_STEPS
(a test keeps the two equal).
"""

from __future__ import annotations

import json
import statistics
from pathlib import Path

from p2p.bench.gpu_check_files import (MAX_OUT_FILES, merged_pytest, pytest_summary, read_json, read_parts,
                                       read_rows, write_archive)
from p2p.specs import load
from p2p.specs.suites import SUITES, gpu_check_parts

GRAPH_WARMUP = 3  # eager steps before the capture (p2p.train.graphs.WARMUP_STEPS)
WINDOW = 50  # steps per averaged window of the loss comparison
TOLERANCE = {"G_L1": ("relative", 0.10), "G_GAN": ("absolute", 0.25), "D_real": ("absolute", 0.15),
             "D_fake": ("absolute", 0.15)}
# Targets of issue 9, checked where their figures exist.
TARGET_ALL_RATIO, TARGET_ALL_MFU, TARGET_DALI_MIXED, TARGET_DATA_WAIT = 3.0, 0.35, 10_000.0, 0.05


def window_means(rows: list[dict], window: int = WINDOW) -> dict[int, dict[str, float]]:
    """Mean of each loss over the rows of each window of steps ((step - 1) // window)."""
    grouped: dict[int, list[dict]] = {}
    for r in rows:
        grouped.setdefault((r["step"] - 1) // window, []).append(r)
    return {w: {k: statistics.fmean(r[k] for r in rs) for k in TOLERANCE if all(k in r for r in rs)}
            for w, rs in sorted(grouped.items())}


def compare_losses(eager: list[dict], fast: list[dict], window: int = WINDOW) -> dict:
    """Window by window, how far the fast run's mean losses are from the eager run's."""
    a, b = window_means(eager, window), window_means(fast, window)
    windows, worst, passed = [], {}, bool(a) and a.keys() == b.keys()
    for w in sorted(set(a) & set(b)):
        entry = {"steps": f"{w * window + 1}-{(w + 1) * window}"}
        for loss, (kind, allowed) in TOLERANCE.items():
            if loss not in a[w] or loss not in b[w]:
                continue
            dev = abs(b[w][loss] - a[w][loss])
            dev = dev / abs(a[w][loss]) if kind == "relative" and a[w][loss] else dev
            entry[loss] = {"eager": a[w][loss], "fast": b[w][loss], "deviation": dev}
            worst[loss] = max(worst.get(loss, 0.0), dev)
            passed = passed and dev <= allowed
        windows.append(entry)
    return {"window_steps": window, "tolerance": {k: {"kind": kind, "allowed": v} for k, (kind, v) in TOLERANCE.items()},
            "worst_deviation": worst, "windows": windows, "passed": passed}


def in_effect(rows: list[dict], steps: int) -> dict:
    """Whether the metrics rows of the fast run show graphs and compile really running."""
    notices = [n for r in rows for n in r.get("notices", [])]
    bad = [n for n in notices if "capture failed" in n or "recompile limit" in n or "running eager" in n]
    replays = sum(r.get("graph_replays", 0) for r in rows)
    expected = max(0, steps - GRAPH_WARMUP)
    # `compiled` lists the networks that ran compiled ("G", "D", "device step"); the steady state
    # needs G and D compiled in every row (rows of an older p2p said only true or false)
    nets = all(isinstance(r.get("compiled"), list) and {"G", "D"} <= set(r["compiled"]) for r in rows)
    ok = bool(rows) and all(r.get("cuda_graphs") for r in rows) and nets and replays == expected and not bad
    return {"rows": len(rows), "cuda_graphs_every_row": all(r.get("cuda_graphs") for r in rows) if rows else False,
            "compiled_every_row": bool(rows) and nets,
            "compiled": sorted({n for r in rows if isinstance(r.get("compiled"), list) for n in r["compiled"]}),
            "jpeg_decoder": sorted({r["jpeg_decoder"] for r in rows if r.get("jpeg_decoder")}),
            "graph_replays": replays, "expected_replays": expected, "fallback_notices": bad,
            "precision": sorted({r.get("precision") for r in rows}), "passed": ok}


def run_summary(rows: list[dict]) -> dict:
    """img/s, data wait and peak memory of a training run, the first (warm-up, compile) row left out."""
    steady = rows[1:] or rows
    if not steady:
        return {"rows": 0}
    return {"rows": len(rows), "last_step": rows[-1]["step"], "img_per_s": statistics.median(r["img_per_s"] for r in steady),
            "data_wait": statistics.fmean(r["data_wait"] for r in steady),
            "mfu": statistics.median(r["mfu"] for r in steady) if all("mfu" in r for r in steady) else None,
            "peak_mem_gb": max(r.get("peak_mem_gb", 0.0) for r in rows), "last_losses": {
                k: rows[-1][k] for k in TOLERANCE if k in rows[-1]}}


def _rows_of(payload: dict | None, keys: tuple[str, ...]) -> list[dict]:
    return [{k: r.get(k) for k in keys if k in r} for r in (payload or {}).get("results", [])]


def targets(step: dict | None, data: dict | None, fast: dict) -> list[dict]:
    by = {r["name"]: r for r in (step or {}).get("results", [])}
    all_row = by.get("all") or {}
    mixed = [r for r in (data or {}).get("results", []) if r.get("backend") == "dali_mixed" and
             r.get("stage") == "loader only"]

    def target(name, value, goal, met):
        return {"target": name, "value": value, "goal": goal, "met": None if value is None else met}

    ratio, mfu = all_row.get("ratio"), all_row.get("mfu")
    mixed_ips = mixed[0]["img_per_s"] if mixed else None
    wait = fast.get("data_wait")
    return [target("bench step `all` vs baseline, bf16, batch 64", ratio, f">= {TARGET_ALL_RATIO}x",
                   ratio is not None and ratio >= TARGET_ALL_RATIO),
            target("bench step `all` MFU", mfu, f">= {TARGET_ALL_MFU:.0%}", mfu is not None and mfu >= TARGET_ALL_MFU),
            target("DALI mixed decode img/s at the shards' 286 px, one GPU", mixed_ips, f">= {TARGET_DALI_MIXED:.0f}",
                   mixed_ips is not None and mixed_ips >= TARGET_DALI_MIXED),
            target("data wait in the 300-step run (share of step time)", wait, f"< {TARGET_DATA_WAIT:.0%}",
                   wait is not None and wait < TARGET_DATA_WAIT)]


def summarize(work: Path, out: Path | None = None) -> dict:
    """Everything the check found: the parts' files in `work`, parts.tsv in `out` (default: the
    same folder, e.g. results.tar.gz unpacked next to parts.tsv)."""
    work = Path(work)
    out = Path(out) if out is not None else work
    suites = {spec.name: read_json(work / f"{spec.name}.json") for spec in gpu_check_parts()}
    step, data = suites.get("step"), suites.get("data")  # the targets' figures
    eager, fast = read_rows(work / "runs/eager/metrics.jsonl"), read_rows(work / "runs/fast/metrics.jsonl")
    check = read_json(work / "check.json") or {}
    steps = check.get("train_steps", 300)
    fast_summary = run_summary(fast)
    training = {"steps": steps, "eager": run_summary(eager), "fast": fast_summary,
                "losses": compare_losses(eager, fast) if eager and fast else {"passed": False, "why": "a run is missing"},
                "in_effect": in_effect(fast, steps) if fast else {"passed": False, "why": "no fast run"}}
    parts = read_parts(out / "parts.tsv", check.get("plan"))
    pytest = merged_pytest([pytest_summary(work / f"{name}.xml", work / "logs" / f"{name}.log")
                            for name in ("pytest", "pytest-trainings")])
    result = {
        "check": check or None, "environment": read_json(work / "environment.json"),
        "install": [line for line in (work / "logs/install.log").read_text(errors="replace").splitlines()
                    if line.strip()] if (work / "logs/install.log").is_file() else None,
        "parts": parts, "pytest": pytest,
        "suites": list(suites),
        "data_backends": (work / "backends.txt").read_text().strip() if (work / "backends.txt").is_file() else None,
        "training": training, "targets": targets(step, data, fast_summary),
    }
    for spec in gpu_check_parts():  # NAME: the rows' kept keys; NAME_config, NAME_partial
        payload = suites[spec.name] or {}
        result[spec.name] = (load(spec.gpu_check.rows)(payload) if spec.gpu_check.rows
                             else _rows_of(payload, spec.gpu_check.keys))
        result[f"{spec.name}_config"] = payload.get("config")
        result[f"{spec.name}_partial"] = bool(payload.get("partial"))
    result["unfinished"] = [p["name"] for p in parts if p["status"] != "ok"]
    result["passed"] = bool(pytest and not pytest["failures"] and not pytest["errors"]
                            and training["losses"]["passed"] and training["in_effect"]["passed"])
    result["complete"] = not result["unfinished"]
    return result


def memory_rows(payload: dict | None) -> list[dict]:
    """`p2p bench memory`'s rows (issue 25), with the largest batch for 40 and 80 GB: not part of
    the verdict, the last part, so the first cut when time runs short."""
    from p2p.bench.memory import largest_batch

    keys = ("resolution", "generator", "precision", "checkpointing", "batch_size", "peak_gb", "reserved_gb",
            "per_image_gb", "source", "skipped")
    return [{**{k: r.get(k) for k in keys if k in r}, "max_batch_40gb": largest_batch(r, 40),
             "max_batch_80gb": largest_batch(r, 80)} for r in (payload or {}).get("results", [])]


def memory_line(m: dict) -> str:
    """One `p2p bench memory` row of the summary: its peak, what that is measured by, and the
    largest batch that fits 40 / 80 GB."""
    head = f"- {m.get('resolution')} {m.get('generator')} {m.get('precision')}, checkpointing {m.get('checkpointing')}"
    if m.get("peak_gb") is None:
        return f"{head}: not measured ({m.get('skipped')})"
    return (f"{head}: {_fmt(m['peak_gb'])} GB at batch {m.get('batch_size')}"
            + (f" (reserved {_fmt(m['reserved_gb'])} GB)" if m.get("reserved_gb") is not None else "")
            + f", {_fmt(m.get('per_image_gb'))} GB per image, largest batch in 40 / 80 GB (estimated) "
            f"{_fmt(m.get('max_batch_40gb'))} / {_fmt(m.get('max_batch_80gb'))}"
            + (f" ({m['skipped']})" if m.get("skipped") else "") + f"; measured as: {m.get('source')}")


def _fmt(v) -> str:
    if v is None:
        return "not measured"
    if isinstance(v, float):
        return f"{v:.3g}"
    return str(v)


def _row_line(d: dict) -> str:
    """One suite row of the summary: skipped, or warmed up and not timed, or its figures."""
    head = f"- {d.get('name')}" + (f" ({d['device']})" if d.get("device") else "")
    if d.get("skipped"):
        return f"{head}: skipped ({d['skipped']})"
    if d.get("img_per_s") is None and d.get("warmup_s") is not None:
        return f"{head}: built and warmed up in {_fmt(d.get('warmup_s'))} s, not timed"
    line = f"{head}: {_fmt(d.get('img_per_s'))} img/s"
    if d.get("ratio") is not None:
        line += f", {_fmt(d['ratio'])}x"
    if "mfu" in d:
        line += f", MFU {_fmt(d.get('mfu'))}"
    if d.get("decoder"):
        line += f", JPEG decoder {d['decoder']}"
    return line


def summary_markdown(r: dict) -> str:
    env = r.get("environment") or {}
    verdict = "PASSED" if r["passed"] else "NOT PASSED"
    lines = [f"# p2p GPU check: {verdict}" + ("" if r.get("complete") else
                                              f" (did not finish: {', '.join(r.get('unfinished', []))})"), "",
             f"GPU {env.get('gpu')}, torch {env.get('torch')} (CUDA {env.get('cuda_build')}), "
             f"DALI {env.get('dali')}, {env.get('date')}", "", "## Parts", ""]
    lines += [f"- {p['name']}: {p['status']}, {p['seconds']:.0f} s (limit {p['limit_s']} s)" for p in r["parts"]]
    lines += ["", "## Wheels", ""] + [f"- {line}" for line in (r.get("install") or ["not installed (the part did not run)"])]
    pt = r.get("pytest")
    lines += ["", "## pytest -m gpu", ""]
    lines += ([f"{pt['passed']} passed, {pt['failures'] + pt['errors']} failed, {pt['skipped']} skipped "
               f"(from the {pt['from']})"]
              + [f"- FAILED {t}" for t in pt["failed_tests"]] + [f"- skipped {t}" for t in pt["skipped_tests"]]
              if pt else ["did not run"])
    t = r["training"]
    loss, eff = t["losses"], t["in_effect"]
    lines += ["", f"## {t['steps']}-step colorization, bf16: eager vs CUDA graphs + torch.compile", "",
              f"- losses: {'within' if loss['passed'] else 'NOT within'} tolerance "
              f"(worst window deviation {', '.join(f'{k} {v:.3g}' for k, v in loss.get('worst_deviation', {}).items())};"
              f" allowed {', '.join(f'{k} {v[1]}' for k, v in TOLERANCE.items())})",
              f"- in effect: graphs every row {eff.get('cuda_graphs_every_row')}, G and D compiled every row "
              f"{eff.get('compiled_every_row')} (compiled: {', '.join(eff.get('compiled', [])) or 'nothing'}; "
              f"JPEG decoder {', '.join(eff.get('jpeg_decoder', [])) or 'not recorded'}), replays {eff.get('graph_replays')}/{eff.get('expected_replays')}, "
              f"fallback notices {len(eff.get('fallback_notices', []))}",
              f"- img/s eager {_fmt(t['eager'].get('img_per_s'))}, fast {_fmt(t['fast'].get('img_per_s'))}; "
              f"data wait fast {_fmt(t['fast'].get('data_wait'))}"]
    if r.get("data_backends"):
        lines += ["", f"Data backends on this node: {r['data_backends']}"]
    for name in r.get("suites", []):
        c = r.get(f"{name}_config") or {}
        shown = ", ".join(f"{k} {c[k]}" for k in ("model", "image_size", "batch_size", "device") if c.get(k) is not None)
        lines += ["", f"## bench {name}" + (f" ({shown})" if shown else "")
                  + (": cut, the rows measured so far" if r.get(f"{name}_partial") else ""), ""]
        line = load(spec.gpu_check.line) if (spec := SUITES.get(name)) and spec.gpu_check.line else _row_line
        lines += [line(row) for row in r.get(name) or []] or ["- no rows (the part did not run or finish)"]
    lines += ["", "## Targets", ""] + [f"- {g['target']}: {_fmt(g['value'])} (goal {g['goal']}): "
                                       f"{ {True: 'met', False: 'NOT met', None: 'not measured'}[g['met']] }"
                                       for g in r["targets"]]
    return "\n".join(lines) + "\n"


def write_report(work: Path, out: Path | None = None) -> dict:
    """gpu-check.json, summary.md and results.tar.gz into `out` (default `work`, where only the
    first two are written); returns the result. Never more than MAX_OUT_FILES files in `out`."""
    from p2p.atomic import write_text

    out = Path(out) if out is not None else Path(work)
    result = summarize(work, out)
    if out.resolve() != Path(work).resolve():
        result["archive"] = write_archive(Path(work), out)
        extra = sorted(p.name for p in out.iterdir() if p.name not in
                       ("gpu-check.json", "summary.md", "parts.tsv", result["archive"]["file"]))
        if extra or len(list(out.iterdir())) > MAX_OUT_FILES:
            result["out_folder_warning"] = f"files the runner may not return: {extra}"
    write_text(out / "gpu-check.json", json.dumps(result, indent=2, default=str) + "\n")
    write_text(out / "summary.md", summary_markdown(result))
    return result
