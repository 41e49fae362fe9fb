"""An EPS file named .jpg never reaches Ghostscript (nor any decoder p2p did not choose): not in
the folder loader's worker, not as a shard member, not in `p2p shard`, not in `p2p predict`.
The format is told from the bytes; a recording `gs` first on PATH proves nothing ran it, with
the real Pillow (whose EPS plugin runs `gs` from PATH)."""

from __future__ import annotations

import pytest
import torch

from helpers.hostile_files import EPS, jpeg_bytes, path_first, recording_gs, run_cli, tiny_generator_file
from p2p.data.images import ImageRejected, read_rgb, sniff_format


@pytest.fixture
def gs_log(tmp_path):
    _, log = recording_gs(tmp_path / "bin")
    with path_first(tmp_path / "bin"):
        yield log


def test_the_recording_gs_is_what_pillow_would_run(gs_log, tmp_path):
    """The trap works: Pillow asked for any format runs our `gs` on this file."""
    from PIL import Image

    (tmp_path / "x.jpg").write_bytes(EPS)
    with pytest.raises(Exception):
        with Image.open(tmp_path / "x.jpg") as im:
            im.load()
    assert gs_log.exists()


def test_reader_refuses_eps_named_jpg_without_running_gs(gs_log, tmp_path):
    (tmp_path / "photo.jpg").write_bytes(EPS)
    with pytest.raises(ImageRejected) as e:
        read_rgb(tmp_path / "photo.jpg")
    assert e.value.reason == "unsupported_format" and "EPS" in str(e.value)
    with pytest.raises(ImageRejected):  # a shard member: the wds decode
        from p2p.data.decode import decode_rgb

        decode_rgb(EPS)
    assert not gs_log.exists()


def test_folder_loader_worker_skips_the_eps(gs_log, tmp_path):
    from p2p.data.folder import FolderSamples

    (tmp_path / "a.jpg").write_bytes(EPS)
    (tmp_path / "b.jpg").write_bytes(jpeg_bytes())
    samples = FolderSamples([tmp_path / "a.jpg", tmp_path / "b.jpg"], 32, False, 0, True)
    with pytest.warns(UserWarning, match="a.jpg.*EPS"):
        image, key = samples[0]  # replaced by its neighbour, reported
    assert key.endswith("b.jpg") and image.shape == (3, 32, 32) and image.dtype == torch.uint8
    assert not gs_log.exists()


def test_shard_records_the_eps_as_skipped(gs_log, tmp_path):
    from p2p.data.shards import make_shards

    src = tmp_path / "src"
    src.mkdir()
    (src / "evil.jpg").write_bytes(EPS)
    for i in range(3):
        (src / f"ok{i}.jpg").write_bytes(jpeg_bytes())
    m = make_shards(src, tmp_path / "out", size=32, val_fraction=0.0, workers=1)
    reasons = {s["path"]: s["reason"] for s in m["skipped"]}
    assert reasons == {"evil.jpg": "unsupported_format"}
    assert m["train"]["count"] == 3
    assert not gs_log.exists()


def test_predict_skips_the_eps_with_one_line(gs_log, tmp_path):
    ckpt = tiny_generator_file(tmp_path / "g.pth")
    (tmp_path / "in").mkdir()
    (tmp_path / "in" / "evil.jpg").write_bytes(EPS)
    (tmp_path / "in" / "ok.jpg").write_bytes(jpeg_bytes())
    code, out, err = run_cli("predict", ckpt, tmp_path / "in", "--out", tmp_path / "out")
    assert code == 0, err
    lines = [ln for ln in err.splitlines() if "evil.jpg" in ln]
    assert len(lines) == 1 and "unsupported_format" in lines[0], err
    assert (tmp_path / "out" / "ok.png").exists() and not (tmp_path / "out" / "evil.png").exists()
    assert not gs_log.exists()


@pytest.mark.parametrize("head, fmt", [(b"\xff\xd8\xff\xe0", "JPEG"), (b"\x89PNG\r\n\x1a\n", "PNG"),
                                       (b"RIFF\x00\x00\x00\x00WEBPVP8 ", "WEBP"), (b"BM\x00\x00", "BMP"),
                                       (b"II*\x00", "TIFF"), (b"MM\x00*", "TIFF"), (b"%!PS-Adobe", None),
                                       (b"GIF89a", None), (b"P6\n", None), (b"hello", None)])
def test_format_comes_from_the_first_bytes(head, fmt):
    assert sniff_format(head) == fmt
