"""p2p.color against scikit-image, the reference it reproduces, and its own contracts."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch
from skimage import color as skcolor
from skimage import data as skdata

from helpers.requirements import require_c_compiler

from p2p.color import (
    denormalize_ab,
    denormalize_l,
    lab_to_model,
    lab_to_rgb,
    model_to_rgb,
    normalize_ab,
    normalize_l,
    rgb_to_lab,
)

PHOTOS = ("astronaut", "coffee", "chelsea", "rocket", "hubble_deep_field", "immunohistochemistry")
LAB_TOLERANCE = 2e-3  # Lab units: the contract; float32 gets about 7e-5
RGB_TOLERANCE = 1e-4  # RGB in [0, 1]: the contract is 2e-3, float32 gets about 1e-5


def chw(image: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.ascontiguousarray(image)).permute(2, 0, 1)


def hwc(tensor: torch.Tensor) -> np.ndarray:
    return tensor.permute(1, 2, 0).double().numpy()


def skimage_lab2rgb(lab: np.ndarray) -> np.ndarray:
    with warnings.catch_warnings():  # skimage warns when it clips negative z: expected here
        warnings.simplefilter("ignore")
        return skcolor.lab2rgb(lab)


@pytest.fixture(scope="module")
def photos() -> dict[str, np.ndarray]:
    return {name: getattr(skdata, name)() for name in PHOTOS}


@pytest.mark.parametrize("name", PHOTOS)
def test_rgb_to_lab_matches_skimage_on_photos(photos, name):
    image = photos[name]
    reference = skcolor.rgb2lab(image)
    from_uint8 = rgb_to_lab(chw(image))
    from_float = rgb_to_lab(chw(image).double() / 255)
    assert from_uint8.dtype == from_float.dtype == torch.float32
    assert np.abs(hwc(from_uint8) - reference).max() < LAB_TOLERANCE
    assert np.abs(hwc(from_float) - reference).max() < LAB_TOLERANCE


@pytest.mark.parametrize("name", PHOTOS)
def test_lab_to_rgb_matches_skimage_on_photos(photos, name):
    lab = skcolor.rgb2lab(photos[name])
    rgb = lab_to_rgb(chw(lab))
    assert rgb.dtype == torch.float32
    assert np.abs(hwc(rgb) - skcolor.lab2rgb(lab)).max() < RGB_TOLERANCE


def test_out_of_gamut_lab_is_clipped_like_skimage():
    rng = np.random.default_rng(0)
    n = 200_000
    lab = np.stack(
        [rng.uniform(-10, 110, n), rng.uniform(-128, 128, n), rng.uniform(-128, 128, n)], axis=-1
    ).reshape(400, 500, 3)
    lab[:50, :, 1:] = rng.choice([-110.0, 110.0], size=(50, 500, 2))  # the normalised range's corners
    lab[50:60, :, 2] = 400.0  # b so large that z < 0: skimage sets z to 0
    reference = skimage_lab2rgb(lab)
    assert (reference == 0).any() and (reference == 1).any()
    rgb = lab_to_rgb(chw(lab))
    assert rgb.min() >= 0 and rgb.max() <= 1
    assert np.abs(hwc(rgb) - reference).max() < RGB_TOLERANCE


@pytest.fixture
def one_thread():
    """On a shared 2-core machine, two OpenMP threads collapse (10x slower) whenever another
    process holds a core; one thread keeps this test at about a second either way."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.mark.parametrize("path", ["float", "uint8"])
def test_every_8bit_colour_round_trips_exactly(path, one_thread):
    codes = torch.arange(2**24, dtype=torch.int32)
    every_colour = torch.stack([codes >> 16, (codes >> 8) & 255, codes & 255]).to(torch.uint8)
    for chunk in every_colour.split(2**21, dim=1):
        rgb = chunk.view(1, 3, 1, -1)
        lab = rgb_to_lab(rgb if path == "uint8" else rgb.float() / 255)
        back = torch.round(lab_to_rgb(lab) * 255).to(torch.uint8)
        assert torch.equal(back, rgb)


def test_float32_under_bf16_autocast():
    rgb = torch.rand(2, 3, 16, 16)
    expected_lab = rgb_to_lab(rgb)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        lab = rgb_to_lab(rgb)
        back = lab_to_rgb(lab)
        from_model = model_to_rgb(*lab_to_model(lab))
    assert lab.dtype == back.dtype == from_model.dtype == torch.float32
    assert torch.equal(lab, expected_lab)
    assert torch.equal(back, lab_to_rgb(expected_lab))


def test_half_precision_input_is_computed_in_float32():
    rgb = torch.rand(3, 8, 8).to(torch.bfloat16)
    lab = rgb_to_lab(rgb)
    assert lab.dtype == torch.float32
    assert torch.equal(lab, rgb_to_lab(rgb.float()))
    assert lab_to_rgb(lab.to(torch.bfloat16)).dtype == torch.float32


def test_shapes_layouts_and_input_left_untouched():
    batch = torch.rand(4, 3, 8, 10)
    kept = batch.clone()
    lab = rgb_to_lab(batch)
    assert lab.shape == (4, 3, 8, 10)
    assert torch.equal(batch, kept)
    single = rgb_to_lab(batch[1])
    assert single.shape == (3, 8, 10)
    assert torch.allclose(single, lab[1], atol=1e-4, rtol=0)  # vector vs scalar tail: ulps apart
    channels_last = batch.contiguous(memory_format=torch.channels_last)
    assert torch.allclose(rgb_to_lab(channels_last), lab, atol=1e-4, rtol=0)
    as_uint8 = (batch * 255).round().to(torch.uint8)
    uint8_channels_last = as_uint8.contiguous(memory_format=torch.channels_last)
    assert torch.allclose(rgb_to_lab(uint8_channels_last), rgb_to_lab(as_uint8), atol=1e-4, rtol=0)

    lab_kept = lab.clone()
    rgb = lab_to_rgb(lab)
    assert rgb.shape == (4, 3, 8, 10)
    assert torch.equal(lab, lab_kept)
    assert lab_to_rgb(lab[2]).shape == (3, 8, 10)
    assert torch.allclose(lab_to_rgb(lab[2]), rgb[2], atol=1e-6, rtol=0)
    assert torch.allclose(rgb, batch, atol=1e-5, rtol=0)


@pytest.mark.parametrize("shape", [(8, 8), (2, 4, 8, 8), (1, 2, 3, 8, 8)])
def test_wrong_shapes_are_refused(shape):
    with pytest.raises(ValueError, match="x H x W"):
        rgb_to_lab(torch.rand(shape))
    with pytest.raises(ValueError, match="x H x W"):
        lab_to_rgb(torch.rand(shape))


def test_wrong_dtypes_are_refused():
    with pytest.raises(TypeError):
        rgb_to_lab(torch.zeros(3, 2, 2, dtype=torch.int64))
    with pytest.raises(TypeError):
        lab_to_rgb(torch.zeros(3, 2, 2, dtype=torch.uint8))


def test_normalisation_helpers_invert_each_other():
    lightness = torch.linspace(0, 100, 101)
    ab = torch.linspace(-110, 110, 221)
    assert torch.allclose(denormalize_l(normalize_l(lightness)), lightness, atol=1e-5)
    assert torch.allclose(denormalize_ab(normalize_ab(ab)), ab, atol=1e-5)
    assert normalize_l(torch.tensor([0.0, 50.0, 100.0])).tolist() == [-1.0, 0.0, 1.0]
    assert normalize_ab(torch.tensor([-110.0, 0.0, 110.0])).tolist() == [-1.0, 0.0, 1.0]


def test_model_form_round_trip():
    rgb = torch.rand(2, 3, 8, 8)
    lab = rgb_to_lab(rgb)
    l_norm, ab_norm = lab_to_model(lab)
    assert l_norm.shape == (2, 1, 8, 8) and ab_norm.shape == (2, 2, 8, 8)
    assert l_norm.min() >= -1 and l_norm.max() <= 1
    assert torch.allclose(model_to_rgb(l_norm, ab_norm), rgb, atol=1e-5, rtol=0)
    l_single, ab_single = lab_to_model(lab[0])
    assert l_single.shape == (1, 8, 8) and ab_single.shape == (2, 8, 8)
    assert model_to_rgb(l_single, ab_single).shape == (3, 8, 8)
    # What a network may emit: ab beyond the normalised range is clipped like skimage.
    wild_ab = ab_norm * 3
    wild_lab = torch.cat([denormalize_l(l_norm), denormalize_ab(wild_ab)], dim=1)
    expected = skimage_lab2rgb(hwc(wild_lab[0]))
    assert np.abs(hwc(model_to_rgb(l_norm, wild_ab)[0]) - expected).max() < RGB_TOLERANCE


def test_bench_rows_are_well_formed():
    require_c_compiler()
    from p2p.bench.lab import run_lab

    rows = run_lab(quick=True, size=32, images=2, repeats=1)
    names = [row["name"] for row in rows]
    assert len(rows) == 4 and len(set(names)) == 4
    assert sum("baseline" in name for name in names) == 1
    assert any("float" in name for name in names) and any("uint8" in name for name in names)
    fused = next(row for row in rows if "fused" in row["name"])
    assert fused["implementation"] == "c-kernel" and fused["compile_s"] > 0 and fused["load_s"] >= 0
    for row in rows:
        assert row["img_per_s"] > 0
        assert "ratio" in row and row["ratio"] > 0
        assert row["device"] == "cpu"
        assert 0 <= row["max_abs_diff_vs_skimage"] < LAB_TOLERANCE
    baseline = next(row for row in rows if "baseline" in row["name"])
    assert baseline["ratio"] == 1.0


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_cuda_matches_cpu(photos):
    image = chw(photos["astronaut"]).unsqueeze(0)
    cpu_lab = rgb_to_lab(image)
    for x in (image, image.float() / 255):
        cuda_lab = rgb_to_lab(x.cuda())
        assert cuda_lab.device.type == "cuda" and cuda_lab.dtype == torch.float32
        assert (cuda_lab.cpu() - cpu_lab).abs().max() < 1e-3
    lab = torch.cat([cpu_lab[:, :1], cpu_lab[:, 1:] * 2], 1)  # partly out of gamut
    with torch.autocast("cuda", dtype=torch.float16):
        cuda_rgb = lab_to_rgb(lab.cuda())
    assert cuda_rgb.dtype == torch.float32
    assert (cuda_rgb.cpu() - lab_to_rgb(lab)).abs().max() < 1e-4
