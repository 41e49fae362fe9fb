"""Whether two runs trained the same: weights, optimizer moments, EMA, position and per-step
losses of their last.pt and metrics.jsonl (exact resume, and settings that must not change the
training, such as activation checkpointing)."""

from __future__ import annotations

import json

import torch

from helpers.runs import load_ckpt


# Fields of a metrics row that measure the machine, not the training.
TIMING = {"img_per_s", "step_time_s", "data_wait", "peak_mem_gb", "mfu", "cpu_wait_s", "slowest_rank", "slowest_host",
          "slowest_lag", "slowest_what", "rank_step_s", "rank_data_wait_s", "rank_cpu_wait_s"}


def rows(run_dir) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def training_rows(run_dir) -> dict[int, dict]:
    return {r["step"]: {k: v for k, v in r.items() if k not in TIMING} for r in rows(run_dir)}


def assert_same_run(a_dir, b_dir) -> None:
    """Same weights, optimizer moments, position and per-step losses."""
    a, b = (load_ckpt(d / "checkpoints" / "last.pt") for d in (a_dir, b_dir))
    assert (a["step"], a["epoch"], a["batch_in_epoch"]) == (b["step"], b["epoch"], b["batch_in_epoch"])
    for net in ("generator", "discriminator"):
        assert a[net].keys() == b[net].keys()
        differ = [k for k in a[net] if not torch.equal(a[net][k], b[net][k])]
        assert not differ, f"{net}: {len(differ)} of {len(a[net])} tensors differ after resume, e.g. {differ[:3]}"
    for opt in ("opt_g", "opt_d"):
        for pid, st in a[opt]["state"].items():
            assert torch.equal(st["exp_avg"], b[opt]["state"][pid]["exp_avg"]), f"{opt} state {pid}"
            assert torch.equal(st["exp_avg_sq"], b[opt]["state"][pid]["exp_avg_sq"]), f"{opt} state {pid}"
    assert ("generator_ema" in a) == ("generator_ema" in b)
    if "generator_ema" in a:
        differ = [k for k in a["generator_ema"] if not torch.equal(a["generator_ema"][k], b["generator_ema"][k])]
        assert not differ, f"EMA: {len(differ)} tensors differ after resume, e.g. {differ[:3]}"
    ra, rb = training_rows(a_dir), training_rows(b_dir)
    assert sorted(ra) == sorted(rb) == list(range(1, a["step"] + 1)), "every step logged exactly once"
    for step in ra:
        assert ra[step] == rb[step], f"step {step}: {ra[step]} != {rb[step]}"
