"""manifest.counts is as untrusted as the manifest, and tars are checked only when a rank touches
them: a count that agrees with its split's total but not with its tar (2**32 samples in a tar of
a few kB) is refused in one line when the plan reaches that shard, before any allocation sized
by it (without the check the plan would ask for 64 GiB); a count past the limit is refused
before planning; a counts file that does not add up is not read (the manifest is)."""

from __future__ import annotations

import hashlib
import json
import shutil

import numpy as np
import pytest

from helpers.hostile_files import jpeg_bytes, photo_rgb, run_cli, tiny_generator_file
from p2p.config import load_config, with_values
from p2p.data import build_loader
from p2p.data.shards.catalog import COUNTS, MAGIC, SplitCatalog
from p2p.errors import UsageError


@pytest.fixture(scope="module")
def shards(tmp_path_factory):
    from p2p.data.shards import make_shards

    root = tmp_path_factory.mktemp("counts")
    (root / "src").mkdir()
    for i in range(8):
        (root / "src" / f"p{i}.jpg").write_bytes(jpeg_bytes(photo_rgb(48, 64, seed=i)))
    make_shards(root / "src", root / "out", size=40, val_fraction=0.3, workers=1)
    return root / "out"


@pytest.fixture
def copy(shards, tmp_path):
    out = tmp_path / "shards"
    shutil.copytree(shards, out)
    return out


def _forge(folder, split: str, count: int, counts_file: bool) -> None:
    """Shard 0 of `split` claims `count` samples and the split's total agrees; the counts file
    is rewritten for the new manifest (a forger who wrote both) or removed."""
    m = json.loads((folder / "manifest.json").read_text())
    entry = m[split]["shards"][0]
    m[split]["count"] += count - entry["count"]
    entry["count"] = count
    text = json.dumps(m).encode()
    (folder / "manifest.json").write_bytes(text)
    if counts_file:
        (folder / COUNTS).write_bytes(_counts_file(m, text))
    else:
        (folder / COUNTS).unlink()


def _counts_file(m: dict, text: bytes) -> bytes:
    """A counts file for manifest `m` as a forger writes it: any counts, the layout right."""
    header = {"manifest_sha256": hashlib.sha256(text).hexdigest(), "task": m["task"], "options": m["options"],
              "splits": {s: {"shards": len(m[s]["shards"]), "count": m[s]["count"]} for s in ("train", "val")}}
    body = b"".join(np.array(v, dtype="<i8").tobytes() for s in ("train", "val")
                    for v in ([int(e["file"][6:12]) for e in m[s]["shards"]], [e["count"] for e in m[s]["shards"]]))
    return MAGIC + json.dumps(header).encode() + b"\n" + body


def _first_batch(folder):
    cfg = with_values(load_config(), {"data.source": str(folder), "data.backend": "wds", "data.workers": 0,
                                      "data.load_size": 40, "data.image_size": 32, "model.num_downs": 5,
                                      "train.batch_size": 2})
    return next(iter(build_loader(cfg, "train").epoch(0)))


@pytest.mark.parametrize("counts_file", [True, False], ids=["counts_file", "manifest_only"])
def test_a_count_its_tar_cannot_hold_is_refused_before_the_plan_allocates(counts_file, copy):
    _forge(copy, "train", 2**32, counts_file)
    assert SplitCatalog(str(copy), "train").from_counts_file == counts_file
    with pytest.raises(UsageError, match="cannot fit") as e:
        _first_batch(copy)
    assert "\n" not in str(e.value) and str(copy) in str(e.value)


@pytest.mark.parametrize("counts_file", [True, False], ids=["counts_file", "manifest_only"])
def test_a_count_past_the_limit_is_refused_before_planning(counts_file, copy):
    from p2p.data.wds import ShardSet

    _forge(copy, "train", 10**12, counts_file)
    with pytest.raises(UsageError) as e:
        ShardSet(str(copy), "train")
    assert "\n" not in str(e.value) and "1000000000000" in str(e.value), e.value


@pytest.mark.parametrize("damage", ["shards_1e12", "count_text", "splits_list", "trailing_bytes", "not_json"])
def test_a_counts_file_that_does_not_add_up_is_not_read(damage, copy):
    data = (copy / COUNTS).read_bytes()
    magic, header, body = data.split(b"\n", 2)
    h = json.loads(header)
    if damage == "shards_1e12":
        h["splits"]["train"]["shards"] = 10**12
    elif damage == "count_text":
        h["splits"]["train"]["count"] = "nine"
    elif damage == "splits_list":
        h["splits"] = [1, 2]
    elif damage == "trailing_bytes":
        body += b"\0" * 16
    header = json.dumps(h).encode() if damage != "not_json" else b"{" * 100
    (copy / COUNTS).write_bytes(magic + b"\n" + header + b"\n" + body)
    assert not SplitCatalog(str(copy), "train").from_counts_file
    assert _first_batch(copy).images.shape == (2, 3, 40, 40)


def test_eval_refuses_a_forged_val_count_with_exit_2(copy, tmp_path):
    _forge(copy, "val", 2**32, True)
    ckpt = tiny_generator_file(tmp_path / "g.pth")
    code, out, err = run_cli("eval", ckpt, "--data", copy, "--device", "cpu")
    assert code == 2 and "Traceback" not in err, err
    assert len(err.strip().splitlines()) == 1 and "cannot fit" in err, err
