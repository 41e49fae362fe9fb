"""`p2p shard`: folders of real photos (scikit-image) plus every awkward file kind, packed into
WebDataset shards and read back with webdataset, tarfile and DALI (CPU)."""

from __future__ import annotations

import io
import json
import os
import shutil
import subprocess
import sys
import tarfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from helpers import image_folders as F
from helpers.requirements import require_dali
from p2p.cli import main
from p2p.data.shards import read_manifest, shard_files
from p2p.data.shards.format import hash_unit
from p2p.data.shards.index import read_index, scan_tar, split_name, write_index

SIZE = 64
LONG_BASENAME = "nested/" + "x" * 110 + ".jpg"  # > 100 characters in one component: GNU 'L' record
DEEP_PATH = "deep/" + "d" * 60 + "/" + "e" * 50 + ".jpg"  # > 100 in all, fits USTAR's prefix field
DOTTED = "nested/a.b c.jpg"  # key nested/a_b_c


def shard(*args) -> int:
    return main(["shard", *map(str, args)])


def key_of(rel: str) -> str:
    stem = os.path.splitext(rel)[0]
    return stem.replace(".", "_").replace(" ", "_")


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    mse = np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2)
    return 99.0 if mse == 0 else 10 * np.log10(255.0**2 / mse)


def decode(data: bytes) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(data)).convert("RGB"))


def read_samples(out: Path, split: str) -> dict[str, dict]:
    """key -> {"jpg": bytes, "json": dict} over all shards of a split (via tarfile)."""
    samples: dict[str, dict] = {}
    for tar, _ in shard_files(out, split):
        with tarfile.open(tar) as tf:
            for m in tf:
                key, ext = split_name(m.name)
                data = tf.extractfile(m).read()
                samples.setdefault(key, {})[ext] = json.loads(data) if ext == "json" else data
    return samples


# ---------------------------------------------------------------------------------------------
# the main fixture: COCO-like photos + every fault + awkward names, sharded once


@pytest.fixture(scope="module")
def coco(tmp_path_factory):
    root = tmp_path_factory.mktemp("shard")
    src = root / "src"
    F.make_coco_like(src, n=14, seed=0, scale=0.25)  # about 160x120
    faults = F.add_faults(src, side=80, small_side=40)
    for rel, i in ((DOTTED, 1), (LONG_BASENAME, 2), (DEEP_PATH, 3)):
        (src / rel).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(src / F.coco_name(i), src / rel)
    out = root / "out"
    rc = shard(src, out, "--size", SIZE, "--val-fraction", 0.25, "--shard-size-mb", 0.03, "--workers", 2)
    assert rc == 0
    good = [F.coco_name(i) for i in range(1, 15)] + [DOTTED, LONG_BASENAME, DEEP_PATH]
    good += [n for n, f in faults.items() if f.skip_colorize is None]
    return {"root": root, "src": src, "out": out, "faults": faults, "good": good,
            "manifest": read_manifest(out)}


def test_counts_and_manifest(coco):
    m, out = coco["manifest"], coco["out"]
    assert m["count"] == len(coco["good"]) == m["train"]["count"] + m["val"]["count"]
    assert m["train"]["count"] > 0 and m["val"]["count"] > 0
    assert len(m["train"]["shards"]) >= 3  # small --shard-size-mb: several shards
    assert m["options"]["size"] == SIZE and m["task"] == "colorize"
    for split in ("train", "val"):
        s = m[split]
        assert s["count"] == sum(x["count"] for x in s["shards"])
        for x in s["shards"]:
            tar = out / split / x["file"]
            assert tar.stat().st_size == x["bytes"]
            assert len(read_index(out / split / x["index"])) == x["count"]
    assert m["sizes"]["output"]["short"]["min"] == m["sizes"]["output"]["short"]["max"] == SIZE
    assert m["renamed_keys"] == {DOTTED: "nested/a_b_c"}
    assert not list(out.rglob("*.tmp"))


def test_every_fault_is_recorded_with_its_reason(coco):
    skipped = {r["path"]: r for r in coco["manifest"]["skipped"]}
    for name, fault in coco["faults"].items():
        if fault.skip_colorize is None:
            assert name not in skipped, (name, skipped.get(name))
        else:
            assert skipped[name]["reason"] == fault.skip_colorize, (name, skipped[name])
            assert skipped[name]["detail"]
    assert "mode L" in skipped["gray_L.jpg"]["detail"]
    assert "chroma" in skipped["gray_as_rgb.jpg"]["detail"]
    assert len(skipped) == sum(f.skip_colorize is not None for f in coco["faults"].values())
    assert sum(coco["manifest"]["skipped_counts"].values()) == len(skipped)


def test_samples_read_back_with_webdataset(coco):
    import webdataset as wds

    m, out = coco["manifest"], coco["out"]
    seen = {}
    for split in ("train", "val"):
        urls = [t for t, _ in shard_files(out, split)]
        for s in wds.WebDataset(urls, shardshuffle=False).decode("rgb8"):
            img, meta = s["jpg"], s["json"]
            assert img.dtype == np.uint8 and img.ndim == 3 and img.shape[2] == 3
            assert min(img.shape[:2]) == SIZE
            seen[s["__key__"]] = (img, meta)
    assert set(seen) == {key_of(r) for r in coco["good"]}
    assert len(seen) == m["count"]
    for rel in coco["good"]:
        img, meta = seen[key_of(rel)]
        assert meta["path"] == rel
        src = Image.open(coco["src"] / rel)
        w, h = src.size
        if rel == "exif_rotated.jpg":
            w, h = h, w
        assert (meta["width"], meta["height"]) == (w, h)
        # aspect kept: long side = round(long * SIZE / short)
        assert img.shape[1] == max(SIZE, round(w * SIZE / min(w, h)))
        assert img.shape[0] == max(SIZE, round(h * SIZE / min(w, h)))


def test_exif_rotation_and_mode_conversions(coco):
    samples = {**read_samples(coco["out"], "train"), **read_samples(coco["out"], "val")}
    fault = coco["faults"]["exif_rotated.jpg"]
    raw = Image.open(coco["src"] / "exif_rotated.jpg")
    assert raw.size == fault.raw_size and raw.width > raw.height  # stored landscape
    out = decode(samples["exif_rotated"]["jpg"])
    assert out.shape[0] > out.shape[1]  # comes out portrait: dimensions swapped
    size = (out.shape[1], out.shape[0])
    rotated = np.asarray(raw.convert("RGB").transpose(Image.Transpose.ROTATE_270).resize(size, Image.LANCZOS))
    flipped_wrong = np.asarray(raw.convert("RGB").transpose(Image.Transpose.ROTATE_90).resize(size, Image.LANCZOS))
    assert psnr(out, rotated) > 28 > psnr(out, flipped_wrong)
    assert samples["exif_rotated"]["json"]["orientation"] == 6

    rgba = decode(samples["rgba"]["jpg"])  # top third transparent -> composited on white
    top = rgba[: rgba.shape[0] // 3 - 4]
    assert top.mean() > 252 and top.min() > 230
    assert rgba[rgba.shape[0] // 2 :].mean() < 200

    # 16-bit RGB: same picture as its 8-bit source (values scaled, not clipped)
    src16 = np.asarray(Image.open(coco["src"] / "rgb16.png").convert("RGB"))
    got = decode(samples["rgb16"]["jpg"])
    ref = np.asarray(Image.fromarray(src16).resize((got.shape[1], got.shape[0]), Image.LANCZOS))
    assert psnr(got, ref) > 30

    cmyk = decode(samples["cmyk"]["jpg"])
    assert cmyk.std() > 10 and samples["cmyk"]["json"]["mode"] == "CMYK"
    pal = decode(samples["palette_transparent"]["jpg"])
    assert samples["palette_transparent"]["json"]["mode"] == "P" and pal.shape[2] == 3


def test_tar_format_plain_no_pax(coco):
    out = coco["out"]
    names_seen = set()
    for split in ("train", "val"):
        for tar, _ in shard_files(out, split):
            raw = Path(tar).read_bytes()
            assert len(raw) % tarfile.RECORDSIZE == 0
            with tarfile.open(tar) as tf:
                assert tf.pax_headers == {}
                members = tf.getmembers()
            assert len(members) % 2 == 0
            for m in members:
                assert m.isreg() and m.pax_headers == {}
                assert m.mtime == 0 and m.uid == 0 and m.gid == 0 and m.uname == "" and m.mode == 0o644
                typeflag = raw[m.offset + 156 : m.offset + 157]
                assert typeflag in (b"0", b"L"), (m.name, typeflag)  # regular or GNU long name; never x/g
                names_seen.add(m.name)
            for jpg, js in zip(members[::2], members[1::2]):  # <key>.jpg then <key>.json
                assert jpg.name.endswith(".jpg") and js.name == jpg.name[:-4] + ".json"
                assert "." not in jpg.name[:-4]
    long_key = key_of(LONG_BASENAME)
    assert f"{long_key}.jpg" in names_seen and f"{key_of(DEEP_PATH)}.jpg" in names_seen
    # the raw headers: the long basename needs a GNU 'L' record, the deep path fits USTAR's prefix
    flags = {}
    for split in ("train", "val"):
        for tar, _ in shard_files(out, split):
            raw = Path(tar).read_bytes()
            with tarfile.open(tar) as tf:
                for m in tf:
                    flags[m.name] = raw[m.offset + 156 : m.offset + 157]
    assert flags[f"{long_key}.jpg"] == b"L"
    assert flags[f"{key_of(DEEP_PATH)}.jpg"] == b"0"
    assert flags["000000000001.jpg"] == b"0"


def test_index_matches_tar_and_dalis_tool(coco, tmp_path):
    out = coco["out"]
    compared = 0
    for split in ("train", "val"):
        for tar, idx in shard_files(out, split):
            ours = read_index(idx)
            assert ours == scan_tar(tar)
            assert Path(idx).read_text().startswith(f"v1.2 {len(ours)}\n")
            again = tmp_path / "again.idx"
            assert write_index(tar, again) == len(ours)
            assert again.read_text() == Path(idx).read_text()
            for comps in ours:  # offsets point at the data
                assert [c.ext for c in comps] == ["jpg", "json"]
                with open(tar, "rb") as f:
                    f.seek(comps[0].offset)
                    assert f.read(2) == b"\xff\xd8"
            raw = Path(tar).read_bytes()
            with tarfile.open(tar) as tf:
                has_gnu_longname = any(raw[m.offset + 156] == ord("L") for m in tf)
            if has_gnu_longname or not shutil.which("tar"):
                continue  # DALI's wds2idx gets offsets after GNU 'L' records wrong
            require_dali()  # wds2idx comes with nvidia-dali
            from wds2idx import IndexCreator

            theirs = tmp_path / "theirs.idx"
            with IndexCreator(tar, str(theirs), verbose=False) as ic:
                ic.create_index()
            assert theirs.read_text() == Path(idx).read_text()
            compared += 1
    assert compared >= 1


@pytest.mark.skipif(not shutil.which("tar"), reason="DALI's wds2idx needs GNU tar")
def test_dalis_tool_agrees_on_ustar_prefix_and_fails_on_gnu_longname(tmp_path):
    require_dali()  # wds2idx comes with nvidia-dali
    from wds2idx import IndexCreator

    from p2p.data.shards.index import format_index
    from p2p.data.shards.write import TarWriter

    def both(names):
        tar = tmp_path / "t.tar"
        with open(tar, "wb") as f:
            w = TarWriter(f)
            for n in names:
                w.add(n, n.encode() * 3)
            w.close()
        with IndexCreator(str(tar), str(tmp_path / "theirs.idx"), verbose=False) as ic:
            ic.create_index()
        return format_index(scan_tar(tar)), (tmp_path / "theirs.idx").read_text()

    ours, theirs = both(["a.jpg", "a.json", f"{key_of(DEEP_PATH)}.jpg", "b.jpg"])
    assert ours == theirs  # USTAR prefix field: one header, DALI's tool is right
    ours, theirs = both(["a.jpg", key_of(LONG_BASENAME) + ".jpg", "b.jpg"])
    assert ours != theirs  # GNU 'L' record: DALI's tool points into the long-name block


def dali_read(out: Path, splits=("train", "val"), paired=False) -> list[tuple[tuple, dict]]:
    require_dali()  # skips the calling test without DALI, fails it under P2P_REQUIRE_DALI=1
    from nvidia.dali import fn, pipeline_def

    files = [f for s in splits for f in shard_files(out, s)]
    tars, idxs = [t for t, _ in files], [i for _, i in files]

    @pipeline_def(batch_size=4, num_threads=1, device_id=None, prefetch_queue_depth=1)
    def pipe():
        jpg, meta = fn.readers.webdataset(paths=tars, index_paths=idxs, ext=["jpg", "json"],
                                          name="r", missing_component_behavior="error")
        return fn.decoders.image(jpg, device="cpu"), meta

    p = pipe()
    p.build()
    n = p.epoch_size("r")
    got = []
    while len(got) < n:
        imgs, metas = p.run()
        for i in range(len(imgs)):
            if len(got) < n:
                got.append((tuple(np.array(imgs.at(i)).shape), json.loads(bytes(np.array(metas.at(i))))))
    return got


def test_dali_reads_shards_with_our_index(coco):
    got = dali_read(coco["out"])
    assert len(got) == coco["manifest"]["count"]
    paths = {meta["path"] for _, meta in got}
    assert paths == set(coco["good"])  # includes the GNU long name and the USTAR-prefix path
    for shape, meta in got:
        assert shape[2] == 3 and min(shape[:2]) == SIZE


def test_split_stable_and_deterministic_across_workers_and_seed(coco):
    m, out = coco["manifest"], coco["out"]
    val = set(read_samples(out, "val"))
    train = set(read_samples(out, "train"))
    assert val and train and not val & train
    assert val == {k for k in val | train if hash_unit(k) < 0.25}
    # same options, one worker: byte-identical shards (the plan does not depend on --workers)
    out1 = coco["root"] / "out_w1"
    assert shard(coco["src"], out1, "--size", SIZE, "--val-fraction", 0.25, "--shard-size-mb", 0.03,
                 "--workers", 1) == 0
    for split in ("train", "val"):
        for (a, ai), (b, bi) in zip(shard_files(out, split), shard_files(out1, split), strict=True):
            assert Path(a).read_bytes() == Path(b).read_bytes()
            assert Path(ai).read_text() == Path(bi).read_text()
    # another seed: other shard contents and order, same val keys
    out2 = coco["root"] / "out_seed"
    assert shard(coco["src"], out2, "--size", SIZE, "--val-fraction", 0.25, "--shard-size-mb", 0.03,
                 "--seed", 7) == 0
    assert set(read_samples(out2, "val")) == val
    order = lambda o: [c[0].name for t, i in shard_files(o, "train") for c in read_index(i)]  # noqa: E731
    assert order(out2) != order(out) and sorted(order(out2)) == sorted(order(out))
    assert order(out) != sorted(order(out))  # shuffled, not in file name order


def test_resume_rewrites_only_missing_shards(coco, capsys):
    src, out = coco["src"], coco["root"] / "out_resume"
    opts = ["--size", SIZE, "--val-fraction", 0.25, "--shard-size-mb", 0.03, "--workers", 2]
    assert shard(src, out, *opts) == 0
    first = read_manifest(out)
    files = sorted(p for p in out.rglob("shard-*") if p.suffix in (".tar", ".idx"))
    before = {p: (p.read_bytes(), p.stat().st_mtime_ns) for p in files}
    victim = out / "train" / first["train"]["shards"][1]["file"]
    victim.unlink()
    partial = out / "train" / (first["train"]["shards"][2]["file"] + ".tmp")
    partial.write_bytes(b"half a shard")
    capsys.readouterr()
    assert shard(src, out, *opts) == 0
    second = read_manifest(out)
    assert second["run"]["shards_written"] == 1
    assert second["run"]["shards_reused"] == len(files) // 2 - 1
    assert not partial.exists()
    rewritten = {victim, victim.with_suffix(".idx")}
    for p, (data, mtime) in before.items():
        assert p.read_bytes() == data, p  # the result equals the first run
        if p not in rewritten:
            assert p.stat().st_mtime_ns == mtime, p  # untouched
    assert victim.stat().st_mtime_ns > before[victim][1]
    strip = lambda m: {k: v for k, v in m.items() if k != "run"}  # noqa: E731
    assert strip(first) == strip(second)


def test_failed_shard_gives_exit_1_and_resume_finishes(coco, monkeypatch, capsys):
    import p2p.data.shards.write as S

    src, out = coco["src"], coco["root"] / "out_fail"
    opts = ["--size", SIZE, "--val-fraction", 0, "--shard-size-mb", 0.03, "--workers", 1]
    real = S.write_shard

    def flaky(t):
        if t.index == 1:
            raise OSError(28, "No space left on device")
        return real(t)

    monkeypatch.setattr(S, "write_shard", flaky)
    assert shard(src, out, *opts) == 1
    assert "No space left on device" in capsys.readouterr().err
    m = read_manifest(out)
    assert m["complete"] is False and m["run"]["shards_failed"] == 1
    assert "shard-000001.tar" not in [x["file"] for x in m["train"]["shards"]]
    monkeypatch.setattr(S, "write_shard", real)
    assert shard(src, out, *opts) == 0
    m = read_manifest(out)
    assert m["complete"] is True and m["run"]["shards_written"] == 1
    assert m["count"] == len(coco["good"])


def test_changed_options_need_force(coco, capsys):
    src, out = coco["src"], coco["root"] / "out_force"
    assert shard(src, out, "--size", SIZE, "--val-fraction", 0.25) == 0
    capsys.readouterr()
    assert shard(src, out, "--size", 72, "--val-fraction", 0.25) == 2
    err = capsys.readouterr().err
    assert "--force" in err and "size 64 -> 72" in err and len(err.strip().splitlines()) == 1
    assert shard(src, out, "--size", 72, "--val-fraction", 0.25, "--force") == 0
    m = read_manifest(out)
    assert m["options"]["size"] == 72
    assert m["sizes"]["output"]["short"]["min"] == 72
    assert sorted(p.name for p in (out / "train").glob("*.tar")) == [s["file"] for s in m["train"]["shards"]]


def test_usage_errors(tmp_path, capsys):
    assert shard(tmp_path / "missing", tmp_path / "out") == 2
    assert "does not exist" in capsys.readouterr().err
    (tmp_path / "file.jpg").write_bytes(b"x")
    assert shard(tmp_path / "file.jpg", tmp_path / "out") == 2
    assert "not a folder" in capsys.readouterr().err
    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / "notes.txt").write_text("no images")
    assert shard(empty, tmp_path / "out") == 2
    assert "no image files found" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def test_second_writer_is_refused(tmp_path, capsys):
    fcntl = pytest.importorskip("fcntl")
    F.make_coco_like(tmp_path / "src", n=2, scale=0.25)
    out = tmp_path / "out"
    out.mkdir()
    with open(out / ".p2p-shard.lock", "w") as held:
        fcntl.flock(held, fcntl.LOCK_EX)
        assert shard(tmp_path / "src", out, "--size", SIZE) == 2
        assert "another p2p shard is writing" in capsys.readouterr().err
    assert shard(tmp_path / "src", out, "--size", SIZE) == 0


def test_no_usable_images(tmp_path, capsys):
    src = tmp_path / "bad"
    faults = F.add_faults(src, side=80, small_side=40)
    for name, f in faults.items():
        if f.skip_colorize is None:
            (src / name).unlink()
    assert shard(src, tmp_path / "out", "--size", SIZE) == 2
    err = capsys.readouterr().err.strip()
    assert "no usable images" in err and "grayscale" in err and len(err.splitlines()) == 1
    m = read_manifest(tmp_path / "out")  # the reasons are still written down
    assert m["count"] == 0 and m["skipped_counts"]["grayscale"] == 3


def test_grayscale_and_small_kept_for_other_tasks(tmp_path):
    src = tmp_path / "src"
    faults = F.add_faults(src, side=80, small_side=40)
    out = tmp_path / "out"
    assert shard(src, out, "--task", "restore", "--size", SIZE, "--val-fraction", 0, "--upscale-small") == 0
    m = read_manifest(out)
    skipped = {r["path"]: r["reason"] for r in m["skipped"]}
    expected = {n: f.skip_other for n, f in faults.items() if f.skip_other and n != "small.jpg"}
    assert skipped == expected
    samples = read_samples(out, "train")
    assert {"gray_L", "gray_as_rgb", "gray16", "small"} <= set(samples)
    assert samples["small"]["json"]["upscaled"] is True and m["sizes"]["upscaled"] == 1
    # 16-bit gray scaled by 1/257: same picture as the 8-bit gray JPEG of the same photo
    g16 = decode(samples["gray16"]["jpg"]).astype(int)
    g8 = decode(samples["gray_L"]["jpg"]).astype(int)
    assert np.abs(g16[..., 0] - g16[..., 1]).max() <= 2
    assert psnr(g16, g8) > 30


def test_train_val_folders_and_val_dir(tmp_path, capsys):
    src = tmp_path / "src"
    F.make_coco_like(src / "train", n=4, scale=0.25)
    F.make_coco_like(src / "val", n=2, scale=0.25, start=100)
    (src / "README.txt").write_text("x")
    out = tmp_path / "out"
    assert shard(src, out, "--size", SIZE) == 0
    m = read_manifest(out)
    assert m["options"]["split_mode"] == "folders" and m["options"]["val_fraction"] is None
    assert (m["train"]["count"], m["val"]["count"]) == (4, 2)
    assert set(read_samples(out, "val")) == {"000000000100", "000000000101"}
    assert m["ignored"] == ["README.txt"]
    assert shard(src, tmp_path / "o2", "--size", SIZE, "--val-fraction", 0.1) == 2
    assert "drop --val-fraction" in capsys.readouterr().err
    # --val-dir: e.g. COCO train2017 + val2017
    assert shard(src / "train", tmp_path / "o3", "--size", SIZE, "--val-dir", src / "val") == 0
    m3 = read_manifest(tmp_path / "o3")
    assert (m3["train"]["count"], m3["val"]["count"]) == (4, 2)


def test_paired_side_by_side(tmp_path):
    src = tmp_path / "pairs"
    F.make_paired(src, n=4, size=80)
    out = tmp_path / "out"
    assert shard(src, out, "--task", "paired", "--size", SIZE, "--val-fraction", 0) == 0
    m = read_manifest(out)
    assert m["options"]["paired"] == "side_by_side" and m["count"] == 4
    assert "each half" in m["layout"]["image"]
    samples = read_samples(out, "train")
    assert set(samples) == {"0001", "0002", "0003", "0004"}
    for s in samples.values():
        img = decode(s["jpg"]).astype(int)
        assert img.shape == (SIZE, 2 * SIZE, 3)
        a, b = img[:, :SIZE], img[:, SIZE:]
        assert np.abs(a[..., 0] - a[..., 1]).mean() < 2  # A: the edge drawing (gray)
        assert np.abs(b[..., 0] - b[..., 1]).mean() > 2  # B: the photo
        assert (s["json"]["width"], s["json"]["height"]) == (160, 80)
    got = dali_read(out, ("train",))
    assert len(got) == 4 and all(shape == (SIZE, 2 * SIZE, 3) for shape, _ in got)


def test_paired_two_folders(tmp_path):
    src = tmp_path / "pf"
    F.make_paired_folders(src, n=3, size=80, b_size=96, unmatched=1)
    out = tmp_path / "out"
    assert shard(src, out, "--task", "paired", "--size", SIZE, "--val-fraction", 0) == 0
    m = read_manifest(out)
    assert m["options"]["paired"] == "folders" and m["count"] == 3
    assert [(r["path"], r["reason"]) for r in m["skipped"]] == [("A/unmatched_0.jpg", "unpaired")]
    samples = read_samples(out, "train")
    assert set(samples) == {"0001", "0002", "0003"}
    s = samples["0001"]
    assert decode(s["jpg"]).shape == (SIZE, 2 * SIZE, 3)
    assert s["json"]["path"] == "A/0001.jpg" and s["json"]["path_b"] == "B/0001.jpg"
    assert s["json"]["width_b"] == 96
    # --b-dir: the same pairs from two unrelated folders
    out2 = tmp_path / "out2"
    assert shard(src / "A", out2, "--task", "paired", "--b-dir", src / "B", "--size", SIZE,
                 "--val-fraction", 0) == 0
    s2 = read_samples(out2, "train")
    assert s2["0001"]["jpg"] == s["jpg"]
    assert shard(src / "A", tmp_path / "o3", "--b-dir", src / "B") == 2  # needs --task paired


def test_python_api_make_shards(tmp_path):
    from p2p.data.shards import make_shards
    from p2p.errors import UsageError

    F.make_coco_like(tmp_path / "src", n=3, scale=0.25)
    m = make_shards(tmp_path / "src", tmp_path / "out", size=SIZE, val_fraction=0.0, workers=1)
    assert m == read_manifest(tmp_path / "out") and m["count"] == 3
    assert len(shard_files(tmp_path / "out", "train")) == 1 and shard_files(tmp_path / "out", "val") == []
    with pytest.raises(UsageError, match="does not exist"):
        make_shards(tmp_path / "nope", tmp_path / "out2")


def test_default_size_286_with_draft(tmp_path):
    src = tmp_path / "src"
    F.make_coco_like(src, n=3, seed=1)  # about 640x480
    big = F.crop_resize(F.photos()["retina"], (1400, 1050))
    big.save(src / "big.jpg", "JPEG", quality=95)  # 4.9x downscale: JPEG draft (DCT scaling) path
    out = tmp_path / "out"
    assert shard(src, out, "--val-fraction", 0) == 0
    m = read_manifest(out)
    assert m["options"]["size"] == 286 and m["options"]["quality"] == 95 and m["count"] == 4
    assert m["layout"]["chroma_subsampling"] == "4:4:4"
    samples = read_samples(out, "train")
    for key, s in samples.items():
        im = Image.open(io.BytesIO(s["jpg"]))
        assert min(im.size) == 286
        from PIL import JpegImagePlugin

        assert JpegImagePlugin.get_sampling(im) == 0  # 4:4:4
    got = decode(samples["big"]["jpg"])
    assert got.shape == (286, 381, 3)
    ref = np.asarray(big.resize((381, 286), Image.LANCZOS))  # full decode + Lanczos
    assert psnr(got, ref) > 33


@pytest.mark.slow
def test_real_subprocess(tmp_path):
    src = tmp_path / "src"
    F.make_coco_like(src, n=6, scale=0.25)
    out = tmp_path / "out"
    env = {**os.environ, "COLUMNS": "120"}
    r = subprocess.run([sys.executable, "-m", "p2p", "shard", str(src), str(out), "--size", str(SIZE),
                        "--val-fraction", "0", "--shard-size-mb", "0.02", "--workers", "2"],
                       capture_output=True, text=True, env=env, timeout=120)
    assert r.returncode == 0, r.stderr
    assert "train" in r.stdout and "images/s" in r.stdout
    m = read_manifest(out)
    assert m["count"] == 6 and len(m["train"]["shards"]) >= 2
    r = subprocess.run([sys.executable, "-m", "p2p", "shard", str(tmp_path / "nope"), str(out)],
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 2 and r.stderr.count("\n") == 1 and "does not exist" in r.stderr
