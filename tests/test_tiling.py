"""Tiled inference (`p2p predict --tile N --overlap K`): the blend of overlapping tiles covers
every pixel with weights that sum to one (an identity network comes back exactly), one tile
covering the image is the untiled run, a real U-Net's tiled output stays within the stated
tolerance of its untiled one, and colorize keeps the full-resolution L."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from helpers.image_folders import photo
from helpers.runs import TINY, run_p2p
from p2p.config import TaskConfig
from p2p.inference import Geometry, predict
from p2p.models import GeneratorArch, build_generator, init_weights
from p2p.tasks import build_task
from p2p.tiling import Tiling, tile_starts

# stated tolerance of tiled vs untiled for a U-Net whose tiles see less context than the image
TILED_PSNR_DB = 40.0


def rgb_photo(i: int, h: int, w: int) -> torch.Tensor:
    return torch.from_numpy(np.ascontiguousarray(photo(i)[:h * 2:2, :w * 2:2])).permute(2, 0, 1)[None].float() / 255


class Identity(torch.nn.Module):
    stride = 32

    def __init__(self):
        super().__init__()
        self.tiles = []

    def forward(self, x):
        self.tiles.append(tuple(x.shape[-2:]))
        return x


@pytest.mark.parametrize("tile,overlap", [(64, 16), (64, 0), (96, 40), (32, 31)])
def test_identity_network_comes_back_exactly(tile, overlap):
    task = build_task(TaskConfig(name="paired"))
    rgb = rgb_photo(0, 150, 230)  # padded to 160 x 256: the last tiles are moved back to the edge
    G = Identity()
    out = predict(G, task, rgb, Geometry("full", 0), tiling=Tiling(tile, overlap))
    assert len(G.tiles) == len(tile_starts(160, tile, overlap)) * len(tile_starts(256, tile, overlap)) > 1
    assert set(G.tiles) == {(tile, tile)}
    torch.testing.assert_close(out, rgb, atol=1e-6, rtol=0)


class TileNumber(torch.nn.Module):
    """Returns the number of the tile it is running (0, 1, 2, ...) everywhere in that tile: the
    blend is then the window itself, and a seam shows as a jump between neighbouring pixels."""

    stride = 32

    def __init__(self):
        super().__init__()
        self.count = 0

    def forward(self, x):
        self.count += 1
        return torch.full_like(x, -1 + 0.25 * (self.count - 1))  # within the tanh range the task expects


def test_blend_has_no_seams():
    task = build_task(TaskConfig(name="paired"))
    rgb = torch.zeros(1, 3, 64, 256)  # one row of tiles 64 wide, overlapping by 32: 0, 32, ..., 192
    out = predict(TileNumber(), task, rgb, Geometry("full", 0), tiling=Tiling(64, 32))
    tiles = ((out[0, 0, 0] * 2 - 1) + 1) / 0.25  # the task's output is (x + 1) / 2: back to tile numbers
    # from one tile's number to the next over the 32 shared pixels, by at most pi/2 / 32 per pixel
    assert tiles.diff().abs().max() < 1.6 / 32 + 1e-6, tiles.diff().abs().max()
    assert tiles[0] == 0 and tiles[-1] == 6 and (tiles.diff() >= -1e-6).all()


def test_tile_starts_cover_with_the_overlap():
    for length, size, overlap in ((256, 64, 16), (160, 96, 40), (64, 64, 8), (200, 64, 0)):
        starts = tile_starts(length, size, overlap)
        assert starts[0] == 0 and starts[-1] + size == max(length, size)
        assert all(b - a <= size - overlap for a, b in zip(starts, starts[1:]))  # at least `overlap` shared


def test_real_unet_tiled_within_tolerance_and_one_tile_is_untiled():
    from p2p.color import rgb_to_lab

    torch.manual_seed(0)
    G = init_weights(build_generator(GeneratorArch(1, 2, 5, 8))).eval()
    task = build_task(TaskConfig(name="colorize"))
    rgb = rgb_photo(1, 128, 192)
    full = predict(G, task, rgb, Geometry("full", 0))
    one = predict(G, task, rgb, Geometry("full", 0), tiling=Tiling(256, 32))  # one tile covers 128 x 192
    torch.testing.assert_close(one, full, atol=1e-6, rtol=0)
    tiled = predict(G, task, rgb, Geometry("full", 0), tiling=Tiling(64, 32))
    psnr = 10 * np.log10(1 / (tiled - full).pow(2).mean().item())
    assert psnr > TILED_PSNR_DB, psnr
    lab_in, lab_out = rgb_to_lab(rgb), rgb_to_lab(tiled)
    assert (lab_out[:, 0] - lab_in[:, 0]).abs().max() < 0.5  # L is the input's (up to gamut clipping)


def test_predict_cli_tiles_a_folder_of_mixed_sizes(tmp_path):
    """About a minute on a loaded CPU: a 2-step training and five `p2p predict` processes."""
    run_p2p("train", f"run.out_dir={tmp_path}", "run.name=t", *TINY, "train.max_steps=2")
    ckpt = tmp_path / "t" / "checkpoints" / "last.pt"
    src = tmp_path / "in"
    src.mkdir()
    sizes = [(120, 200), (200, 120), (120, 200), (97, 131)]
    for i, (h, w) in enumerate(sizes):
        Image.fromarray((rgb_photo(i, h, w)[0].permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)).save(
            src / f"{i}.png")
    run_p2p("predict", ckpt, src, "--out", tmp_path / "whole", "--full-res", "--batch-size", "2")
    run_p2p("predict", ckpt, src, "--out", tmp_path / "tiled", "--full-res", "--tile", "64", "--overlap", "32")
    differs = []
    for i, (h, w) in enumerate(sizes):
        a = np.asarray(Image.open(tmp_path / "whole" / f"{i}.png")).astype(np.float64) / 255
        b = np.asarray(Image.open(tmp_path / "tiled" / f"{i}.png")).astype(np.float64) / 255
        assert a.shape == b.shape == (h, w, 3)
        assert 10 * np.log10(1 / max(np.mean((a - b) ** 2), 1e-12)) > TILED_PSNR_DB, i
        differs.append(np.abs(a - b).max() > 0)
    assert any(differs)  # the tiles did run: their smaller context shows somewhere
    for flags, needle in ((["--tile", "50"], "multiple of the network's stride 32"),
                          (["--tile", "64", "--overlap", "64"], "must be in [0, --tile 64)"),
                          (["--overlap", "8"], "--overlap needs --tile")):
        proc = run_p2p("predict", ckpt, src, "--out", tmp_path / "x", *flags, check=False)
        assert proc.returncode == 2 and needle in proc.stderr, proc.stderr
