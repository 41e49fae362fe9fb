"""A zero-byte, non-image, bomb, truncated or foreign-format sample in the val split (an image
folder's val/ or a shard folder's val shards) or in the `p2p eval` folder is skipped with its
reason and counted, as the train split skips it, instead of ending the run; `p2p predict` whose
every input is such a file exits 2 after one line per file, not "wrote 0 image(s)"."""

from __future__ import annotations

import json
import os

import pytest

from helpers.hostile_files import (EPS, jpeg_bomb, jpeg_bytes, photo_rgb, png_bomb, run_cli, tiny_generator_file,
                                   truncated_jpeg)
from p2p.config import load_config, with_values
from p2p.data.held_out import held_out
from p2p.data.images import ImageRejected, read_rgb

BAD = {"empty.jpg": b"", "text.png": b"just some text\n", "bomb.png": png_bomb(20000),
       "truncated.jpg": truncated_jpeg(), "eps.jpg": EPS}
REASONS = {"empty.jpg": "empty", "text.png": "not_image", "bomb.png": "too_large", "truncated.jpg": "truncated",
           "eps.jpg": "unsupported_format"}


@pytest.fixture
def folder(tmp_path):
    root = tmp_path / "data"
    (root / "train").mkdir(parents=True)
    (root / "val").mkdir()
    for i in range(2):
        (root / "train" / f"t{i}.jpg").write_bytes(jpeg_bytes(photo_rgb(48, 64, seed=i)))
        (root / "val" / f"good{i}.jpg").write_bytes(jpeg_bytes(photo_rgb(48, 64, seed=10 + i)))
    for name, data in BAD.items():
        (root / "val" / name).write_bytes(data)
    return root


def _reasons(skipped) -> dict:
    return {os.path.basename(k): r.split(":")[0] for k, r in skipped}


def test_held_out_folder_skips_and_counts_bad_samples(folder):
    cfg = with_values(load_config(), {"data.source": str(folder)})
    got = held_out(cfg)
    assert sorted(os.path.basename(h.key) for h in got) == ["good0.jpg", "good1.jpg"]
    assert _reasons(got.skipped) == REASONS
    # every rank skips its own share, and the images kept keep their place in the whole set
    parts = [held_out(cfg, rank, 2) for rank in range(2)]
    assert sorted(h.index for p in parts for h in p) == sorted(h.index for h in got)
    assert sum(len(p.skipped) for p in parts) == len(BAD)


def test_validation_during_training_warns_and_goes_on(folder):
    from p2p.train.validation import held_out_images

    cfg = with_values(load_config(), {"data.source": str(folder)})
    with pytest.warns(UserWarning, match="skipping held-out sample .*bomb.png: too_large"):
        images = held_out_images(cfg, 0, 1)
    assert len(images) == 2


def test_eval_folder_with_bad_images_scores_the_rest(folder, tmp_path):
    ckpt = tiny_generator_file(tmp_path / "g.pth")
    code, out, err = run_cli("eval", ckpt, "--data", folder, "--json", tmp_path / "m.json", "--device", "cpu")
    assert code == 0, err
    assert "Traceback" not in err
    lines = [ln for ln in err.splitlines() if ln.startswith("p2p eval: skipping")]
    assert sorted(os.path.basename(ln.split()[3].rstrip(":")) for ln in lines) == sorted(BAD), err
    assert json.loads((tmp_path / "m.json").read_text())["count"] == 2
    assert json.loads((tmp_path / "m.meta.json").read_text())["skipped"] == len(BAD)


def test_eval_with_only_bad_images_is_one_line_exit_2(tmp_path):
    (tmp_path / "bad").mkdir()
    for name, data in BAD.items():
        (tmp_path / "bad" / name).write_bytes(data)
    ckpt = tiny_generator_file(tmp_path / "g.pth")
    code, out, err = run_cli("eval", ckpt, "--data", tmp_path / "bad", "--device", "cpu")
    assert code == 2 and "Traceback" not in err
    assert err.splitlines()[-1].startswith("p2p eval: error:") and f"{len(BAD)} skipped" in err.splitlines()[-1]


def test_shard_val_split_with_corrupt_and_bomb_members(tmp_path):
    from p2p.data.shards import make_shards
    from p2p.data.shards.format import read_manifest
    from p2p.data.shards.index import read_index

    src = tmp_path / "src"
    src.mkdir()
    for i in range(8):
        (src / f"p{i}.jpg").write_bytes(jpeg_bytes(photo_rgb(48, 64, seed=i)))
    out = tmp_path / "shards"
    make_shards(src, out, size=32, val_fraction=0.6, workers=1)
    m = read_manifest(out)
    assert m["val"]["count"] >= 3
    val = out / "val" / m["val"]["shards"][0]["file"]
    samples = read_index(out / "val" / m["val"]["shards"][0]["index"])
    jpgs = [c for comps in samples for c in comps if c.ext == "jpg"]
    with open(val, "r+b") as f:  # member 0: zeros; member 1: a header declaring 30000 x 30000
        f.seek(jpgs[0].offset)
        f.write(b"\0" * jpgs[0].size)
        bomb = jpeg_bomb(30000)
        assert len(bomb) <= jpgs[1].size
        f.seek(jpgs[1].offset)
        f.write(bomb)
    cfg = with_values(load_config(), {"data.source": str(out)})
    got = held_out(cfg)
    assert len(got) == m["val"]["count"] - 2
    assert sorted(r.split(":")[0] for _, r in got.skipped) == ["not_image", "too_large"]
    ckpt = tiny_generator_file(tmp_path / "g.pth")
    code, _, err = run_cli("eval", ckpt, "--data", out, "--device", "cpu")
    assert code == 0 and err.count("p2p eval: skipping") == 2 and "Traceback" not in err, err


def test_predict_whose_every_input_is_bad_exits_2(tmp_path):
    (tmp_path / "in").mkdir()
    for name, data in BAD.items():
        if data:  # a zero-byte file too
            (tmp_path / "in" / name).write_bytes(data)
    (tmp_path / "in" / "empty.jpg").write_bytes(b"")
    (tmp_path / "in" / "bomb.jpg").write_bytes(jpeg_bomb(30000))
    ckpt = tiny_generator_file(tmp_path / "g.pth")
    code, out, err = run_cli("predict", ckpt, tmp_path / "in", "--out", tmp_path / "out")
    assert code == 2 and "Traceback" not in err, err
    lines = err.strip().splitlines()
    assert len(lines) == len(BAD) + 2  # one per file, then the error
    assert all(ln.startswith("p2p predict: skipping") for ln in lines[:-1])
    assert lines[-1].startswith("p2p predict: error:") and "skipped" in lines[-1]
    assert not list((tmp_path / "out").glob("*.png"))


def test_predict_on_a_fifo_is_one_line_not_a_hang(tmp_path):
    import signal

    fifo = tmp_path / "photo.jpg"
    os.mkfifo(fifo)
    ckpt = tiny_generator_file(tmp_path / "g.pth")

    def hung(*_):
        raise AssertionError("predict blocked on a FIFO")

    old = signal.signal(signal.SIGALRM, hung)
    signal.alarm(30)
    try:
        code, out, err = run_cli("predict", ckpt, fifo, "--out", tmp_path / "out")
        with pytest.raises(ImageRejected, match="not a regular file"):
            read_rgb(fifo)
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, old)
    assert code == 2 and "not a regular file" in err and len(err.strip().splitlines()) == 1, err
