"""The nvjpeg backend on machines without a GPU, and DALI as an optional extra.

No machine here has CUDA, so the one call that needs it, torchvision's batched nvJPEG decode,
is replaced by the CPU decoder standing in for it (helpers.jpeg_stand_in.CpuJpegDecoder:
libjpeg-turbo on the same list of files). Everything else is real: the wds reader in DataLoader
workers sending JPEG files, the window cut, the batch contract, training and resume through
`p2p train`. With the stand-in the pixels are libjpeg-turbo's, so an nvjpeg batch must equal
the wds batch bit for bit; nvJPEG's own pixels are tested on a GPU (tests/test_gpu.py).
"""

from __future__ import annotations

import io
import json
import shutil
import subprocess
import sys
import tarfile
import tomllib
from pathlib import Path

import numpy as np
import pytest
import torch

from helpers import image_folders as F
from helpers.jpeg_stand_in import CpuJpegDecoder
from helpers.requirements import hide_dali
from helpers.runs import ROOT, load_ckpt, p2p_env, run_p2p
from p2p.config import Config, with_values
from p2p.data import build_loader, loader_args, resolve_backend
from p2p.data.nvjpeg import JpegBatch, NvjpegLoader
from p2p.data.shards import make_shards, shard_files
from p2p.data.shards.index import read_index
from p2p.errors import UsageError

SIZE = 48  # stored short side = load size
STAND_IN = str(ROOT / "tests" / "helpers" / "jpeg_stand_in.py")


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    root = tmp_path_factory.mktemp("nvjpeg")
    F.make_coco_like(root / "src", n=30, seed=1, scale=0.25)  # about 160 x 120, mixed aspect
    make_shards(root / "src", root / "shards", size=SIZE, val_fraction=0.3, shard_size_mb=0.02, workers=2)
    F.make_paired(root / "paired_src", n=10, size=64)
    make_shards(root / "paired_src", root / "paired", task="paired", size=SIZE, val_fraction=0.25, workers=1)
    return root


def make_cfg(source, backend="wds", **over) -> Config:
    values = {"data.backend": backend, "data.source": str(source), "data.load_size": over.pop("load_size", SIZE),
              "data.image_size": 32, "data.val_images": 6, "data.workers": over.pop("workers", 0),
              "train.batch_size": over.pop("batch_size", 4), "model.num_downs": 5}
    if "task" in over:
        values["task.name"] = over.pop("task")
    if "kind" in over:
        values["data.worker_kind"] = over.pop("kind")
    assert not over
    return with_values(Config(), values)


def stand_in_loader(cfg, split="train", rank=0, world=1, decoder=None) -> NvjpegLoader:
    return NvjpegLoader(cfg.data.source, split, rank, world, loader_args(cfg), None, decoder or CpuJpegDecoder())


def assert_same_batches(got, want) -> None:
    assert len(got) == len(want) > 0
    for b, (x, y) in enumerate(zip(got, want)):
        assert x.keys == y.keys, f"batch {b}: other samples"
        assert x.images.dtype == torch.uint8 and x.images.shape == y.images.shape, f"batch {b}: {x.images.shape}"
        assert torch.equal(x.images, y.images), f"batch {b}: other pixels"


def members(shards: Path) -> dict[str, bytes]:
    """Every sample's stored jpg, read from the tars with tarfile (independent of p2p's reader)."""
    out = {}
    for split in ("train", "val"):
        for tar, _ in shard_files(shards, split):
            with tarfile.open(tar) as t:
                for m in t.getmembers():
                    if m.name.endswith(".jpg"):
                        out[m.name[:-4]] = t.extractfile(m).read()
    return out


# ---------------------------------------------------------------------------------------------
# the batch contract: the same as wds


@pytest.mark.parametrize("world", [1, 3])
def test_batches_equal_wds_for_every_rank_epoch_and_resume_position(data, world):
    cfg = make_cfg(data / "shards", batch_size=2)
    for rank in range(world):
        wds = build_loader(cfg, "train", rank, world)
        decoder = CpuJpegDecoder()
        nv = stand_in_loader(cfg, rank=rank, world=world, decoder=decoder)
        assert nv.batches_per_epoch == wds.batches_per_epoch
        for epoch, start in ((0, 0), (1, 0), (1, 2)):
            got = list(nv.epoch(epoch, start))
            assert len(got) == nv.batches_per_epoch - start
            assert_same_batches(got, list(wds.epoch(epoch, start)))
        # one batched decoder call per batch, holding every sample of it
        assert decoder.calls and all(len(c) == 2 for c in decoder.calls)
        assert list(nv.epoch(0, nv.batches_per_epoch)) == []


def test_workers_send_the_stored_files_and_the_batches_do_not_depend_on_them(data):
    stored = members(data / "shards")
    ref = list(build_loader(make_cfg(data / "shards", workers=0), "train").epoch(2))
    for workers, kind in ((0, "process"), (2, "process"), (2, "thread")):
        loader = stand_in_loader(make_cfg(data / "shards", workers=workers, kind=kind))
        item = loader.dataset(2)[1]
        assert isinstance(item, JpegBatch) and not item.pixels  # nothing decoded in the worker
        files = item.files()
        assert [i for i, _ in files] == list(range(4))
        assert [bytes(f.numpy()) for _, f in files] == [stored[k] for k in item.keys]
        assert_same_batches(list(loader.epoch(2)), ref)


@pytest.mark.parametrize("case", ["paired", "resized", "validation"])
def test_paired_resized_and_validation_batches_equal_wds(data, case):
    if case == "paired":
        cfg, split = make_cfg(data / "paired", task="paired", batch_size=2), "train"
    elif case == "resized":  # stored 48, loaded at 40: resized before the window
        cfg, split = make_cfg(data / "shards", load_size=40), "train"
    else:
        cfg, split = make_cfg(data / "shards", batch_size=4), "val"
    want = list(build_loader(cfg, split).epoch(0))
    got = list(stand_in_loader(cfg, split).epoch(0))
    assert_same_batches(got, want)
    s = cfg.data.load_size
    assert got[0].images.shape[1:] == ((3, s, 2 * s) if case == "paired" else (3, s, s))


# ---------------------------------------------------------------------------------------------
# samples the GPU cannot take


def _with_member(data, tmp_path, name: str, write) -> tuple[Path, str]:
    """A copy of the shards whose first train member is overwritten in place by write(file, comp)."""
    out = tmp_path / name
    shutil.copytree(data / "shards", out)
    tar, idx = shard_files(out, "train")[0]
    comp = next(c for c in read_index(idx)[0] if c.ext == "jpg")
    with open(tar, "r+b") as f:
        f.seek(comp.offset)
        write(f, comp)
    return out, comp.name.rsplit(".", 1)[0]


def _epoch_with(cfg, key: str) -> int:
    wds = build_loader(cfg, "train")
    for epoch in range(6):  # the shard order changes: an epoch that reads it
        if key in {wds.shards.key(int(s), int(m)) for s, m in wds.plan(epoch)}:
            return epoch
    pytest.skip(f"{key} is in no epoch's plan")


def test_a_member_that_is_no_jpeg_takes_the_wds_path(data, tmp_path):
    from PIL import Image

    png = io.BytesIO()
    Image.new("RGB", (SIZE + 16, SIZE), (200, 30, 90)).save(png, "PNG")  # a tiny PNG fits the jpg's place
    source, key = _with_member(data, tmp_path, "png", lambda f, c: f.write(png.getvalue()))
    cfg = make_cfg(source)
    epoch = _epoch_with(cfg, key)
    decoder = CpuJpegDecoder()
    got = list(stand_in_loader(cfg, decoder=decoder).epoch(epoch))
    assert_same_batches(got, list(build_loader(cfg, "train").epoch(epoch)))
    assert key in [k for b in got for k in b.keys]
    assert all(not f.startswith(b"\x89PNG") for call in decoder.calls for f in call)  # never sent to the GPU


def test_a_corrupt_member_is_replaced_as_in_wds(data, tmp_path):
    source, key = _with_member(data, tmp_path, "zeros", lambda f, c: f.write(b"\x00" * 64))
    cfg = make_cfg(source)
    epoch = _epoch_with(cfg, key)
    with pytest.warns(UserWarning, match=f"corrupt sample '{key}'"):
        want = list(build_loader(cfg, "train").epoch(epoch))
    with pytest.warns(UserWarning, match=f"corrupt sample '{key}'"):
        got = list(stand_in_loader(cfg).epoch(epoch))
    assert_same_batches(got, want)
    assert key not in [k for b in got for k in b.keys]


def test_a_file_nvjpeg_rejects_is_decoded_on_the_cpu(data):
    # nvJPEG refusing a JPEG that libjpeg-turbo reads: the stand-in raises on that file as
    # torchvision does (the whole batched call fails, no partial result)
    cfg = make_cfg(data / "shards")
    want = list(build_loader(cfg, "train").epoch(0))
    key = want[1].keys[2]
    decoder = CpuJpegDecoder(reject={members(data / "shards")[key]})
    with pytest.warns(UserWarning, match=f"nvJPEG could not decode sample '{key}'"):
        got = list(stand_in_loader(cfg, decoder=decoder).epoch(0))
    assert_same_batches(got, want)


# ---------------------------------------------------------------------------------------------
# choosing the backend; refusing without CUDA


def test_nvjpeg_refuses_without_cuda_in_one_line(data, tmp_path):
    with pytest.raises(UsageError, match="decodes JPEGs on a CUDA GPU.*use data.backend=wds"):
        build_loader(make_cfg(data / "shards", "nvjpeg"), "train")
    proc = run_p2p("train", "data.backend=nvjpeg", f"data.source={data / 'shards'}", f"run.out_dir={tmp_path}",
                   "model.num_downs=5", "data.image_size=32", f"data.load_size={SIZE}", "train.max_steps=2",
                   check=False, timeout=180)
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert proc.stderr.strip().splitlines() == [
        "p2p train: error: data.backend=nvjpeg decodes JPEGs on a CUDA GPU, and this machine has no CUDA GPU; "
        "use data.backend=wds (libjpeg-turbo in the loader workers)"], proc.stderr[-2000:]


def test_submit_refuses_nvjpeg_without_gpus(data, tmp_path):
    common = ["submit", "--dry-run", "data.backend=nvjpeg", f"data.source={data / 'shards'}",
              f"run.out_dir={tmp_path}"]
    proc = run_p2p(*common, check=False, timeout=120)
    assert proc.returncode == 2 and "slurm.gpus_per_node=0" in proc.stderr, proc.stderr[-2000:]
    assert run_p2p(*common, "slurm.gpus_per_node=1", timeout=120).stdout.startswith("#!/bin/bash")


def test_auto_picks_dali_then_nvjpeg_on_a_gpu_and_wds_on_the_cpu(data, monkeypatch):
    shards, images = str(data / "shards"), str(data / "src")
    for device in (None, "cpu", torch.device("cpu")):
        assert resolve_backend(shards, "auto", device) == "wds"
    assert resolve_backend(images, "auto", "cuda") == "folder"
    try:
        import nvidia.dali  # noqa: F401
        assert resolve_backend(shards, "auto", torch.device("cuda", 0)) == "dali"
    except ImportError:
        pass
    hide_dali(monkeypatch)
    assert resolve_backend(shards, "auto", torch.device("cuda", 0)) == "nvjpeg"
    assert resolve_backend(shards, "auto", "cuda:1") == "nvjpeg"
    with pytest.raises(UsageError, match="needs a shard folder"):
        resolve_backend(images, "nvjpeg", "cuda")


def test_dali_missing_names_the_extras(data, monkeypatch):
    hide_dali(monkeypatch)
    with pytest.raises(UsageError) as e:
        build_loader(make_cfg(data / "shards", "dali"), "train")
    assert "pip install 'p2p[dali]'" in str(e.value) and "'p2p[dali-cuda12]'" in str(e.value)
    assert "\n" not in str(e.value)


def test_dali_is_an_optional_extra():
    meta = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    assert not [d for d in meta["dependencies"] if "dali" in d.lower()], "pip install p2p must not pull DALI"
    extras = meta["optional-dependencies"]
    assert [d.split(";")[0].strip() for d in extras["dali"]] == ["nvidia-dali-cuda130"]
    assert [d.split(";")[0].strip() for d in extras["dali-cuda12"]] == ["nvidia-dali-cuda120"]
    assert "dali" in (ROOT / "Makefile").read_text().split("EXTRAS ?=")[1].splitlines()[0]  # make test has it


# ---------------------------------------------------------------------------------------------
# training and resuming through `p2p train`, with the stand-in


def stand_in_p2p(*args, check=True) -> subprocess.CompletedProcess:
    proc = subprocess.run([sys.executable, STAND_IN, *map(str, args)], capture_output=True, text=True, timeout=300,
                          env=p2p_env(), cwd=ROOT)
    if check and proc.returncode != 0:
        raise AssertionError(f"exited {proc.returncode}:\n{proc.stderr[-3000:]}")
    return proc


@pytest.mark.slow
def test_nvjpeg_trains_and_resumes_like_wds(data, tmp_path):
    # deterministic kernels, a loader worker; 26 train samples / batch 4 = 6 batches an
    # epoch, so the cut at step 4 is mid-epoch and the resumed run crosses an epoch boundary
    common = [f"run.out_dir={tmp_path}", f"data.source={data / 'shards'}", "run.deterministic=true",
              "data.image_size=32", f"data.load_size={SIZE}", "model.num_downs=5", "model.ngf=8", "model.ndf=8",
              "train.batch_size=4", "data.workers=1", "data.val_images=4", "train.log_every=1",
              "train.sample_every=0", "train.eval_every=0", "train.ckpt_every=0", "train.max_steps=9"]
    run_p2p("train", *common, "data.backend=wds", "run.name=wds", timeout=300)
    cut = stand_in_p2p("train", *common, "data.backend=nvjpeg", "run.name=nv", "train.stop_after=4", check=False)
    assert cut.returncode == 75, cut.stderr[-3000:]
    assert "(nvjpeg loader)" in cut.stderr
    ck = load_ckpt(tmp_path / "nv" / "checkpoints" / "last.pt")
    assert ck["step"] == 4 and ck["epoch"] == 0 and 0 < ck["batch_in_epoch"] < 6
    stand_in_p2p("train", *common, "data.backend=nvjpeg", "run.name=nv")
    a, b = (load_ckpt(tmp_path / n / "checkpoints" / "last.pt") for n in ("wds", "nv"))
    assert (a["step"], a["epoch"], a["batch_in_epoch"]) == (b["step"], b["epoch"], b["batch_in_epoch"]) == \
        (9, 1, 3)
    for net in ("generator", "discriminator"):
        differ = [k for k in a[net] if not torch.equal(a[net][k], b[net][k])]
        assert not differ, f"{net}: {len(differ)} tensors differ from the wds run, e.g. {differ[:3]}"

    def losses(name):
        rows = [json.loads(x) for x in (tmp_path / name / "metrics.jsonl").read_text().splitlines()]
        return {r["step"]: r["G_L1"] for r in rows if "G_L1" in r}

    assert losses("wds") == losses("nv") and sorted(losses("nv")) == list(range(1, 10))


# ---------------------------------------------------------------------------------------------
# p2p bench data


@pytest.mark.slow
def test_bench_data_records_the_nvjpeg_row_as_skipped_without_cuda(data, tmp_path):
    out = tmp_path / "bench.json"
    proc = run_p2p("bench", "data", "--source", data / "shards", "--json", out, "--quick", "--batch-size", 4,
                   "--image-size", 32, "--backends", "wds,nvjpeg", timeout=240)
    rows = json.loads(out.read_text())["results"]
    nv = [r for r in rows if r["backend"] == "nvjpeg"]
    assert len(nv) == 1 and nv[0]["img_per_s"] is None and nv[0]["ratio"] is None
    assert "no CUDA GPU" in nv[0]["skipped"]
    assert "skipped nvjpeg" in proc.stdout
    assert all(r["img_per_s"] > 0 for r in rows if r["backend"] != "nvjpeg")


def test_bench_data_nvjpeg_row_with_the_stand_in(data, monkeypatch):
    import p2p.data.nvjpeg as nvjpeg
    from p2p.bench.data import DataOptions, run_data

    monkeypatch.setattr(nvjpeg, "NvjpegDecoder", CpuJpegDecoder)
    res = run_data(str(data / "shards"), DataOptions(quick=True, batch_size=4, image_size=32, backends=("nvjpeg",)),
                   progress=lambda s: None)
    rows = [r for r in res["results"] if r["backend"] == "nvjpeg"]
    assert len(rows) == 1 and rows[0]["stage"] == "model-ready" and rows[0]["img_per_s"] > 0
    assert rows[0]["ratio"] > 0 and not rows[0].get("skipped")
    assert np.isfinite(rows[0]["ratio"])
