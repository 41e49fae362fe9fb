"""The shard loaders (wds, dali on the CPU) and the folder backend against the loader contract
of p2p.data: batch format, determinism, resume, rank-disjointness, validation, paired data,
corrupt members; then a few real training steps from shards with each backend and a smoke run
of `p2p bench data`."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from helpers import image_folders as F
from helpers.runs import TINY, run_p2p
from helpers.requirements import dali_problem, hide_dali, require_c_compiler, require_dali
from p2p.config import Config, with_values
from p2p.data import build_loader
from p2p.data.shards import make_shards, read_manifest, shard_files
from p2p.data.plan import rank_range, train_plan
from p2p.data.shards.index import read_index
from p2p.data.wds import ShardSet
from p2p.errors import UsageError

SIZE = 48  # stored short side = load size
BACKENDS = ("wds", "dali", "folder")


@pytest.fixture
def dali_installed():
    """Skips the test without DALI, or fails it when P2P_REQUIRE_DALI=1 (helpers.requirements.require_dali)."""
    require_dali()


needs_dali = pytest.mark.usefixtures("dali_installed")


@pytest.fixture(autouse=True)
def _dali_cases_need_dali(request):
    """The dali case of a `backend` parametrization needs DALI like a needs_dali test (a
    pytest.param cannot carry usefixtures, so the case is recognised here)."""
    callspec = getattr(request.node, "callspec", None)
    if callspec is not None and callspec.params.get("backend") == "dali":
        require_dali()


ALL = list(BACKENDS)
SHARDED = ["wds", "dali"]


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    root = tmp_path_factory.mktemp("loaders")
    src = root / "src"
    F.make_coco_like(src, n=36, seed=0, scale=0.25)  # about 160 x 120
    out = root / "shards"
    make_shards(src, out, size=SIZE, val_fraction=0.2, shard_size_mb=0.02, workers=2)
    one = root / "one_shard"  # a single shard: fewer shards than ranks x workers
    make_shards(src, one, size=SIZE, val_fraction=0.2, workers=1)
    psrc = root / "paired_src"
    F.make_paired(psrc, n=10, size=64)
    pout = root / "paired"
    make_shards(psrc, pout, task="paired", size=SIZE, val_fraction=0.25, workers=1)
    return {"root": root, "src": src, "shards": out, "one": one, "psrc": psrc, "paired": pout}


def make_cfg(data, backend: str, source=None, **over) -> Config:
    values = {
        "data.backend": backend, "data.source": str(source or (data["src"] if backend == "folder" else data["shards"])),
        "data.load_size": over.pop("load_size", SIZE), "data.image_size": 32, "data.val_fraction": 0.2,
        "data.val_images": 6, "data.workers": over.pop("workers", 0), "train.batch_size": over.pop("batch_size", 4),
        "run.seed": over.pop("seed", 0), "model.num_downs": 5,
    }
    if "task" in over:
        values["task.name"] = over.pop("task")
    if "kind" in over:
        values["data.worker_kind"] = over.pop("kind")
    assert not over
    return with_values(Config(), values)


def run_epoch(cfg, epoch=0, start=0, split="train", rank=0, world=1):
    loader = build_loader(cfg, split, rank, world)
    return loader, list(loader.epoch(epoch, start))


def keys_of(batches) -> list[str]:
    return [k for b in batches for k in b.keys]


def norm_key(backend: str, key: str) -> str:
    """folder keys are file paths; shard keys are the path relative to SRC without extension."""
    return Path(key).stem if backend == "folder" else key


def manifest_keys(out: Path, split: str) -> set[str]:
    """Sample keys read back with the webdataset package (independent of p2p's reader)."""
    import webdataset as wds

    urls = [t for t, _ in shard_files(out, split)]
    return {s["__key__"] for s in wds.WebDataset(urls, shardshuffle=False, empty_check=False)}


# ---------------------------------------------------------------------------------------------
# the contract, per backend


@pytest.mark.parametrize("backend", ALL)
def test_batch_contract_and_determinism(data, backend):
    cfg = make_cfg(data, backend)
    loader, first = run_epoch(cfg, 1)
    assert len(first) == loader.batches_per_epoch > 1
    known = manifest_keys(data["shards"], "train")
    if backend == "folder":  # the folder backend splits train/val by its own hash of the path
        known |= manifest_keys(data["shards"], "val")
    for b in first:
        assert b.images.dtype == torch.uint8 and b.images.shape == (4, 3, SIZE, SIZE)
        assert all(isinstance(k, str) and norm_key(backend, k) in known for k in b.keys)
    again = list(loader.epoch(1))
    assert keys_of(again) == keys_of(first)
    assert all(torch.equal(a.images, b.images) for a, b in zip(first, again))
    other = list(loader.epoch(2))
    assert keys_of(other) != keys_of(first)  # a new order every epoch
    keys = keys_of(first)
    assert len(set(keys)) == len(keys)  # no sample twice in an epoch


@pytest.mark.parametrize("backend", ALL)
def test_resume_is_the_tail_of_the_epoch(data, backend):
    cfg = make_cfg(data, backend)
    loader, full = run_epoch(cfg, 3)
    k = 2
    tail = list(loader.epoch(3, start=k))
    assert len(tail) == len(full) - k
    assert keys_of(tail) == keys_of(full[k:])
    assert all(torch.equal(a.images, b.images) for a, b in zip(tail, full[k:]))
    assert list(loader.epoch(3, start=loader.batches_per_epoch)) == []


@pytest.mark.parametrize("backend", ALL)
@pytest.mark.parametrize("world", [2, 3])
def test_ranks_are_disjoint_with_equal_batch_counts(data, backend, world):
    cfg = make_cfg(data, backend, batch_size=2)
    counts, seen = set(), []
    for rank in range(world):
        loader, batches = run_epoch(cfg, 0, rank=rank, world=world)
        counts.add((loader.batches_per_epoch, len(batches)))
        keys = keys_of(batches)
        assert len(set(keys)) == len(keys), f"rank {rank} repeats a sample"
        seen.append(set(keys))
    assert len(counts) == 1 and next(iter(counts))[0] == next(iter(counts))[1]
    for i in range(world):
        for j in range(i + 1, world):
            assert not seen[i] & seen[j], f"ranks {i} and {j} share samples"


@pytest.mark.parametrize("backend", ALL)
def test_validation_is_fixed_centre_crops(data, backend):
    cfg = make_cfg(data, backend, batch_size=4)
    loader, a = run_epoch(cfg, 0, split="val")
    b = list(loader.epoch(7))  # no randomness: the epoch does not matter
    assert keys_of(a) == keys_of(b) and all(torch.equal(x.images, y.images) for x, y in zip(a, b))
    assert 0 < len(keys_of(a)) <= cfg.data.val_images
    assert all(x.images.shape[1:] == (3, SIZE, SIZE) for x in a)
    if backend != "folder":
        assert {norm_key(backend, k) for k in keys_of(a)} <= manifest_keys(data["shards"], "val")


@needs_dali
def test_wds_and_dali_read_the_same_samples_and_validate_alike(data):
    # Same per-rank sample sets in an epoch (the same shard order and range rule), and the
    # same validation pixels (libjpeg-turbo both, the same centre window).
    shards = ShardSet(str(data["shards"]), "train")
    for world in (1, 2):
        for rank in range(world):
            mine = _range_keys(shards, 0, 4, rank, world)
            lo, hi = rank_range(shards.total, rank, world)
            assert len(mine) == hi - lo
            for be in ("wds", "dali"):
                got = keys_of(run_epoch(make_cfg(data, be, batch_size=2), 4, rank=rank, world=world)[1])
                assert set(got) <= mine and len(got) == (shards.total // world) // 2 * 2
    va = run_epoch(make_cfg(data, "wds"), split="val")[1]
    vb = run_epoch(make_cfg(data, "dali"), split="val")[1]
    assert keys_of(va) == keys_of(vb)
    assert all(torch.equal(x.images, y.images) for x, y in zip(va, vb))


def _range_keys(shards: ShardSet, seed: int, epoch: int, rank: int, world: int) -> set[str]:
    from p2p.data.plan import rank_samples

    return {shards.key(int(s), int(m)) for s, m in rank_samples(shards.counts, seed, epoch, rank, world)}


@pytest.mark.parametrize("batch_size", [4, 1])
def test_wds_is_independent_of_the_worker_count(data, batch_size):
    # batch 1: each worker reuses its shared-memory slots several times over in the epoch, and
    # every batch is kept (list) while later ones arrive
    ref = run_epoch(make_cfg(data, "wds", workers=0, batch_size=batch_size), 5)[1]
    for w, kind in ((1, "process"), (2, "process"), (1, "thread"), (2, "thread")):
        got = run_epoch(make_cfg(data, "wds", workers=w, batch_size=batch_size, kind=kind), 5)[1]
        assert len(got) == len(ref) and keys_of(got) == keys_of(ref), (w, kind)
        assert all(torch.equal(a.images, b.images) for a, b in zip(got, ref)), (w, kind)


@pytest.mark.parametrize("workers,kind", [(0, "process"), (2, "process"), (2, "thread")])
def test_wds_batches_are_channels_last_in_memory(data, workers, kind):
    """libjpeg-turbo's pixel order: the crop window is copied row by row, not pixel by pixel
    (p2p.data.wds); the shape is still the contract's N x 3 x H x W."""
    _, batches = run_epoch(make_cfg(data, "wds", workers=workers, kind=kind), 0)
    for b in batches:
        assert b.images.shape == (4, 3, SIZE, SIZE)
        assert b.images.is_contiguous(memory_format=torch.channels_last) and not b.images.is_contiguous()


def test_wds_decode_threads_stop_with_the_epoch(data):
    """A loop that stops mid-epoch (a signal, train.stop_after) leaves no decode thread behind."""
    import threading

    loader = build_loader(make_cfg(data, "wds", workers=2, kind="thread", batch_size=1), "train")
    stream = loader.epoch(0)
    next(stream)
    assert any(t.name.startswith("p2p-wds") for t in threading.enumerate())
    stream.close()
    assert not [t.name for t in threading.enumerate() if t.name.startswith("p2p-wds")]


def test_wds_plan_is_computed_from_manifest_counts(data):
    shards = ShardSet(str(data["shards"]), "train")
    m = read_manifest(data["shards"])
    assert shards.total == m["train"]["count"] and len(m["train"]["shards"]) >= 4
    for world in (1, 2, 3, 5):
        plans = [train_plan(shards.counts, 2, 0, 0, r, world) for r in range(world)]
        assert len({len(p) for p in plans}) == 1 and len(plans[0]) == (shards.total // world) // 2 * 2
        rows = {tuple(x) for p in plans for x in p.tolist()}
        assert len(rows) == sum(len(p) for p in plans)  # disjoint
    with pytest.raises(UsageError, match="cannot give each"):
        train_plan(shards.counts, 64, 0, 0, 0, 1)


@pytest.mark.parametrize("backend", SHARDED)
def test_fewer_shards_than_ranks_times_workers(data, backend):
    assert len(read_manifest(data["one"])["train"]["shards"]) == 1
    cfg = make_cfg(data, backend, source=data["one"], workers=2, batch_size=2)
    seen = []
    for rank in range(3):
        loader, batches = run_epoch(cfg, 1, rank=rank, world=3)
        assert len(batches) == loader.batches_per_epoch > 0
        seen.append(set(keys_of(batches)))
    assert not (seen[0] & seen[1] or seen[0] & seen[2] or seen[1] & seen[2])


@pytest.mark.parametrize("backend", ALL)
def test_paired_shards_give_side_by_side_images(data, backend):
    source = data["psrc"] if backend == "folder" else data["paired"]
    cfg = make_cfg(data, backend, source=source, task="paired", batch_size=2)
    _, batches = run_epoch(cfg, 0)
    assert batches and all(b.images.shape == (2, 3, SIZE, 2 * SIZE) for b in batches)
    if backend != "folder":
        with pytest.raises(UsageError, match="task.name=paired"):
            build_loader(make_cfg(data, backend, source=source), "train")
        with pytest.raises(UsageError, match="A\\|B shards"):
            build_loader(make_cfg(data, backend, task="paired"), "train")


def test_other_stored_size_is_resized(data):
    cfg = make_cfg(data, "wds", load_size=40)
    _, batches = run_epoch(cfg, 0)
    assert batches[0].images.shape == (4, 3, 40, 40)


@pytest.mark.parametrize("threads", [0, 2])
def test_corrupt_member_is_skipped_with_a_warning(data, tmp_path, threads):
    bad = tmp_path / "bad"
    shutil.copytree(data["shards"], bad)
    tar, idx = shard_files(bad, "train")[1]
    comp = next(c for c in read_index(idx)[0] if c.ext == "jpg")
    key = comp.name.rsplit(".", 1)[0]
    with open(tar, "r+b") as f:  # a badly copied byte range: the JPEG's first 64 bytes
        f.seek(comp.offset)
        f.write(b"\x00" * 64)
    cfg = make_cfg(data, "wds", source=bad, **({"workers": threads, "kind": "thread"} if threads else {}))
    loader = build_loader(cfg, "train")
    clean = build_loader(make_cfg(data, "wds"), "train")
    for epoch in range(3):  # the shard order changes; find an epoch that reads it
        plan = {clean.shards.key(int(s), int(m)) for s, m in clean.plan(epoch)}
        if key in plan:
            break
    else:
        pytest.skip("the corrupt sample is never in an epoch's plan")
    with pytest.warns(UserWarning, match=f"corrupt sample '{key}'.*{Path(tar).name}"):
        batches = list(loader.epoch(epoch))
    assert len(batches) == loader.batches_per_epoch
    assert all(b.images.shape == (4, 3, SIZE, SIZE) for b in batches)
    assert key not in keys_of(batches)
    with pytest.warns(UserWarning, match="corrupt sample"):
        again = list(loader.epoch(epoch))  # the replacement is deterministic
    assert keys_of(again) == keys_of(batches)


def test_shard_folder_without_val_split_warns_once(data, tmp_path):
    out = tmp_path / "noval"
    make_shards(data["src"], out, size=SIZE, val_fraction=0.0, workers=1)
    cfg = make_cfg(data, "wds", source=out)
    with pytest.warns(UserWarning, match="no val shards"):
        loader, batches = run_epoch(cfg, split="val")
    assert len(keys_of(batches)) == cfg.data.val_images


def test_dali_missing_is_a_usage_error(data, monkeypatch):
    hide_dali(monkeypatch)
    with pytest.raises(UsageError, match=r"pip install .p2p\[dali\]."):
        build_loader(make_cfg(data, "dali"), "train")


# ---------------------------------------------------------------------------------------------
# the real commands


@pytest.mark.slow
@pytest.mark.parametrize("backend", ALL)
def test_train_a_few_steps(data, backend, tmp_path):
    source = data["src"] if backend == "folder" else data["shards"]
    run_p2p("train", f"data.source={source}", f"data.backend={backend}", *TINY, f"data.load_size={SIZE}",
            "data.val_fraction=0.2", "data.workers=1", "train.max_steps=3", "train.eval_every=3",
            f"run.out_dir={tmp_path}", "run.name=t", timeout=180)
    rows = [json.loads(x) for x in (tmp_path / "t" / "metrics.jsonl").read_text().splitlines()]
    steps = [r["step"] for r in rows if "step" in r and "G_L1" in r]
    assert steps and steps[-1] == 3
    assert all(np.isfinite(r["G_L1"]) for r in rows if "G_L1" in r)


@pytest.mark.slow
def test_training_is_the_same_with_decode_threads(data, tmp_path):
    """data.worker_kind=thread changes where batches are made, not what they are: the same
    losses, step by step, as worker processes."""
    losses = {}
    for kind in ("process", "thread"):
        run_p2p("train", f"data.source={data['shards']}", "data.backend=wds", *TINY, f"data.load_size={SIZE}",
                "data.workers=2", f"data.worker_kind={kind}", "train.max_steps=4", "train.log_every=1",
                f"run.out_dir={tmp_path}", f"run.name={kind}", timeout=180)
        rows = [json.loads(x) for x in (tmp_path / kind / "metrics.jsonl").read_text().splitlines()]
        losses[kind] = [(r["step"], r["G_L1"], r["D_real"]) for r in rows if "G_L1" in r]
    assert [s for s, *_ in losses["thread"]] == [1, 2, 3, 4]
    assert losses["thread"] == losses["process"]


@pytest.mark.slow
def test_bench_data_quick(data, tmp_path):
    require_c_compiler()
    out = tmp_path / "bench.json"
    have_dali = dali_problem() is None
    backends = "wds,dali,folder" if have_dali else "wds,folder"
    proc = run_p2p("bench", "data", "--source", data["shards"], "--json", out, "--quick", "--batch-size", 4,
                   "--backends", backends, timeout=180)
    assert "baseline" in proc.stdout
    res = json.loads(out.read_text())
    assert {"environment", "config", "results"} <= set(res)
    rows = res["results"]
    base = [r for r in rows if "baseline" in r["name"]]
    assert len(base) == 1 and base[0]["ratio"] == pytest.approx(1.0)
    names = {r["backend"] for r in rows}
    assert set(backends.split(",")) <= names
    for r in rows:
        assert r["img_per_s"] > 0 and r["ratio"] > 0 and r["baseline"] == base[0]["name"]
    assert res["config"]["device_step"] == "c-kernel" and res["config"]["decoder"] == "simplejpeg"
    pipelines = [r for r in rows if r["stage"] == "model-ready" and r["backend"] != "baseline"]
    assert pipelines and all(r["device_step"] == "c-kernel" and r["prepare_ahead"] for r in pipelines)
    if not have_dali:
        require_dali()  # the dali part did not run: record a skip (a failure under P2P_REQUIRE_DALI=1)


@pytest.mark.slow
def test_bench_decode_compares_pixels(data):
    from p2p.bench.decode import BASELINE, run_decode

    rows = {r["name"]: r for r in run_decode(str(data["shards"]), images=8, repeats=1)["results"]}
    assert rows[BASELINE]["max_abs_diff"] == 0 and rows[BASELINE]["ratio"] == pytest.approx(1.0)
    accurate, fast = rows["simplejpeg (accurate)"], rows["simplejpeg fastdct"]
    assert accurate["max_abs_diff"] == 0 and accurate["keeps_pixels"] and accurate["used_by_loaders"]
    assert fast["max_abs_diff"] > 1 and not fast["keeps_pixels"] and not fast["used_by_loaders"]
    assert all(r["img_per_s"] > 0 for r in rows.values())
