"""One pixel limit (`data.max_pixels`, default 8192 x 8192) and one aspect bound, read from the
header before any pixel is decoded, in every reader: a JPEG or PNG that declares more is refused
(skipped with the reason `too_large`), never decoded in full, never a DecompressionBombError
traceback; a 1 x 10000 strip is refused in predict instead of being scaled to gigabytes. Also
the one mode conversion: a 16-bit gray PNG is the same 8-bit image for every reader."""

from __future__ import annotations

import numpy as np
import pytest

from helpers.hostile_files import (jpeg_bomb, jpeg_bytes, photo_rgb, png_bomb, png_bytes, png_gray16, run_cli,
                                   tiny_generator_file)
from p2p.data.decode import decode_rgb
from p2p.data.images import DEFAULT_MAX_PIXELS, ImageRejected, read_rgb


# 9000^2 = 81 Mpx: over the default limit, small enough that the unfixed code decodes it (243 MB)
@pytest.mark.parametrize("make", [lambda: jpeg_bomb(9000), lambda: png_bomb(9000), lambda: png_bomb(20000)],
                         ids=["jpeg_9000", "png_9000", "png_20000"])
def test_bombs_are_refused_from_the_header(make, tmp_path):
    data = make()
    assert len(data) < 1 << 20
    (tmp_path / "bomb.jpg").write_bytes(data)
    for read in (lambda: read_rgb(tmp_path / "bomb.jpg"), lambda: read_rgb(data), lambda: decode_rgb(data)):
        with pytest.raises(ImageRejected) as e:
            read()
        assert e.value.reason == "too_large", e.value


def test_nvjpeg_workers_check_the_header_before_the_gpu_allocates():
    from p2p.data.decode import jpeg_header_check

    jpeg_header_check(jpeg_bytes())
    with pytest.raises(ImageRejected, match="max_pixels"):
        jpeg_header_check(jpeg_bomb(30000))


def test_the_limit_is_data_max_pixels(tmp_path):
    from p2p.config import load_config, with_values
    from p2p.data.held_out import held_out
    from p2p.errors import UsageError

    val = tmp_path / "data" / "val"
    val.mkdir(parents=True)
    (tmp_path / "data" / "train").mkdir()
    (val / "small.png").write_bytes(png_bytes(photo_rgb(64, 64)))
    (val / "large.png").write_bytes(png_bytes(photo_rgb(100, 120)))
    cfg = with_values(load_config(), {"data.source": str(tmp_path / "data"), "data.max_pixels": 64 * 64})
    got = held_out(cfg)
    assert [h.key.rsplit("/", 1)[1] for h in got] == ["small.png"]
    assert [(k.rsplit("/", 1)[1], r.split(":")[0]) for k, r in got.skipped] == [("large.png", "too_large")]
    assert load_config().data.max_pixels == DEFAULT_MAX_PIXELS
    with pytest.raises(UsageError, match="data.max_pixels"):
        with_values(load_config(), {"data.max_pixels": 10})


def test_extreme_strip_is_refused_before_predict_scales_it(tmp_path):
    ckpt = tiny_generator_file(tmp_path / "g.pth")
    (tmp_path / "strip.png").write_bytes(png_bytes(photo_rgb(1, 10000)))
    with pytest.raises(ImageRejected) as e:
        read_rgb(tmp_path / "strip.png")
    assert e.value.reason == "extreme_aspect"
    code, out, err = run_cli("predict", ckpt, tmp_path / "strip.png", "--out", tmp_path / "out")
    assert code == 2 and "extreme_aspect" in err and "Traceback" not in err, err


def test_16_bit_gray_png_is_converted_the_same_way_everywhere(tmp_path):
    data, truth = png_gray16()
    (tmp_path / "g16.png").write_bytes(data)
    expected = np.repeat(truth[..., None], 3, -1)
    assert np.abs(np.asarray(read_rgb(tmp_path / "g16.png")).astype(int) - expected).max() <= 1
    assert np.abs(decode_rgb(data).permute(1, 2, 0).numpy().astype(int) - expected).max() <= 1


def test_16_bit_gray_png_in_predict_is_not_clipped_to_white(tmp_path):
    """What predict reads of a 16-bit gray PNG: the unfixed reader clipped 99.6% of it to white."""
    from PIL import Image

    data, truth = png_gray16(64, 64)
    (tmp_path / "g16.png").write_bytes(data)
    ckpt = tiny_generator_file(tmp_path / "g.pth", zero=True)  # colorize adding no colour: out = in
    code, out, err = run_cli("predict", ckpt, tmp_path / "g16.png", "--out", tmp_path / "out")
    assert code == 0, err
    got = np.asarray(Image.open(tmp_path / "out" / "g16.png").convert("L")).astype(int)
    assert (got >= 254).mean() < 0.01
    assert np.abs(got - truth).max() <= 2


def test_nvjpeg_reader_never_hands_a_bomb_to_the_gpu(tmp_path):
    """A shard member declaring 30000 x 30000 is refused by the nvjpeg backend's workers from its
    header and replaced like a corrupt sample; the GPU decoder (the CPU stand-in here: no CUDA)
    never receives it."""
    from helpers.hostile_files import jpeg_bomb
    from helpers.jpeg_stand_in import CpuJpegDecoder
    from p2p.config import load_config, with_values
    from p2p.data import loader_args
    from p2p.data.nvjpeg import NvjpegLoader
    from p2p.data.shards import make_shards
    from p2p.data.shards.format import read_manifest
    from p2p.data.shards.index import read_index

    (tmp_path / "src").mkdir()
    for i in range(6):
        (tmp_path / "src" / f"p{i}.jpg").write_bytes(jpeg_bytes(photo_rgb(48, 64, seed=i)))
    out = tmp_path / "shards"
    make_shards(tmp_path / "src", out, size=40, val_fraction=0.0, workers=1)
    shard = read_manifest(out)["train"]["shards"][0]
    first = [c for c in read_index(out / "train" / shard["index"])[0] if c.ext == "jpg"][0]
    bomb = jpeg_bomb(30000)
    with open(out / "train" / shard["file"], "r+b") as f:
        f.seek(first.offset)
        f.write(bomb)
    cfg = with_values(load_config(), {"data.source": str(out), "data.backend": "nvjpeg", "data.workers": 0,
                                      "data.load_size": 40, "data.image_size": 32, "model.num_downs": 5,
                                      "train.batch_size": 3})
    decoder = CpuJpegDecoder()
    loader = NvjpegLoader(str(out), "train", 0, 1, loader_args(cfg), None, decoder)
    with pytest.warns(UserWarning, match="skipping corrupt sample.*max_pixels"):
        batches = list(loader.epoch(0))
    assert sum(len(b.keys) for b in batches) == 6
    assert not any(f.startswith(bomb[:64]) for call in decoder.calls for f in call)
