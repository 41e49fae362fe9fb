"""The GPU check's `memory` part (issue 25): `p2p bench memory`'s GPU rows, last in the plan so
they are the first thing cut, never the verdict. Rehearsed like the rest of the check, in stub
mode on the CPU (one real row: unet_256 at 256 px, a fresh process per batch)."""

from __future__ import annotations

import json
import subprocess
import sys
import tarfile

import pytest

from helpers.runs import ROOT, p2p_env
from p2p.bench.gpu_check import summarize, summary_markdown
from p2p.bench.gpu_check_files import read_parts


def check(tmp_path, **env) -> tuple[list, dict]:
    (tmp_path / "wheels").mkdir(exist_ok=True)
    cmd = ["bash", "benchmarks/gpu-check.sh", str(tmp_path / "wheels"), str(tmp_path / "out")]
    return cmd, p2p_env(P2P_GPU_CHECK_STUB="1", P2P_GPU_CHECK_WORK=str(tmp_path / "work"), PYTHON=sys.executable,
                        **env)


def test_memory_rows_reach_the_summary_with_40_and_80_gb_and_a_cut_run_says_so(tmp_path):
    rows = [{"resolution": "2048x1024", "generator": "local", "precision": "bf16", "checkpointing": "none",
             "batch_size": 1, "peak_gb": 12.0, "reserved_gb": 13.1, "per_image_gb": 8.0, "max_batch": 8,
             "source": "CUDA allocator peak (torch.cuda.max_memory_allocated)", "skipped": ""},
            {"resolution": "2048x1024", "generator": "local", "precision": "bf16", "checkpointing": "all",
             "batch_size": 1, "peak_gb": None, "per_image_gb": None, "max_batch": None, "source": "",
             "skipped": "out of memory"}]
    (tmp_path / "memory.json").write_text(json.dumps({"results": rows, "partial": True}))
    result = summarize(tmp_path)
    first = result["memory"][0]
    # 4 GB fixed + 8 GB per image: (40 - 4) / 8 = 4.5, (80 - 4) / 8 = 9.5
    assert first["max_batch_40gb"] == 4 and first["max_batch_80gb"] == 9 and result["memory_partial"]
    text = summary_markdown(result)
    assert "## bench memory: cut, the rows measured so far" in text
    assert "- 2048x1024 local bf16, checkpointing none: 12 GB at batch 1 (reserved 13.1 GB), 8 GB per image, " \
           "largest batch in 40 / 80 GB (estimated) 4 / 9" in text
    assert "- 2048x1024 local bf16, checkpointing all: not measured (out of memory)" in text
    assert "measured as: CUDA allocator peak" in text
    (tmp_path / "memory.json").unlink()
    without = summarize(tmp_path)
    assert without["memory"] == [] and without["passed"] == result["passed"]  # never part of the verdict


@pytest.mark.slow
def test_the_memory_part_runs_last_writes_its_json_and_its_rows_reach_the_summary(tmp_path):
    cmd, env = check(tmp_path, P2P_GPU_CHECK_ONLY="memory")
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=400, env=env)
    out = tmp_path / "out"
    parts = read_parts(out / "parts.tsv")
    assert [p["name"] for p in parts][-1] == "memory" and parts[-1]["status"] == "ok", proc.stdout[-3000:]
    result = json.loads((out / "gpu-check.json").read_text())
    (row,) = result["memory"]
    assert row["resolution"] == "256" and row["generator"] == "unet" and row["peak_gb"] > 0.5
    assert "RSS" in row["source"] and not result["memory_partial"]
    summary = (out / "summary.md").read_text()
    assert "- 256 unet fp32, checkpointing none: " in summary and "measured as: CPU process anonymous RSS" in summary
    with tarfile.open(out / "results.tar.gz") as tar:
        assert "memory.json" in tar.getnames() and "logs/memory.log" in tar.getnames()


@pytest.mark.slow
def test_a_hanging_memory_part_is_cut_at_its_limit_and_the_verdict_parts_keep_theirs(tmp_path):
    """memory planted as a hang deaf to SIGTERM, after a real (stubbed) pytest part: pytest
    keeps its share and its result, memory ends by the deadline, and the final report comes."""
    cmd, env = check(tmp_path, P2P_GPU_CHECK_BUDGET_S="50", P2P_GPU_CHECK_PLANT="hang:memory",
                     P2P_GPU_CHECK_ONLY="pytest memory")
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=240, env=env)
    assert proc.returncode == 1, proc.stdout[-2000:] + proc.stderr[-2000:]
    parts = {p["name"]: p for p in read_parts(tmp_path / "out" / "parts.tsv")}
    assert list(parts)[-1] == "memory" and parts["pytest"]["status"] == "ok"
    memory = parts["memory"]
    assert memory["rc"] == 137 and memory["status"].startswith("killed")
    assert memory["seconds"] <= memory["limit_s"] + 2 and memory["limit_s"] <= 50 - parts["pytest"]["seconds"]
    result = json.loads((tmp_path / "out" / "gpu-check.json").read_text())
    assert result["pytest"] is not None and result["memory"] == [] and result["unfinished"][-1] == "memory"
    summary = (tmp_path / "out" / "summary.md").read_text()
    assert "- memory: killed" in summary and "## pytest -m gpu" in summary and "memory" in summary.splitlines()[0]
    assert "gpu-check: " in proc.stdout  # the final report ran
