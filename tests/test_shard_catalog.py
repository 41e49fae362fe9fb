"""A split of a shard folder opened in O(1) per shard a rank touches: `p2p shard` writes
manifest.counts (the shard lists, compact) and readers take counts from it; paths are made and
tars checked only for the shards a rank's epoch touches, so a rank of a 10k-shard folder never
looks at the others (a missing tar it never touches is no error; the rank that touches one fails
in one line). Old folders without the counts file, or whose manifest changed since, are read
from manifest.json with the same plans."""

from __future__ import annotations

import json
import os
import shutil

import numpy as np
import pytest

from helpers.hostile_files import jpeg_bytes, photo_rgb
from p2p.config import load_config
from p2p.data.plan import rank_samples, train_plan, val_plan
from p2p.data.shards.catalog import COUNTS, SplitCatalog, read_counts_file
from p2p.data.shards.format import read_manifest, shard_files
from p2p.data import loader_args
from p2p.data.wds import WdsLoader
from p2p.errors import UsageError


@pytest.fixture(scope="module")
def shards(tmp_path_factory):
    from p2p.data.shards import make_shards

    root = tmp_path_factory.mktemp("catalog")
    (root / "src").mkdir()
    for i in range(30):
        (root / "src" / f"p{i}.jpg").write_bytes(jpeg_bytes(photo_rgb(48, 64, seed=i)))
    make_shards(root / "src", root / "out", size=40, val_fraction=0.3, workers=1, shard_size_mb=0.01)
    return root / "out"


def _loader(folder, rank: int, world: int, batch: int = 2) -> WdsLoader:
    cfg = load_config(None, [f"data.source={folder}", "data.backend=wds", f"train.batch_size={batch}",
                             "data.workers=0", "data.load_size=40", "data.image_size=32", "model.num_downs=5",
                             "data.val_images=4"])
    return WdsLoader(str(folder), "train", rank, world, loader_args(cfg))


def test_p2p_shard_writes_the_counts_file_and_readers_take_it(shards):
    m = read_manifest(shards)
    for split in ("train", "val"):
        got = read_counts_file(shards, split)
        assert got is not None, "p2p shard wrote manifest.counts for this manifest"
        cat = SplitCatalog(str(shards), split)
        assert cat.from_counts_file
        assert cat.counts.tolist() == [s["count"] for s in m[split]["shards"]]
        assert cat.total == m[split]["count"]
        assert list(zip(cat.tars, cat.idxs)) == shard_files(shards, split)
        assert cat.manifest["options"] == m["options"] and cat.manifest["task"] == m["task"]


def test_a_copy_that_did_not_keep_file_times_still_reads_the_counts_file(shards, tmp_path):
    """The counts file names its manifest by size and modification time (one stat) and, for a
    copy made without times, by the manifest's sha256."""
    header = json.loads((shards / COUNTS).read_bytes().split(b"\n")[1])
    st = os.stat(shards / "manifest.json")
    assert header["manifest_stat"] == [st.st_size, st.st_mtime_ns]
    copy = tmp_path / "copy"
    shutil.copytree(shards, copy)
    os.utime(copy / "manifest.json", ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))
    cat = SplitCatalog(str(copy), "train")
    assert cat.from_counts_file and cat.counts.tolist() == SplitCatalog(str(shards), "train").counts.tolist()


@pytest.mark.parametrize("how", ["no_counts_file", "manifest_rewritten", "counts_file_damaged"])
def test_folders_read_from_the_manifest_alone_give_the_same_plans(how, shards, tmp_path):
    """A folder from before manifest.counts, one whose manifest changed since it was written
    (it then belongs to another manifest), and one whose file is damaged: manifest.json is read,
    and every plan and key is the one the counts file gives."""
    old = tmp_path / "old"
    shutil.copytree(shards, old)
    if how == "no_counts_file":
        os.remove(old / COUNTS)
    elif how == "manifest_rewritten":
        m = json.loads((old / "manifest.json").read_text())
        (old / "manifest.json").write_text(json.dumps(m, indent=2))  # same content, other bytes
    else:
        data = (old / COUNTS).read_bytes()
        (old / COUNTS).write_bytes(data[:-5])
    new_cat, old_cat = SplitCatalog(str(shards), "train"), SplitCatalog(str(old), "train")
    assert new_cat.from_counts_file and not old_cat.from_counts_file
    assert old_cat.counts.tolist() == new_cat.counts.tolist()
    assert [os.path.relpath(p, old) for p in old_cat.tars] == [os.path.relpath(p, shards) for p in new_cat.tars]
    for world in (1, 2, 3):
        for rank in range(world):
            for epoch in (0, 1):
                a, b = _loader(shards, rank, world), _loader(old, rank, world)
                assert np.array_equal(a.plan(epoch), b.plan(epoch))
                assert a.keys(epoch) == b.keys(epoch)
            assert np.array_equal(val_plan(old_cat.counts, 5, rank, world), val_plan(new_cat.counts, 5, rank, world))


def _synthetic(folder, shard_count: int, shard_size: int):
    from p2p.bench.plan_scale import write_folder

    write_folder(folder, shard_count * shard_size, shard_size)
    return np.full(shard_count, shard_size, dtype=np.int64)


def _touched(counts, rank: int, world: int) -> set[int]:
    return set(np.unique(rank_samples(counts, 0, 0, rank, world)[:, 0]).tolist())


def test_a_rank_of_a_10k_shard_folder_checks_only_the_tars_it_touches(tmp_path):
    """10,000 shards of 10 samples, 64 ranks: every tar but those rank 5 touches is deleted (and
    only its index files exist). Rank 5 opens the split, plans and reads its first keys; the
    tars it checked are exactly the shards of its plan and spare samples. Rank 40, whose range
    holds a deleted tar, fails in one line naming it, before its first batch."""
    from p2p.bench.plan_scale import ensure_indexes

    counts = _synthetic(tmp_path, 10_000, 10)
    mine = _touched(counts, 5, 64)
    assert 0 < len(mine) < 200
    ensure_indexes(tmp_path, counts, np.array(sorted(mine)), 10)
    for s in range(len(counts)):
        if s not in mine:
            os.remove(tmp_path / "train" / f"shard-{s:06d}.tar")

    loader = _loader(tmp_path, 5, 64, batch=4)
    assert loader.shards.sizes.checked == {}, "opening the split checks no tar"
    data = loader.dataset(0)
    keys = [loader.shards.key(int(s), int(m)) for s, m in data.plan[:4]]
    assert len(keys) == 4 and all(k.startswith("img/") for k in keys)
    assert set(loader.shards.sizes.checked) == mine
    assert np.array_equal(loader.plan(0), train_plan(np.asarray(counts), 4, 0, 0, 5, 64))

    other = _loader(tmp_path, 40, 64, batch=4)  # opens: it has not touched a shard yet
    with pytest.raises(UsageError) as e:
        other.dataset(0)
    message = str(e.value)
    assert "\n" not in message and "has no shard" in message and ".tar" in message, message
    missing = message.split("has no shard ")[1].split(" ")[0]
    assert int(os.path.basename(missing)[6:12]) in _touched(counts, 40, 64)
