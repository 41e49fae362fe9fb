"""Tasks and jitter: uint8 batch -> (input, target) on the device, and back to RGB."""

import numpy as np
import pytest
import torch
from skimage import color as skcolor

from p2p.augment import crop_flip, step_generator
from p2p.config import TaskConfig
from helpers.image_folders import photo_batch as photos
from p2p.tasks import build_task, degrade


def test_crop_flip_is_deterministic_per_generator_and_exact():
    x = torch.arange(2 * 3 * 10 * 12, dtype=torch.int32).reshape(2, 3, 10, 12)
    a = crop_flip(x, 6, step_generator(0, 0, 5))
    b = crop_flip(x, 6, step_generator(0, 0, 5))
    c = crop_flip(x, 6, step_generator(0, 0, 6))
    assert torch.equal(a, b) and not torch.equal(a, c)
    # every output is a (possibly mirrored) window of its own input
    for i in range(2):
        found = False
        for top in range(5):
            for left in range(7):
                win = x[i, :, top:top + 6, left:left + 6]
                found |= torch.equal(a[i], win) or torch.equal(a[i], win.flip(-1))
        assert found


def test_gpu_gather_and_cpu_slices_agree():
    from p2p.augment import gather_windows, slice_windows

    x = torch.randint(0, 256, (5, 6, 20, 24), dtype=torch.uint8)
    top, left = torch.tensor([0, 3, 7, 2, 10]), torch.tensor([0, 8, 1, 14, 5])
    mirror = torch.tensor([False, True, True, False, True])
    assert torch.equal(gather_windows(x, top, left, mirror, 10), slice_windows(x, top, left, mirror, 10))


def test_center_crop_without_generator():
    x = torch.rand(1, 3, 10, 10)
    assert torch.equal(crop_flip(x, 4, None), x[:, :, 3:7, 3:7])


def test_colorize_matches_skimage_normalisation():
    task = build_task(TaskConfig(name="colorize"))
    imgs = photos()
    inp, target = task.prepare(imgs, 32, None, crop_gen=None)
    assert inp.shape == (2, 1, 32, 32) and target.shape == (2, 2, 32, 32) and inp.dtype == torch.float32
    crop = imgs[:, :, 8:40, 8:40].permute(0, 2, 3, 1).numpy()
    lab = skcolor.rgb2lab(crop)
    np.testing.assert_allclose(inp[:, 0].numpy(), lab[..., 0] / 50 - 1, atol=1e-4)
    np.testing.assert_allclose(target.permute(0, 2, 3, 1).numpy(), lab[..., 1:] / 110, atol=1e-4)
    rgb = task.output_rgb(inp, target)
    np.testing.assert_allclose(rgb.permute(0, 2, 3, 1).numpy(), crop / 255.0, atol=2e-3)


def test_gray2rgb_channels():
    task = build_task(TaskConfig(name="gray2rgb"))
    inp, target = task.prepare(photos(), 32, None)
    assert inp.shape[1] == 1 and target.shape[1] == 3
    assert inp.min() >= -1 and inp.max() <= 1 and (task.in_channels, task.out_channels) == (1, 3)


@pytest.mark.parametrize("direction", ["AtoB", "BtoA"])
def test_paired_same_crop_and_flip_for_both_halves(direction):
    a = photos()
    pair = torch.cat([a, 255 - a], dim=-1)  # B is the negative of A, pixel for pixel
    task = build_task(TaskConfig(name="paired", direction=direction))
    for step in range(5):
        inp, target = task.prepare(pair, 32, None, crop_gen=step_generator(1, 0, step))
        torch.testing.assert_close(inp, -target)  # same window and same mirror in both halves
    first = task.prepare(pair, 32, None, crop_gen=None)[0]
    torch.testing.assert_close(first, (a[:, :, 8:40, 8:40].float() / 255 * 2 - 1) * (1 if direction == "AtoB" else -1))


def test_restore_degrades_and_is_seeded():
    cfg = TaskConfig(name="restore", noise_std=0.1, blur_sigma=1.5, jpeg_quality=30)
    task = build_task(cfg)
    inp1, clean = task.prepare(photos(), 32, step_generator(0, 0, 1))
    inp2, _ = task.prepare(photos(), 32, step_generator(0, 0, 1))
    assert torch.equal(inp1, inp2)
    assert (inp1 - clean).abs().mean() > 0.01
    off = degrade(photos().float() / 255, TaskConfig(name="restore", noise_std=0, blur_sigma=0, jpeg_quality=100),
                  step_generator(0, 0, 1))
    torch.testing.assert_close(off, photos().float() / 255)


def test_blur_alone_keeps_mean_and_lowers_detail():
    x = photos().float() / 255
    cfg = TaskConfig(name="restore", noise_std=0, blur_sigma=2.0, jpeg_quality=100)
    y = degrade(x, cfg, None)  # sigma = 1.0 for every image
    assert abs(y.mean() - x.mean()) < 0.01
    assert (y.diff(dim=-1).abs().mean()) < 0.8 * x.diff(dim=-1).abs().mean()
