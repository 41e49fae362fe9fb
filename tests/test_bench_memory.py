"""`p2p bench memory`: the row arithmetic (memory per image, the largest batch in a budget), the
flags' checks, rows that could not be measured (over time, out of memory, killed) recorded as
such rather than dropped, rows handed over as they are measured, and where each figure comes
from. The GPU path runs only on a GPU: its out-of-memory handling is checked with CUDA stood in for."""

from __future__ import annotations

import json

import pytest

from p2p.bench import memory
from p2p.bench.memory import Measurement, MemoryOptions, _in_fresh_process, largest_batch, summarise
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


def test_the_largest_batch_for_40_and_80_gb_from_one_row():
    row = {"peak_gb": 6.0, "per_image_gb": 4.0, "batch_size": 1}  # 2 GB fixed + 4 GB per image
    assert largest_batch(row, 40) == 9 and largest_batch(row, 80) == 19
    assert largest_batch({**row, "per_image_gb": 0.0}, 80) is None  # no slope, no estimate
    assert largest_batch({**row, "peak_gb": None}, 80) is None


def test_a_measurement_killed_by_the_oom_killer_is_a_row_that_says_so(tmp_path, monkeypatch):
    """The kernel's (or a memory cgroup's) OOM killer sends SIGKILL: no output, no traceback.
    A real SIGKILL, from a stand-in interpreter that kills itself."""
    killer = tmp_path / "python"
    killer.write_text("#!/bin/sh\nkill -KILL $$\n")
    killer.chmod(0o755)
    monkeypatch.setattr("sys.executable", str(killer))
    m = _in_fresh_process(Measurement("2048x1024", "resnet", "fp32", "none", 1, "cpu"), timeout_s=60)
    assert m.peak_bytes is None and m.skipped == "out of memory: killed (SIGKILL)"


def test_rows_are_handed_over_as_they_come_and_a_larger_batch_is_not_tried_after_a_failure(monkeypatch):
    tried = []

    def over_time(m, timeout_s):
        tried.append(m.batch_size)
        m.skipped = "not measured: over 1 s"
        return m

    monkeypatch.setattr(memory, "_in_fresh_process", over_time)
    seen = []
    payload = memory.run_memory(MemoryOptions(resolutions=("256", "512"), generators=("unet",), precisions=("fp32",),
                                              checkpointing=("none",), device="cpu"),
                                progress=lambda _: None, partial=lambda p: seen.append(json.loads(json.dumps(p))))
    assert tried == [1, 1]  # batch 2 only after batch 1 was measured
    assert [len(p["results"]) for p in seen] == [1, 2] and all(p["partial"] for p in seen)
    assert payload["partial"] is False and [r["resolution"] for r in payload["results"]] == ["256", "512"]


def test_one_process_is_for_the_gpu_only():
    with pytest.raises(UsageError, match="--one-process: GPU only"):
        MemoryOptions(one_process=True, device="cpu").check()
    bad = run_p2p("bench", "memory", "--one-process", "--device", "cpu", check=False)
    assert bad.returncode == 2 and bad.stderr.strip().count("\n") == 0 and "GPU only" in bad.stderr


def test_one_process_rows_on_the_gpu_record_out_of_memory_and_go_on(monkeypatch):
    """CUDA stood in for (no GPU here): the allocator's out-of-memory error at batch 2 ends that
    row with what batch 1 measured, and the next row is measured."""
    import torch

    def step(resolution, generator, precision, checkpointing, batch_size, device):
        if resolution == "1024" and batch_size == 2:
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
        return {"peak_bytes": int(3e9 * batch_size), "seconds": 0.1, "source": memory.SOURCE_CUDA,
                "reserved_bytes": int(3.5e9 * batch_size)}

    monkeypatch.setattr(memory, "measure_one", step)
    monkeypatch.setattr(memory, "_resolve_device", lambda device: "cuda")
    payload = memory.run_memory(MemoryOptions(resolutions=("1024", "512"), generators=("local",), precisions=("bf16",),
                                              checkpointing=("none",), device="cuda", one_process=True), lambda _: None)
    first, second = payload["results"]
    assert first["peak_gb"] == 3 and first["reserved_gb"] == 3.5 and first["skipped"] == "batch 2: out of memory"
    assert first["max_batch"] is None and "allocator" in first["source"]
    assert second["peak_gb"] == 3 and second["per_image_gb"] == 3 and second["max_batch"] == 26


def test_the_cpu_sampler_sees_a_tensor_that_lived_between_two_reads():
    """A 256 MB tensor allocated, filled and freed while the sampler runs is in its peak, and
    the bytes before it are not (the peak is RssAnon, so a shared library's pages that the kernel
    drops or reads again cannot move it)."""
    import time

    import torch

    before = memory.anon_resident_bytes()
    sampler = memory.AnonPeak().start()
    big = torch.ones(64 * 2**20)  # 256 MiB, touched
    time.sleep(0.05)
    del big
    time.sleep(0.05)
    after = memory.anon_resident_bytes()
    peak = sampler.stop()
    assert peak - before > 0.95 * 2**28 and after - before < 0.5 * 2**28


@pytest.mark.slow
def test_a_cpu_row_is_measured_in_a_fresh_process_and_says_from_what():
    """The smallest real row: unet_256 and its PatchGAN at 256 px, batch 1 and 2."""
    out = _in_fresh_process(Measurement("256", "unet", "fp32", "none", 1, "cpu"), timeout_s=600)
    assert not out.skipped and out.extra["source"] == memory.SOURCE_CPU and "RSS" in out.extra["source"]
    # 54.4 M + 2.8 M parameters, each with a gradient and Adam's two moments: at least 0.9 GB
    assert 0.9e9 < out.peak_bytes < 8e9


@pytest.mark.gpu
def test_gpu_rows_in_one_process_read_what_fresh_processes_read():
    """The allocator's peak, reset before each step, gives a row in a shared process the figure
    of a fresh one (within the cuBLAS workspace the shared process keeps and subtracts)."""
    fresh = _in_fresh_process(Measurement("256", "resnet", "fp32", "none", 1, "cuda"), timeout_s=300)
    shared = [memory._in_this_process(Measurement("256", "resnet", "fp32", "none", 1, "cuda")) for _ in range(2)]
    assert fresh.extra["source"] == memory.SOURCE_CUDA and not fresh.skipped
    for m in shared:
        assert m.extra["source"] == memory.SOURCE_CUDA and m.extra["reserved_bytes"] >= m.peak_bytes
        assert abs(m.peak_bytes - fresh.peak_bytes) <= 0.02 * fresh.peak_bytes + 64 * 2**20
