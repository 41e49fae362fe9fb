"""`p2p bench memory`: the row arithmetic (memory per image, the largest batch in a budget), the
flags' checks, and rows that could not be measured recorded as such rather than dropped."""

from __future__ import annotations

import json

import pytest

from p2p.bench.memory import Measurement, MemoryOptions, summarise
from p2p.errors import UsageError

from helpers.runs import run_p2p


def test_per_image_memory_and_the_largest_batch_that_fits():
    small = Measurement("1024", "local", "fp32", "none", 1, "cpu", peak_bytes=int(6e9), extra={"source": "rss"})
    large = Measurement("1024", "local", "fp32", "none", 2, "cpu", peak_bytes=int(10e9))
    row = summarise(small, large, budget_gb=80)
    # 2 GB fixed + 4 GB per image: (80 - 2) / 4 = 19.5 -> 19
    assert row["peak_gb"] == 6 and row["per_image_gb"] == 4 and row["max_batch"] == 19 and row["source"] == "rss"


def test_a_row_that_could_not_be_measured_says_why():
    small = Measurement("2048x1024", "local", "fp32", "none", 1, "cpu", skipped="not measured: over 600 s")
    row = summarise(small, Measurement("2048x1024", "local", "fp32", "none", 2, "cpu"), 80)
    assert row["peak_gb"] is None and row["max_batch"] is None and "over 600 s" in row["skipped"]


@pytest.mark.parametrize("kw, needle", [({"generators": ("vgg",)}, "--generators"),
                                        ({"resolutions": ("300",)}, "--resolutions"),
                                        ({"budget_gb": 0}, "--budget-gb")])
def test_bad_options_are_usage_errors(kw, needle):
    with pytest.raises(UsageError, match=needle):
        MemoryOptions(**kw).check()


def test_cli_records_rows_over_the_time_limit_and_rejects_bad_flags(tmp_path):
    proc = run_p2p("bench", "memory", "--resolutions", "256", "--generators", "unet", "--precisions", "fp32",
                   "--checkpointing", "none", "--device", "cpu", "--timeout-s", "0.5", "--json", tmp_path / "m.json")
    rows = json.loads((tmp_path / "m.json").read_text())["results"]
    assert len(rows) == 1 and rows[0]["peak_gb"] is None and "not measured" in rows[0]["skipped"]
    assert "peak memory of one training step" in proc.stdout
    bad = run_p2p("bench", "memory", "--generators", "vgg", check=False)
    assert bad.returncode == 2 and len(bad.stderr.strip().splitlines()) == 1 and "Traceback" not in bad.stderr
