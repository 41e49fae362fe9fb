"""`p2p export`: an ONNX file that onnxruntime runs at any multiple of the stride, a TorchScript
file, and official-layout weights that an independent restatement of the official U-Net loads
strictly; each equal to the PyTorch generator. Bad input is one line and exit 2."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from helpers.official_layout import OfficialUnet
from helpers.runs import TINY, run_p2p
from p2p.export import base_side
from p2p.models import load_generator


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory):
    root = tmp_path_factory.mktemp("export")
    run_p2p("train", f"run.out_dir={root}", "run.name=t", *TINY, "train.max_steps=2")
    return root / "t" / "checkpoints" / "last.pt"


def _inputs(G):
    """Sizes the export check does not use: another batch, and non-square multiples of the stride."""
    s, gen = base_side(G), torch.Generator().manual_seed(1)
    return [torch.rand(3, 1, 3 * s, s, generator=gen) * 2 - 1, torch.rand(1, 1, s, 4 * s, generator=gen) * 2 - 1]


@pytest.mark.slow
def test_onnx_runs_in_onnxruntime_at_any_multiple_of_the_stride(ckpt, tmp_path):
    import onnx
    import onnxruntime as ort

    proc = run_p2p("export", ckpt, "--format", "onnx", "--out", tmp_path / "g.onnx", timeout=600)
    assert "max |onnx - pytorch| = " in proc.stdout, proc.stdout
    assert float(proc.stdout.split("= ")[1].split()[0]) <= 1e-4
    assert sorted(p.name for p in tmp_path.iterdir()) == ["g.onnx"]  # one file, no external data, no temporaries
    model = onnx.load(str(tmp_path / "g.onnx"))
    meta = {p.key: p.value for p in model.metadata_props}
    assert meta["p2p.task"] == "colorize" and meta["p2p.stride"] == "32"
    dims = model.graph.input[0].type.tensor_type.shape.dim
    assert all(d.dim_param for d in (dims[0], dims[2], dims[3])), dims  # batch, height, width are symbolic
    session = ort.InferenceSession(str(tmp_path / "g.onnx"), providers=["CPUExecutionProvider"])
    G = load_generator(ckpt)
    for x in _inputs(G):
        got = session.run(None, {"input": x.numpy()})[0]
        with torch.no_grad():
            assert np.abs(got - G(x).numpy()).max() < 1e-4


def test_torchscript_runs_without_p2p_classes(ckpt, tmp_path):
    proc = run_p2p("export", ckpt, "--format", "torchscript", "--out", tmp_path / "g.pt")
    assert "max |torchscript - pytorch|" in proc.stdout
    assert proc.stderr.strip() == "", proc.stderr  # torch.jit's deprecation warnings are not the user's business
    scripted = torch.jit.load(str(tmp_path / "g.pt"))
    G = load_generator(ckpt)
    for x in _inputs(G):
        with torch.no_grad():
            torch.testing.assert_close(scripted(x), G(x), atol=1e-5, rtol=0)


def test_official_export_loads_strictly_into_the_official_unet(ckpt, tmp_path):
    run_p2p("export", ckpt, "--format", "official", "--out", tmp_path / "latest_net_G.pth")
    official = OfficialUnet(1, 2, 5, ngf=8, norm="batch", dropout=True)
    official.load_state_dict(torch.load(tmp_path / "latest_net_G.pth", weights_only=True), strict=True)
    official.eval()
    G = load_generator(ckpt)
    for x in _inputs(G):
        with torch.no_grad():
            torch.testing.assert_close(official(x), G(x), atol=1e-6, rtol=0)


def test_a_failed_check_writes_nothing(ckpt, tmp_path):
    from p2p.export import ExportMismatch, export_generator

    with pytest.raises(ExportMismatch, match="nothing written"):
        export_generator(load_generator(ckpt), "torchscript", tmp_path / "g.pt", tolerance=-1.0)
    assert list(tmp_path.iterdir()) == []


def test_bad_input_is_one_line_and_exit_2(ckpt, tmp_path):
    (tmp_path / "junk.pt").write_bytes(b"\x00not a checkpoint")
    (tmp_path / "folder").mkdir()
    cases = ((["--format", "tflite", "--out", tmp_path / "g"], "choose one of onnx, torchscript, official"),
             (["--format", "onnx", "--out", tmp_path / "nowhere" / "g.onnx"], "does not exist"),
             (["--format", "official", "--out", tmp_path / "folder"], "is a folder"))
    for flags, needle in cases:
        proc = run_p2p("export", ckpt, *flags, check=False)
        assert proc.returncode == 2 and needle in proc.stderr and len(proc.stderr.strip().splitlines()) == 1, \
            (flags, proc.stderr)
    for path, needle in ((tmp_path / "junk.pt", "not a PyTorch checkpoint file"), (tmp_path / "missing.pt", "not found")):
        proc = run_p2p("export", path, "--format", "onnx", "--out", tmp_path / "g.onnx", check=False)
        assert proc.returncode == 2 and needle in proc.stderr and len(proc.stderr.strip().splitlines()) == 1, \
            proc.stderr


@pytest.mark.slow
def test_a_resnet_with_ema_exports_its_moving_average(tmp_path):
    """A ResNet generator trained with train.ema_decay: onnx and torchscript hold the EMA weights
    (what `p2p predict` runs by default), not the raw ones, at sizes the check did not use."""
    import onnxruntime as ort

    run_p2p("train", f"run.out_dir={tmp_path}", "run.name=r", *TINY, "model.generator=resnet", "model.n_blocks=2",
            "train.max_steps=3", "train.ema_decay=0.5")
    ckpt = tmp_path / "r" / "checkpoints" / "last.pt"
    ema, raw = load_generator(ckpt).eval(), load_generator(ckpt, weights="raw").eval()
    run_p2p("export", ckpt, "--format", "onnx", "--out", tmp_path / "g.onnx", timeout=600)
    run_p2p("export", ckpt, "--format", "torchscript", "--out", tmp_path / "g.pt")
    session = ort.InferenceSession(str(tmp_path / "g.onnx"), providers=["CPUExecutionProvider"])
    scripted = torch.jit.load(str(tmp_path / "g.pt"))
    for x in _inputs(ema):
        with torch.no_grad():
            want, other = ema(x), raw(x)
            assert (want - other).abs().max() > 1e-4  # so the comparison below tells them apart
            np.testing.assert_allclose(session.run(None, {"input": x.numpy()})[0], want.numpy(), atol=1e-4)
            torch.testing.assert_close(scripted(x), want, atol=1e-5, rtol=0)
