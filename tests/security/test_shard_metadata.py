"""A shard folder's manifest, index files and tars are untrusted: index sizes of 1e11 and 1e19,
a manifest count of 1e12 or "nine", a shard without `file`, `shards: "x"`, `train` as a list,
JSON nested 100k deep, a tar replaced by a FIFO: each is one line and exit 2 from the reader
that opens it (never a MemoryError, OverflowError or TypeError traceback, never a hang), and a
manifest error leaves no `ShardSet.__del__` traceback behind.

manifest.counts is as untrusted as the manifest, and tars are checked only when a rank touches
them: a count that agrees with its split's total but not with its tar (2**32 samples in a tar of
a few kB) is refused in one line when the plan reaches that shard, before any allocation sized
by it (without the check the plan would ask for 64 GiB); a count past the limit is refused
before planning; a counts file that does not add up is not read (the manifest is)."""

from __future__ import annotations

import gc
import hashlib
import json
import os
import shutil
import signal
import sys

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

    root = tmp_path_factory.mktemp("shards")
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


def _manifest(folder, edit):
    path = folder / "manifest.json"
    m = json.loads(path.read_text())
    edit(m)
    path.write_text(json.dumps(m))


def _index(folder, split, edit):
    m = json.loads((folder / "manifest.json").read_text())
    idx = folder / split / m[split]["shards"][0]["index"]
    lines = idx.read_text().splitlines()
    idx.write_text("\n".join(edit(lines)) + "\n")


def _size(value):
    def edit(lines):
        tok = lines[1].split()
        tok[2] = value
        return [lines[0], " ".join(tok), *lines[2:]]
    return edit


def _shard0(split, key, value):
    def edit(m):
        m[split]["shards"][0][key] = value
    return edit


def _set(split, value):
    def edit(m):
        m[split] = value
    return edit


def _drop(split, key):
    def edit(m):
        del m[split]["shards"][0][key]
    return edit


CASES = {
    "index_size_1e11": lambda f, s: _index(f, s, _size("100000000000")),
    "index_size_1e19": lambda f, s: _index(f, s, _size("10000000000000000000")),
    "index_size_text": lambda f, s: _index(f, s, _size("1e11")),
    "index_count_huge": lambda f, s: _index(f, s, lambda ls: ["v1.2 99999999999999999999", *ls[1:]]),
    "manifest_count_1e12": lambda f, s: _manifest(f, _shard0(s, "count", 10**12)),
    "manifest_count_nine": lambda f, s: _manifest(f, _shard0(s, "count", "nine")),
    "manifest_count_negative": lambda f, s: _manifest(f, _shard0(s, "count", -3)),
    "manifest_missing_file": lambda f, s: _manifest(f, _drop(s, "file")),
    "shards_is_a_string": lambda f, s: _manifest(f, _set(s, {"shards": "x", "count": 1})),
    "split_is_a_list": lambda f, s: _manifest(f, _set(s, [1, 2])),
    "shard_entry_is_a_number": lambda f, s: _manifest(f, _set(s, {"shards": [7]})),
    "json_nested_100k": lambda f, s: (f / "manifest.json").write_text(
        '{"format": "p2p-wds-shards", "train": ' + "[" * 100_000 + "]" * 100_000 + "}"),
    "manifest_not_utf8": lambda f, s: (f / "manifest.json").write_bytes(b'{"format": "\xff\xfe"}'),
}
# what the loaders read of the manifest besides the shard list: wrong types are ignored, not a traceback
HARMLESS = {
    "options_is_a_list": lambda m: m.update(options=[1, 2]),
    "options_size_is_text": lambda m: m["options"].update(size="big"),
    "task_is_a_list": lambda m: m.update(task=["paired"]),
}


def _train_loader(folder):
    cfg = with_values(load_config(), {"data.source": str(folder), "data.backend": "wds", "data.workers": 0,
                                      "data.load_size": 40, "data.image_size": 32, "model.num_downs": 5,
                                      "train.batch_size": 2})
    loader = build_loader(cfg, "train")
    return next(iter(loader.epoch(0)))


def test_the_untouched_shards_load(copy):
    assert _train_loader(copy).images.shape == (2, 3, 40, 40)


@pytest.mark.parametrize("case", CASES)
def test_train_loader_refuses_bad_metadata_in_one_line(case, copy):
    CASES[case](copy, "train")
    with pytest.raises(UsageError) as e:
        _train_loader(copy)
    assert "\n" not in str(e.value) and str(copy) in str(e.value), e.value


@pytest.mark.parametrize("case", ["index_size_1e19", "manifest_count_1e12", "manifest_count_nine",
                                  "shards_is_a_string", "split_is_a_list", "json_nested_100k"])
def test_eval_refuses_bad_val_metadata_with_exit_2(case, copy, tmp_path):
    CASES[case](copy, "val")
    ckpt = tiny_generator_file(tmp_path / "g.pth")
    code, out, err = run_cli("eval", ckpt, "--data", copy, "--device", "cpu")
    assert code == 2 and "Traceback" not in err, err
    assert len(err.strip().splitlines()) == 1, err


def test_a_manifest_error_leaves_no_del_traceback(copy, monkeypatch):
    from p2p.data.wds import ShardSet

    seen = []
    monkeypatch.setattr(sys, "unraisablehook", lambda u: seen.append(u))
    CASES["manifest_count_nine"](copy, "train")
    with pytest.raises(UsageError):
        ShardSet(str(copy), "train")
    gc.collect()
    assert not seen, [str(u.exc_value) for u in seen]


@pytest.mark.parametrize("what", ["tar", "index"])
def test_a_fifo_in_place_of_a_shard_file_is_refused_not_waited_on(what, copy):
    m = json.loads((copy / "manifest.json").read_text())
    victim = copy / "train" / m["train"]["shards"][0]["file" if what == "tar" else "index"]
    victim.unlink()
    os.mkfifo(victim)

    def hung(*_):
        raise AssertionError(f"the reader blocked on the FIFO {victim}")

    old = signal.signal(signal.SIGALRM, hung)
    signal.alarm(30)
    try:
        with pytest.raises(UsageError, match="regular file"):
            _train_loader(copy)
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, old)


@pytest.mark.parametrize("case", HARMLESS)
def test_odd_manifest_options_do_not_break_the_loader(case, copy):
    _manifest(copy, HARMLESS[case])
    assert _train_loader(copy).images.shape == (2, 3, 40, 40)


# ---- manifest.counts and the tars checked when touched -------------------------------------


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


@pytest.mark.parametrize("counts_file", [True, False], ids=["counts_file", "manifest_only"])
def test_a_count_its_tar_cannot_hold_is_refused_before_the_plan_allocates(counts_file, copy):
    _forge(copy, "train", 2**32, counts_file)
    assert SplitCatalog(str(copy), "train").from_counts_file == counts_file
    with pytest.raises(UsageError, match="cannot fit") as e:
        _train_loader(copy)
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
    assert _train_loader(copy).images.shape == (2, 3, 40, 40)


def test_eval_refuses_a_forged_val_count_with_exit_2(copy, tmp_path):
    _forge(copy, "val", 2**32, True)
    ckpt = tiny_generator_file(tmp_path / "g.pth")
    code, out, err = run_cli("eval", ckpt, "--data", copy, "--device", "cpu")
    assert code == 2 and "Traceback" not in err, err
    assert len(err.strip().splitlines()) == 1 and "cannot fit" in err, err
