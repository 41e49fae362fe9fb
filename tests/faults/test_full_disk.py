"""Fault: the disk fills up. Each test mounts a real 32 MB tmpfs (root only: skipped with the
reason otherwise, required in CI by P2P_REQUIRE_TMPFS=1), fills it to a few bytes short of what
the next write needs, and checks that the writer leaves the previous complete file as it was
and no temporary file behind, and says which path failed and how much space it needed. A
training run that cannot checkpoint stops (exit 1, one line) instead of training on."""

from __future__ import annotations

import signal
import subprocess
import sys
import time

import pytest
import torch

from helpers import image_folders as F
from helpers.faults import fill_disk, free_disk, small_disk
from helpers.requirements import require_tmpfs
from helpers.runs import ROOT, TINY, load_ckpt, p2p_env, wait_for
from p2p.errors import WriteError


@pytest.fixture
def disk(tmp_path):
    require_tmpfs()
    with small_disk(tmp_path / "disk", mb=32) as d:
        yield d


def _leftovers(folder) -> list[str]:
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*") if p.name.endswith((".tmp", ".part")))


def _refused(write, path, needed_at_least: int):
    """`write()` fails with a WriteError naming `path`, the space it needs and what is free."""
    with pytest.raises(WriteError) as info:
        write()
    e = info.value
    assert e.path == str(path) and f"cannot write {path}: no space left on device: it needs " in str(e), str(e)
    assert e.needed is not None and e.needed >= needed_at_least and e.free is not None and e.free < e.needed
    assert "\n" not in str(e)
    return e


def test_atomic_files_keep_the_previous_version(disk):
    from p2p.atomic import write_bytes
    from p2p.bench.common import write_json

    target = disk / "results.json"
    write_json(target, {"old": True})
    before = target.read_bytes()
    fill_disk(disk, leave=64 * 1024)
    e = _refused(lambda: write_json(target, {"rows": ["x" * 1000] * 200}), target, 200_000)
    assert "the previous results.json is unchanged" in str(e)
    assert target.read_bytes() == before and _leftovers(disk) == []
    _refused(lambda: write_bytes(disk / "new.bin", b"\1" * 300_000), disk / "new.bin", 300_000)
    assert not (disk / "new.bin").exists() and _leftovers(disk) == []


def test_checkpoint_save_keeps_last_pt_and_leaves_no_temporary(disk):
    from p2p.checkpoint_file import read_checkpoint_file
    from p2p.train.checkpoint import Checkpoints

    ck = Checkpoints(disk / "run", keep_last=2)
    payload = {"format": "p2p", "version": 2, "step": 1, "w": torch.zeros(250_000)}  # 1 MB of tensor
    ck.save(payload, 1)
    fill_disk(disk, leave=512 * 1024)  # half a checkpoint fits
    _refused(lambda: ck.save({**payload, "step": 2}, 2), ck.last, 1_000_000)
    assert read_checkpoint_file(ck.last)["step"] == 1 and not (ck.dir / "step-00000002.pt").exists()
    assert _leftovers(disk) == []


def test_metrics_append_and_sample_png_leave_no_partial_record(disk):
    from p2p.train.logger import RunLogger

    log = RunLogger(disk / "run", max_steps=10, start_step=0, trackers="")  # the files only: no tracker thread
    log.log({"step": 1, "G_L1": 1.0})
    before = (disk / "run" / "metrics.jsonl").read_bytes()
    img = torch.rand(2, 3, 256, 256)
    first = log.samples(1, img, img, img)
    png = first.read_bytes()
    fill_disk(disk, leave=2048)
    with pytest.raises(WriteError, match="metrics.jsonl: no space left on device"):
        log.log({"step": 2, "G_L1": 2.0, "pad": "x" * 8192})
    assert (disk / "run" / "metrics.jsonl").read_bytes() == before, "no half line at the end"
    with pytest.raises(WriteError, match="step-00000001.png"):
        log.samples(1, img.flip(-1), img, img)
    assert first.read_bytes() == png and _leftovers(disk) == []
    free_disk(disk)
    log.close()


def test_shard_index_and_manifest_writes_fail_cleanly_and_a_rerun_finishes(disk, tmp_path):
    from p2p.cli import main as p2p_main
    from p2p.data.shards import read_manifest
    from p2p.data.shards.index import read_index, write_index

    src = tmp_path / "coco"
    F.make_coco_like(src, n=24, seed=2, scale=0.5)
    out = disk / "shards"
    args = ["shard", str(src), str(out), "--size", "120", "--shard-size-mb", "0.15", "--workers", "1",
            "--val-fraction", "0.2"]
    fill_disk(disk, leave=200 * 1024)  # room for one or two of the 4 shards (390 kB), not for all
    assert p2p_main(args) == 1
    assert _leftovers(disk) == [], "a failed shard leaves no .tmp"
    for tar in out.glob("*/*.tar"):  # what was written is complete: tar, index and sidecar
        assert tar.with_suffix(".idx").is_file() and tar.with_name(tar.stem + ".meta.json").is_file()
    free_disk(disk)
    assert p2p_main(args) == 0
    m = read_manifest(out)
    assert m["complete"] and m["count"] == 24
    manifest = (out / "manifest.json").read_bytes()
    idx = sorted(out.glob("train/*.idx"))[0]
    index_before = idx.read_bytes()
    fill_disk(disk, leave=100)
    _refused(lambda: write_index(idx.with_suffix(".tar"), idx), idx, len(index_before))
    assert idx.read_bytes() == index_before and read_index(idx)
    assert p2p_main([*args]) == 1, "the manifest cannot be rewritten on a full disk"
    assert (out / "manifest.json").read_bytes() == manifest and _leftovers(disk) == []


def test_training_that_cannot_checkpoint_stops_with_one_line(disk):
    run_dir = disk / "runs" / "full"
    cmd = [sys.executable, "-m", "p2p", "train", f"run.out_dir={disk / 'runs'}", "run.name=full", *TINY,
           "train.max_steps=100000", "train.log_every=100000", "train.ckpt_every=2"]
    err = open(disk.parent / "train.err", "w")
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=err, env=p2p_env(), cwd=ROOT)
    try:
        last = run_dir / "checkpoints" / "last.pt"
        wait_for(lambda: last.exists(), 120, "the first checkpoint")
        while True:  # stopped between two checkpoints, not inside one (a written .tmp not yet renamed)
            proc.send_signal(signal.SIGSTOP)
            time.sleep(0.5)
            if not any(p.name.endswith(".tmp") for p in last.parent.iterdir()):
                break
            proc.send_signal(signal.SIGCONT)
            time.sleep(0.05)
        saved = load_ckpt(last)["step"]
        fill_disk(disk, leave=last.stat().st_size // 2)
        t0 = time.monotonic()
        proc.send_signal(signal.SIGCONT)
        assert proc.wait(timeout=120) == 1
        assert time.monotonic() - t0 < 60
    finally:
        proc.kill()
        proc.wait()
    text = (disk.parent / "train.err").read_text()
    errors = [ln for ln in text.splitlines() if "error:" in ln]
    assert len(errors) == 1 and "Traceback" not in text, text[-3000:]
    assert f"cannot write {last}: no space left on device: it needs " in errors[0]
    assert "the previous last.pt is unchanged" in errors[0] and f"last good checkpoint: {last}" in errors[0]
    assert "to resume, run:" in text
    ck = load_ckpt(last)
    assert ck["step"] == saved and ck["checksum"].startswith("sha256:"), "the last complete checkpoint stays"
    assert f"last good checkpoint: {last} (step {saved})" in errors[0]
    assert _leftovers(disk) == []
