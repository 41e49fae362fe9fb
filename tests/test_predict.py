"""`p2p predict` shows the model what training showed it: the short side at the training scale,
the aspect ratio kept, padding to the network's stride cropped off, the output back at the
input's size (colorize: ab upsampled, L kept at full resolution)."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image

from helpers.runs import TINY, run_p2p
from p2p.config import TaskConfig
from p2p.data.folder import embedded_photo
from p2p.inference import Geometry, predict, scaled_size
from p2p.tasks import build_task

# (h, w) of 1:1, 3:2, 2:1 and a portrait image
SHAPES = {"square": (96, 96), "landscape_3_2": (96, 144), "wide_2_1": (80, 160), "portrait": (150, 100)}


def photo(h: int, w: int) -> torch.Tensor:
    """A real photo resized to h x w, RGB in [0, 1], 1 x 3 x h x w."""
    img = Image.fromarray(embedded_photo("astronaut")).resize((w, h), Image.BICUBIC)
    return torch.from_numpy(np.array(img)).permute(2, 0, 1)[None].float() / 255


class Identity(torch.nn.Module):
    """A generator that returns its input: what goes in must come out, wherever it was padded."""

    stride = 32

    def __init__(self):
        super().__init__()
        self.shapes = []

    def forward(self, x):
        self.shapes.append(tuple(x.shape[-2:]))
        return x


@pytest.mark.parametrize("shape", SHAPES.values(), ids=SHAPES.keys())
def test_identity_generator_returns_the_input(shape):
    task = build_task(TaskConfig(name="paired"))
    rgb = photo(*shape)
    G = Identity()
    # at the training scale already: padded to the stride, run, cropped back: exactly the input
    short = min(shape)
    out = predict(G, task, rgb, Geometry("scale", short))
    assert out.shape == rgb.shape
    assert G.shapes[-1] == tuple(-(-s // 32) * 32 for s in shape)  # the model saw a padded multiple of 32
    torch.testing.assert_close(out, rgb, atol=1e-6, rtol=0)
    # at half the scale: the model sees the image at short side short/2 with its aspect ratio,
    # the output is upsampled back; only resampling (a blur) separates it from the input
    out = predict(G, task, rgb, Geometry("scale", short // 2))
    seen = scaled_size(*shape, short // 2)
    assert G.shapes[-1] == tuple(-(-s // 32) * 32 for s in seen)
    assert abs(seen[0] / seen[1] - shape[0] / shape[1]) < 0.03  # aspect ratio kept
    assert out.shape == rgb.shape
    # resampling alone, done independently: PIL down to the seen size and back up
    img = Image.fromarray((rgb[0].permute(1, 2, 0).numpy() * 255).round().astype(np.uint8))
    blurred = np.asarray(img.resize(seen[::-1], Image.BICUBIC).resize(shape[::-1], Image.BICUBIC)) / 255.0
    psnr_resampling = 10 * np.log10(1 / np.mean((blurred - rgb[0].permute(1, 2, 0).numpy()) ** 2))
    psnr = 10 * np.log10(1 / (out - rgb).pow(2).mean().item())
    assert psnr > psnr_resampling - 1.0, f"more than resampling error ({psnr:.1f} vs {psnr_resampling:.1f} dB)"
    # and a squash to a square distorts a non-square image: what the default no longer does
    if shape[0] != shape[1]:
        squashed = predict(G, task, rgb, Geometry("squash", 64))
        assert G.shapes[-1] == (64, 64) and squashed.shape == rgb.shape


def test_colorize_keeps_l_and_recombines_ab():
    task = build_task(TaskConfig(name="colorize"))

    class NoColour(Identity):
        def forward(self, x):
            super().forward(x)
            return torch.zeros(x.shape[0], 2, *x.shape[-2:])

    for shape in SHAPES.values():
        rgb = photo(*shape)
        G = NoColour()
        out = predict(G, task, rgb, Geometry("scale", 40))
        assert G.shapes[-1] == tuple(-(-s // 32) * 32 for s in scaled_size(*shape, 40))
        from p2p.color import rgb_to_lab

        lab_in, lab_out = rgb_to_lab(rgb), rgb_to_lab(out)
        assert (lab_out[:, 0] - lab_in[:, 0]).abs().max() < 1e-3  # L is the input's, at full resolution
        assert lab_out[:, 1:].abs().max() < 1e-2  # and the predicted ab (none) is what was added


@pytest.fixture(scope="module")
def tiny_ckpt(tmp_path_factory):
    root = tmp_path_factory.mktemp("predict")
    run_p2p("train", f"run.out_dir={root}", "run.name=t", *TINY, "train.max_steps=2")
    return root / "t" / "checkpoints" / "last.pt"


def test_predict_cli_keeps_every_size_and_lightness(tiny_ckpt, tmp_path):
    from skimage.color import rgb2lab

    src = tmp_path / "in"
    src.mkdir()
    for name, (h, w) in SHAPES.items():
        Image.fromarray((photo(h, w)[0].permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)).save(src / f"{name}.png")
    for flags in ([], ["--size", "48"], ["--full-res"], ["--squash"]):
        out = tmp_path / ("out" + "".join(flags))
        run_p2p("predict", tiny_ckpt, src, "--out", out, *flags)
        for name, (h, w) in SHAPES.items():
            got = Image.open(out / f"{name}.png")
            assert got.size == (w, h), (flags, name)
            l_in = rgb2lab(np.asarray(Image.open(src / f"{name}.png")))[..., 0]
            l_out = rgb2lab(np.asarray(got))[..., 0]
            assert np.percentile(np.abs(l_in - l_out), 99) < 0.8, (flags, name)


def test_bad_geometry_flags_are_one_line_errors(tiny_ckpt, tmp_path):
    Image.fromarray(embedded_photo("coffee")[:64, :64]).save(tmp_path / "a.png")
    for flags, needle in ((["--full-res", "--squash"], "exclude each other"), (["--squash", "--size", "50"], "stride"),
                          (["--size", "0"], "must be positive")):
        proc = run_p2p("predict", tiny_ckpt, tmp_path / "a.png", "--out", tmp_path / "o", *flags, check=False)
        assert proc.returncode == 2 and needle in proc.stderr and "Traceback" not in proc.stderr, proc.stderr


@pytest.mark.slow
def test_demo_model_predicts_as_colourfully_as_its_validation(tmp_path):
    """The demo's own setting (defaults: ngf 32, 6 levels, 64 px crops of 80 px images), trained
    long enough to colour: predicting the held-out photo gives the colourfulness validation
    reported at the same step."""
    from skimage.data import stereo_motorcycle

    run_p2p("train", f"run.out_dir={tmp_path}", "run.name=demo", "train.max_steps=300", "train.eval_every=300",
            "train.sample_every=0", "train.ckpt_every=0", timeout=900)
    val = [json.loads(x) for x in (tmp_path / "demo" / "val.jsonl").read_text().splitlines()][-1]
    assert val["step"] == 300
    Image.fromarray(stereo_motorcycle()[1]).save(tmp_path / "moto.jpg", quality=95)  # the held-out photo
    run_p2p("predict", tmp_path / "demo" / "checkpoints" / "last.pt", tmp_path / "moto.jpg", "--out", tmp_path / "out")
    out = np.asarray(Image.open(tmp_path / "out" / "moto.png")).astype(np.float64)
    rg, yb = out[..., 0] - out[..., 1], 0.5 * (out[..., 0] + out[..., 1]) - out[..., 2]
    cf = np.hypot(rg.std(), yb.std()) + 0.3 * np.hypot(rg.mean(), yb.mean())
    assert val["colorfulness"] > 5, f"the model did not learn colour: {val}"
    assert cf >= 0.8 * val["colorfulness"], (cf, val["colorfulness"])
    assert abs(cf - val["colorfulness"]) <= 0.2 * val["colorfulness"], (cf, val["colorfulness"])


def test_default_geometry_is_the_training_scale(tiny_ckpt, tmp_path):
    from helpers.official_layout import OfficialUnet, randomize
    from p2p.inference import load_predictor

    p = load_predictor(str(tiny_ckpt))  # TINY: crops of 32 from images with short side 40
    assert p.geometry() == Geometry("scale", 40) == Geometry("scale", p.cfg.data.load_size)
    assert p.geometry(size=56) == Geometry("scale", 56)
    assert p.geometry(full_res=True).mode == "full"
    assert p.geometry(squash=True) == Geometry("squash", 32)  # today's square resize: the crop size
    torch.save(randomize(OfficialUnet(3, 3, 5, 8, "batch")).state_dict(), tmp_path / "latest_net_G.pth")
    official = load_predictor(str(tmp_path / "latest_net_G.pth"))
    assert official.official and official.geometry() == Geometry("scale", 256)  # the official test.py load size
    restore = load_predictor(str(tmp_path / "latest_net_G.pth"), "restore")
    assert restore.geometry().mode == "full"  # restoration runs on the native pixel grid
