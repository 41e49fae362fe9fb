"""The Python API (`p2p.load_model(...).predict(...)`): from a checkpoint, official weights or a
model folder, on a PIL image, a NumPy array or a batch tensor, the same pixels as the files
`p2p predict` writes (the command runs this library); nothing printed unless asked; `import p2p`
stays cheap."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest
import torch
from PIL import Image

import p2p
import p2p.api
from helpers.runs import ROOT, TINY, p2p_env, run_p2p
from p2p.cli import main
from p2p.data.folder import EMBEDDED_VAL, embedded_photo
from p2p.errors import UsageError


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    """A tiny demo run's last.pt, the same generator as official weights and as a model folder, and
    a held-out photo with a width that is no multiple of the stride."""
    root = tmp_path_factory.mktemp("api")
    run_p2p("train", f"run.out_dir={root}", "run.name=demo", *TINY, "train.max_steps=2")
    ckpt = root / "demo" / "checkpoints" / "last.pt"
    assert main(["export", str(ckpt), "--format", "official", "--out", str(root / "latest_net_G.pth")]) == 0
    assert main(["export", str(ckpt), "--format", "folder", "--out", str(root / "model")]) == 0
    photo = root / "held_out.png"
    Image.fromarray(embedded_photo(EMBEDDED_VAL[0])[:150, :229]).save(photo)
    return {"checkpoint": ckpt, "official": root / "latest_net_G.pth", "folder": root / "model"}, photo


def _cli(model, photo, out, *flags) -> np.ndarray:
    assert main(["predict", str(model), str(photo), "--out", str(out), "--device", "cpu", *flags]) == 0
    return np.asarray(Image.open(out / photo.name))


@pytest.mark.parametrize("source", ["checkpoint", "official", "folder"])
def test_api_gives_the_pixels_of_the_cli(models, tmp_path, source):
    paths, photo = models
    want = _cli(paths[source], photo, tmp_path)
    model = p2p.load_model(paths[source], device="cpu")
    image = Image.open(photo)
    got = model.predict(image)
    assert isinstance(got, Image.Image) and got.size == image.size
    np.testing.assert_array_equal(np.asarray(got), want)
    array = np.array(image.convert("RGB"))
    got = model.predict(array)
    assert got.dtype == np.uint8 and got.shape == array.shape
    np.testing.assert_array_equal(got, want)
    batch = torch.from_numpy(array).permute(2, 0, 1)[None].repeat(2, 1, 1, 1)  # N x 3 x H x W uint8
    got = model.predict(batch)
    assert got.dtype == torch.uint8 and got.shape == batch.shape
    for one in got:
        np.testing.assert_array_equal(one.permute(1, 2, 0).numpy(), want)
    floats = model.predict(batch.float() / 255)  # float in, float in [0, 1] out, not rounded
    assert floats.dtype == torch.float32 and 0 <= floats.min() and floats.max() <= 1
    np.testing.assert_array_equal(p2p.api.to_uint8(floats[0]).permute(1, 2, 0).numpy(), want)


def test_a_folder_of_official_weights_predicts_as_they_do(models, tmp_path):
    """Official weights carry no config: p2p shows them images at the official test size, and so
    does the folder exported from them."""
    paths, photo = models
    assert main(["export", str(paths["official"]), "--format", "folder", "--out", str(tmp_path / "model")]) == 0
    want = _cli(paths["official"], photo, tmp_path / "official")
    np.testing.assert_array_equal(_cli(tmp_path / "model", photo, tmp_path / "folder"), want)
    np.testing.assert_array_equal(_cli(tmp_path / "model", photo, tmp_path / "squash", "--squash"),
                                  _cli(paths["official"], photo, tmp_path / "official_squash", "--squash"))
    assert "without a p2p training record" in (tmp_path / "model" / "README.md").read_text()


def test_the_geometry_keywords_are_the_cli_flags(models, tmp_path):
    paths, photo = models
    model = p2p.load_model(paths["checkpoint"], device="cpu")
    for flags, kwargs in ((["--size", "64"], {"size": 64}), (["--squash"], {"squash": True}),
                          (["--full-res", "--tile", "64", "--overlap", "8"], {"full_res": True, "tile": 64,
                                                                               "overlap": 8})):
        want = _cli(paths["checkpoint"], photo, tmp_path / flags[0].strip("-"), *flags)
        np.testing.assert_array_equal(model.predict(np.asarray(Image.open(photo))), _cli(
            paths["checkpoint"], photo, tmp_path / "default"))
        np.testing.assert_array_equal(model.predict(np.asarray(Image.open(photo)), **kwargs), want)


def test_p2p_predict_runs_the_api(models, tmp_path, monkeypatch):
    """Not a second path: the command's images come out of `p2p.api.Model.run`."""
    paths, photo = models
    calls = []
    run = p2p.api.Model.run

    def recorded(self, rgb, geometry, tiling=None):
        calls.append(tuple(rgb.shape))
        return run(self, rgb, geometry, tiling)

    monkeypatch.setattr(p2p.api.Model, "run", recorded)
    _cli(paths["folder"], photo, tmp_path)
    assert calls == [(1, 3, 150, 229)]


def test_nothing_is_printed_unless_asked(models, capfd):
    paths, photo = models
    for path in paths.values():
        model = p2p.load_model(path, device="cpu")
        model.predict(Image.open(photo))
        model.predict(np.asarray(Image.open(photo)))  # read-only: no warning from torch either
    assert capfd.readouterr() == ("", "")
    p2p.load_model(paths["folder"], device="cpu", verbose=True)
    out, err = capfd.readouterr()
    assert out == "" and err.count("\n") == 1 and "colorize" in err


def test_device_precision_and_weights_choices(models):
    paths, photo = models
    array = np.asarray(Image.open(photo))
    fp32 = p2p.load_model(paths["checkpoint"], device="cpu").predict(array).astype(np.int16)
    bf16 = p2p.load_model(paths["checkpoint"], device="cpu", precision="bf16")
    assert bf16.precision == "bf16" and bf16.device == torch.device("cpu")
    assert np.abs(bf16.predict(array).astype(np.int16) - fp32).mean() < 4  # autocast's rounding only
    assert p2p.load_model(paths["checkpoint"], device="cpu", weights="raw").weights == "raw"
    with pytest.raises(UsageError, match="precision='fp8'"):
        p2p.load_model(paths["checkpoint"], precision="fp8")
    with pytest.raises(UsageError, match="'tpu'"):
        p2p.load_model(paths["checkpoint"], device="tpu")


@pytest.mark.parametrize("bad, match", [
    (np.zeros((8, 8, 3), np.float32), "uint8"),
    (np.zeros((8, 8), np.uint8), "H x W x 3"),
    (torch.zeros(3, 8, 8), "N x 3 x H x W"),
    (torch.full((1, 3, 8, 8), 2.0), r"\[0, 1\]"),
    (torch.full((1, 3, 8, 8), float("nan")), r"\[0, 1\]"),
    ("photo.jpg", "PIL image"),
])
def test_bad_images_are_one_line_errors(models, bad, match):
    paths, _ = models
    model = p2p.load_model(paths["folder"], device="cpu")
    with pytest.raises(UsageError, match=match):
        model.predict(bad)


def test_a_bad_file_is_a_checkpoint_error(tmp_path):
    from p2p.errors import CheckpointError

    (tmp_path / "junk.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(CheckpointError, match="junk.pt"):
        p2p.load_model(tmp_path / "junk.pt")
    with pytest.raises(CheckpointError, match="not a p2p model folder"):
        p2p.load_model(tmp_path)


def test_import_p2p_stays_cheap():
    code = ("import sys, p2p; heavy = [m for m in ('torch', 'numpy', 'p2p.api') if m in sys.modules]; "
            "assert not heavy, heavy; assert callable(p2p.load_model) and 'torch' in sys.modules")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=p2p_env(), cwd=ROOT,
                          timeout=120)
    assert proc.returncode == 0, proc.stderr
