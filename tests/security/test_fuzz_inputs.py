"""Seeded fuzzing of every reader of files from elsewhere: a few hundred mutated manifests, DALI
index files, shard tars and images (JPEG, PNG, WebP, BMP, TIFF) thrown at the shard loader and
held-out reader (in-process), the image reader and the shard member decode, and through the CLI
at `p2p shard`, `p2p predict`, `p2p eval` (in-process) and `p2p train`'s data opening (two real
processes). Each must either work or refuse with one line (UsageError: exit 2; a skipped sample
in the loaders): never another exception, never a traceback, never a hang, and nothing written
outside the folders it was given."""

from __future__ import annotations

import copy
import hashlib
import io
import json
import random
import shutil
import warnings
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from helpers.hostile_files import jpeg_bomb, photo_rgb, png_bomb, run_cli, tiny_generator_file
from helpers.runs import TINY, run_p2p
from p2p.config import load_config, with_values
from p2p.data import build_loader
from p2p.data.decode import decode_rgb
from p2p.data.held_out import held_out
from p2p.data.images import ImageRejected, read_rgb
from p2p.data.shards.format import REASONS
from p2p.errors import UsageError

SEED = 2222
WEIRD = [None, True, -1, 0, 1, 10**12, 10**19, -(10**19), 1e308, float("nan"), "nine", "", "x" * 5000,
         "../../../etc/hostname", "/etc/hostname", "shard-000000.tar", [], {}, [1, 2], {"shards": "x"},
         {"a": {"b": [{}]}}, "\u0000", "v1.2"]


def _images(rng: random.Random) -> list[bytes]:
    """Seed images in every allowed format, then byte-level mutations of them."""
    seeds = []
    for fmt, kw in (("JPEG", {"quality": 80}), ("PNG", {}), ("WEBP", {}), ("BMP", {}), ("TIFF", {})):
        buf = io.BytesIO()
        Image.fromarray(photo_rgb(40, 56, seed=len(seeds))).save(buf, fmt, **kw)
        seeds.append(buf.getvalue())
    out = [jpeg_bomb(30000), png_bomb(20000), b"", b"GIF89a" + bytes(40), b"%!PS-Adobe-3.0 EPSF-3.0\n"]
    for _ in range(150):
        out.append(_mutate_bytes(rng.choice(seeds), rng))
    return out


def _mutate_bytes(data: bytes, rng: random.Random) -> bytes:
    b = bytearray(data)
    kind = rng.randrange(5)
    if kind == 0:  # flip bytes, mostly in the header
        for _ in range(rng.randint(1, 8)):
            i = rng.randrange(min(len(b), 64)) if rng.random() < 0.7 else rng.randrange(len(b))
            b[i] = rng.randrange(256)
    elif kind == 1:
        b = b[:rng.randrange(1, len(b))]
    elif kind == 2:  # a run of 0xff (huge sizes in big-endian headers)
        i = rng.randrange(min(len(b), 48))
        b[i:i + 4] = b"\xff\xff\xff\x7f"
    elif kind == 3:
        i = rng.randrange(len(b))
        b[i:i] = bytes(rng.randrange(256) for _ in range(rng.randint(1, 64)))
    else:
        i = rng.randrange(len(b))
        b[i:i + rng.randint(1, 256)] = b""
    return bytes(b)


def _mutate_tree(tree, rng: random.Random):
    """A copy of a JSON tree with one node replaced, deleted or wrapped."""
    tree = copy.deepcopy(tree)
    paths = []

    def walk(node, path):
        paths.append(path)
        if isinstance(node, dict):
            for k, v in node.items():
                walk(v, path + [k])
        elif isinstance(node, list):
            for i, v in enumerate(node):
                walk(v, path + [i])

    walk(tree, [])
    path = rng.choice(paths[1:])
    parent = tree
    for p in path[:-1]:
        parent = parent[p]
    action = rng.randrange(3)
    if action == 0 and isinstance(parent, dict):
        del parent[path[-1]]
    elif action == 1:
        parent[path[-1]] = [parent[path[-1]]] * rng.randint(0, 3)
    else:
        parent[path[-1]] = copy.deepcopy(rng.choice(WEIRD))
    return tree


def _mutate_index(text: str, rng: random.Random) -> str:
    lines = text.splitlines()
    i = rng.randrange(len(lines))
    tok = lines[i].split() or ["x"]
    j = rng.randrange(len(tok))
    tok[j] = str(rng.choice([0, -1, 1, 511, 10**11, 10**19, "1e11", "nine", "", 2**63, "v1.2", "\u00b2"]))
    lines[i] = " ".join(tok)
    if rng.random() < 0.2:
        del lines[rng.randrange(len(lines))]
    if rng.random() < 0.1:
        lines.append(lines[-1])
    return "\n".join(lines) + "\n"


def _snapshot(root: Path) -> dict:
    return {str(p.relative_to(root)): hashlib.sha1(p.read_bytes()).hexdigest() if p.is_file() else "dir"
            for p in sorted(root.rglob("*")) if not p.is_fifo()}


def _cfg(folder: Path):
    return with_values(load_config(), {"data.source": str(folder), "data.backend": "wds", "data.workers": 0,
                                       "data.load_size": 40, "data.image_size": 32, "model.num_downs": 5,
                                       "train.batch_size": 2, "data.val_images": 4})


def _read_shards(folder: Path) -> str:
    """Open the train loader, make its first batch and read the held-out set: 'ok' or the one-line
    refusal. Anything else raises (and fails the test)."""
    try:
        cfg = _cfg(folder)
        loader = build_loader(cfg, "train")
        batch = next(iter(loader.epoch(0)))
        assert batch.images.shape == (2, 3, 40, 40)
        held_out(cfg)
        return "ok"
    except UsageError as e:
        assert "\n" not in str(e), str(e)
        return "refused"


@pytest.fixture(scope="module")
def shards(tmp_path_factory):
    from p2p.data.shards import make_shards

    root = tmp_path_factory.mktemp("fuzz")
    (root / "src").mkdir()
    for i in range(10):
        Image.fromarray(photo_rgb(48, 64, seed=i)).save(root / "src" / f"p{i}.jpg", quality=85)
    make_shards(root / "src", root / "out", size=40, val_fraction=0.3, workers=1, shard_size_mb=0.004)
    return root / "out"


def test_fuzzed_shard_metadata_and_tars(shards, tmp_path):
    rng = random.Random(SEED)
    work = tmp_path / "shards"
    shutil.copytree(shards, work)
    pristine = {p: p.read_bytes() for p in work.rglob("*") if p.is_file()}
    manifest = json.loads((work / "manifest.json").read_text())
    tars = sorted(work.rglob("*.tar"))
    idxs = sorted(work.rglob("*.idx"))
    outcomes = {"ok": 0, "refused": 0}
    before = _snapshot(tmp_path)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        assert _read_shards(work) == "ok"
        for case in range(260):
            if case < 120:  # the manifest: structure, then raw text
                victim = work / "manifest.json"
                if case % 6:
                    victim.write_text(json.dumps(_mutate_tree(manifest, rng)))
                else:
                    victim.write_bytes(_mutate_bytes(pristine[victim], rng))
            elif case < 200:
                victim = rng.choice(idxs)
                victim.write_text(_mutate_index(pristine[victim].decode(), rng))
            else:
                victim = rng.choice(tars)
                victim.write_bytes(_mutate_bytes(pristine[victim], rng))
            outcomes[_read_shards(work)] += 1
            victim.write_bytes(pristine[victim])
    assert outcomes["refused"] > 100 and outcomes["ok"] > 10, outcomes
    assert _snapshot(tmp_path) == before  # nothing written, nothing left changed


def test_fuzzed_images_in_the_readers_and_the_cli(tmp_path):
    rng = random.Random(SEED + 1)
    images = _images(rng)
    outcomes = {"ok": 0, "rejected": 0}
    for data in images:  # the reader of files and of shard members
        for read in (read_rgb, decode_rgb):
            try:
                read(data)
                outcomes["ok"] += 1
            except ImageRejected:
                outcomes["rejected"] += 1
            except RuntimeError:  # torchvision's JPEG decode of corrupt data: the loaders skip it
                assert read is decode_rgb
    assert outcomes["rejected"] > 100 and outcomes["ok"] > 20, outcomes

    src = tmp_path / "in"
    src.mkdir()
    exts = [".jpg", ".png", ".webp", ".bmp", ".tif"]
    for i, data in enumerate(images[:60]):
        (src / f"f{i:03d}{exts[i % len(exts)]}").write_bytes(data)
    before = {p.name for p in tmp_path.iterdir()}
    code, out, err = run_cli("shard", src, tmp_path / "shards", "--size", "32", "--workers", "1", "--val-fraction", "0.3")
    assert code in (0, 2) and "Traceback" not in err, err
    if code == 0:
        m = json.loads((tmp_path / "shards" / "manifest.json").read_text())
        assert {s["reason"] for s in m["skipped"]} <= set(REASONS)
    ckpt = tiny_generator_file(tmp_path / "g.pth")
    code, out, err = run_cli("predict", ckpt, src, "--out", tmp_path / "pred")
    assert code in (0, 2) and "Traceback" not in err, err
    assert all(ln.startswith("p2p predict:") for ln in err.strip().splitlines()), err
    if code == 0:
        code, out, err = run_cli("eval", ckpt, "--data", tmp_path / "shards", "--device", "cpu")
        assert code in (0, 2) and "Traceback" not in err and len(err.strip().splitlines()) <= 20, err
    assert {p.name for p in tmp_path.iterdir()} <= before | {"shards", "g.pth", "pred"}


@pytest.mark.slow
def test_fuzzed_manifests_through_p2p_train(shards, tmp_path):
    """Two real `p2p train` processes on mutated shard folders: exit 2 with one line, before any
    step; the run folder is the only thing written."""
    rng = random.Random(SEED + 2)
    manifest = json.loads((shards / "manifest.json").read_text())
    for i, edit in enumerate((lambda m: m["train"]["shards"][0].update(count=10**12),
                              lambda m: m["train"]["shards"][0].update(file="../../../etc/hostname"))):
        work = tmp_path / f"s{i}"
        shutil.copytree(shards, work)
        m = copy.deepcopy(manifest)
        edit(m)
        (work / "manifest.json").write_text(json.dumps(m))
        before = _snapshot(tmp_path)
        proc = run_p2p("train", f"data.source={work}", "data.backend=wds", f"run.out_dir={tmp_path / 'runs'}",
                       f"run.name=r{i}", *TINY, "train.max_steps=1", f"run.seed={rng.randrange(100)}", check=False)
        assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr
        assert len(proc.stderr.strip().splitlines()) == 1, proc.stderr
        after = _snapshot(tmp_path)
        assert {k for k in after if after[k] != before.get(k)} <= {k for k in after if k.startswith("runs")}


def test_fuzzed_output_folder_of_p2p_shard(shards, tmp_path):
    """`p2p shard` run again over an OUT whose manifest and sidecars were mangled: it rewrites
    or refuses in one line (exit 0 or 2), never a traceback."""
    rng = random.Random(SEED + 3)
    src = shards.parent / "src"
    out = tmp_path / "out"
    shutil.copytree(shards, out)
    sidecars = sorted(out.rglob("*.meta.json"))
    for case in range(8):
        victim = out / "manifest.json" if case % 2 else rng.choice(sidecars)
        if victim.exists():
            text = victim.read_text()
            tree = json.loads(text)
            victim.write_text(json.dumps(_mutate_tree(tree, rng)) if case % 4 < 2 else
                              "[" * 50_000 + "]" * 50_000)
        code, _, err = run_cli("shard", src, out, "--size", "40", "--val-fraction", "0.3", "--workers", "1",
                               "--shard-size-mb", "0.004")
        assert code in (0, 2) and "Traceback" not in err, err
        assert code == 0 or len(err.strip().splitlines()) == 1, err
        if code == 2:  # a manifest it refuses to take for its own: start over
            shutil.rmtree(out)
            shutil.copytree(shards, out)
        sidecars = sorted(out.rglob("*.meta.json"))
