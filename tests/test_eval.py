"""`p2p eval` with FID, KID and LPIPS agrees with the reference packages (pytorch-fid,
torchmetrics, lpips) run on what `p2p predict` writes, with the same weights files; it runs
distributed to the same numbers; weights come from local files only.

The real weights cannot be downloaded here, so the files hold random weights in the real files'
formats (tests/helpers/reference_weights.py); the reference packages read them through their own
loaders where those can read a local file (pytorch-fid: the torch hub cache). For the LPIPS
reference, torchvision's `alexnet` constructor is replaced by one that loads the file (its
download checks a hash no random file can have): the only stand-in here.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from helpers.image_folders import photo
from helpers.reference_weights import FID_FILE_NAME, alexnet_file, fid_inception_file, torch_hub_with
from helpers.runs import TINY, run_p2p, torchrun

SIZES = ((72, 96), (96, 72), (80, 80), (72, 96), (64, 112), (90, 60))  # (h, w): mixed, two alike


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    """A tiny trained checkpoint, six photos of mixed sizes, and weights files."""
    root = tmp_path_factory.mktemp("eval")
    run_p2p("train", f"run.out_dir={root}", "run.name=t", *TINY, "train.max_steps=2")
    src = root / "src"
    src.mkdir()
    for i, (h, w) in enumerate(SIZES):
        Image.fromarray(np.ascontiguousarray(photo(i)[: h * 3 : 3, : w * 3 : 3])).save(src / f"{i}.png")
    fid = fid_inception_file(root / "fid-random.pth")
    return {"root": root, "ckpt": root / "t" / "checkpoints" / "last.pt", "src": src, "fid": fid,
            "alex": alexnet_file(root / "alex-random.pth"), "hub": torch_hub_with(root / "torch", {FID_FILE_NAME: fid})}


def _png(path: Path) -> torch.Tensor:
    return torch.from_numpy(np.array(Image.open(path).convert("RGB"))).permute(2, 0, 1)[None].float() / 255


def _eval(setup, out: Path, *extra, **env) -> dict:
    run_p2p("eval", setup["ckpt"], "--data", setup["src"], "--json", out, "--fid-weights", setup["fid"],
            "--lpips-weights", setup["alex"], *extra, timeout=600, **env)
    return json.loads(out.read_text())


@pytest.mark.slow
def test_fid_kid_lpips_agree_with_the_reference_packages(setup, tmp_path, monkeypatch):
    """Several minutes on a loaded 2-core CPU: two `p2p eval` and one `p2p predict` processes,
    then pytorch-fid (twice), torchmetrics' KID and lpips, each running Inception or AlexNet on CPU."""
    from pytorch_fid.fid_score import calculate_fid_given_paths
    from pytorch_fid.inception import InceptionV3

    ref_npz = tmp_path / "ref.npz"
    # TORCH_HOME without the weights: p2p must not look in the hub cache (nor download)
    got = _eval(setup, tmp_path / "eval.json", "--fid-ref", ref_npz, "--batch-size", "4",
                TORCH_HOME=str(tmp_path / "empty-hub"))
    assert list(got) == ["psnr", "ssim", "l1", "colorfulness", "delta_colorfulness", "fid", "kid", "lpips", "count"]
    assert got["count"] == len(SIZES) and got["fid"] > 0
    run_p2p("predict", setup["ckpt"], setup["src"], "--out", tmp_path / "out")
    outputs = sorted((tmp_path / "out").glob("*.png"))
    targets = sorted(setup["src"].glob("*.png"))

    # FID: pytorch-fid itself on predict's PNGs against the originals, reading the same file
    monkeypatch.setenv("TORCH_HOME", str(setup["hub"]))
    fid = calculate_fid_given_paths([str(tmp_path / "out"), str(setup["src"])], batch_size=1, device="cpu",
                                    dims=2048, num_workers=0)
    assert abs(got["fid"] - fid) <= 0.005 * fid, (got["fid"], fid)
    # the cached reference statistics are pytorch-fid's .npz: it reads them for the same FID
    fid_npz = calculate_fid_given_paths([str(tmp_path / "out"), str(ref_npz)], batch_size=1, device="cpu",
                                        dims=2048, num_workers=0)
    assert abs(got["fid"] - fid_npz) <= 0.005 * fid, (got["fid"], fid_npz)

    # KID: torchmetrics' KernelInceptionDistance on pytorch-fid's network (subsets = the whole set)
    from torchmetrics.image.kid import KernelInceptionDistance

    class PoolFeatures(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.net = InceptionV3([3]).eval()

        def forward(self, x):
            return self.net(x)[0].flatten(1)

    kid = KernelInceptionDistance(feature=PoolFeatures(), subsets=5, subset_size=len(SIZES))
    with torch.no_grad():
        for o, t in zip(outputs, targets):
            kid.update(_png(o), real=False)
            kid.update(_png(t), real=True)
    kid_ref = kid.compute()[0].item()
    assert abs(got["kid"] - kid_ref) <= 1e-3 * abs(kid_ref) + 1e-7, (got["kid"], kid_ref)

    # LPIPS: the lpips package with its own linear layers, its AlexNet built from the same file
    import lpips
    import torchvision

    build_alexnet = torchvision.models.alexnet

    def alexnet_from_file(*args, **kwargs):
        net = build_alexnet(weights=None)
        net.load_state_dict(torch.load(setup["alex"], weights_only=True))
        return net

    monkeypatch.setattr(lpips.pretrained_networks.tv, "alexnet", alexnet_from_file)
    ref = lpips.LPIPS(net="alex", verbose=False)
    with torch.no_grad():
        lp = np.mean([ref(_png(o), _png(t), normalize=True).item() for o, t in zip(outputs, targets)])
    assert abs(got["lpips"] - lp) <= 1e-4 * lp, (got["lpips"], lp)

    # a second run reads the cache instead of recomputing the targets: the same FID and KID
    again = _eval(setup, tmp_path / "again.json", "--fid-ref", ref_npz)
    assert again["fid"] == pytest.approx(got["fid"], rel=1e-9) and again["kid"] == pytest.approx(got["kid"], rel=1e-9)


def test_delta_colorfulness_is_the_gap_of_the_set_means(setup, tmp_path):
    got = json.loads(run_p2p("eval", setup["ckpt"], "--data", setup["src"]).stdout.strip().splitlines()[-1])
    run_p2p("predict", setup["ckpt"], setup["src"], "--out", tmp_path / "out")

    def cf(path):
        x = np.asarray(Image.open(path).convert("RGB")).astype(np.float64)
        rg, yb = x[..., 0] - x[..., 1], 0.5 * (x[..., 0] + x[..., 1]) - x[..., 2]
        return np.hypot(rg.std(), yb.std()) + 0.3 * np.hypot(rg.mean(), yb.mean())

    cf_out = np.mean([cf(p) for p in sorted((tmp_path / "out").glob("*.png"))])
    cf_target = np.mean([cf(p) for p in sorted(setup["src"].glob("*.png"))])
    assert abs(got["colorfulness"] - cf_out) < 0.3  # eval scores float outputs; predict rounds to 8 bits
    assert abs(got["delta_colorfulness"] - abs(cf_out - cf_target)) < 0.3, (got, cf_out, cf_target)
    assert got["delta_colorfulness"] > 1.0  # a 2-step model is far from the photos' colour: not a trivial 0
    assert got["fid"] is None and got["kid"] is None and got["lpips"] is None


@pytest.mark.slow
def test_two_processes_give_the_numbers_of_one(setup, tmp_path):
    """About 2 minutes on 2 CPU cores: one `p2p eval` and one under torchrun (2 gloo processes),
    each loading and running the FID Inception and LPIPS networks."""
    # KID on random subsets of 4 of the 6 images: which images a subset holds depends on the
    # order of the gathered features, so this also checks they are put back in image order
    kid = ("--kid-subset-size", "4", "--kid-subsets", "20")
    one = _eval(setup, tmp_path / "one.json", *kid)
    proc = torchrun("-m", "p2p", "eval", setup["ckpt"], "--data", setup["src"], "--json", tmp_path / "two.json",
                    "--fid-weights", setup["fid"], "--lpips-weights", setup["alex"], *kid, timeout=600)
    two = json.loads((tmp_path / "two.json").read_text())
    assert json.loads((tmp_path / "two.meta.json").read_text())["processes"] == 2, proc.stdout
    assert two["count"] == one["count"] == len(SIZES)  # 3 images each, in batches of their sizes
    for k in ("psnr", "ssim", "l1", "colorfulness", "delta_colorfulness", "lpips"):
        assert two[k] == pytest.approx(one[k], rel=1e-6, abs=1e-9), k
    # features in image order: the same FID/KID to float precision of the features themselves
    assert two["fid"] == pytest.approx(one["fid"], rel=1e-5) and two["kid"] == pytest.approx(one["kid"], rel=1e-4)


def test_bad_weights_files_are_one_line_errors(setup, tmp_path):
    """Six `p2p eval` processes (about a minute on a loaded CPU: each imports torch)."""
    (tmp_path / "junk.pth").write_bytes(b"not a checkpoint")
    for flags, needle in ((["--fid-weights", tmp_path / "missing.pth"], "no such file"),
                          (["--fid-weights", tmp_path / "junk.pth"], "not a readable PyTorch weights file"),
                          (["--fid-weights", setup["alex"]], "not the FID Inception-v3 weights"),
                          (["--lpips-weights", setup["fid"]], "LPIPS backbone"),
                          (["--fid-ref", tmp_path / "ref.txt", "--fid-weights", setup["fid"]], "expected a .npz"),
                          (["--fid-ref", tmp_path / "ref.npz"], "--fid-ref needs FID weights")):
        proc = run_p2p("eval", setup["ckpt"], "--data", setup["src"], *flags, check=False, P2P_FID_WEIGHTS="")
        assert proc.returncode == 2 and needle in proc.stderr and "Traceback" not in proc.stderr, (flags, proc.stderr)
        assert len(proc.stderr.strip().splitlines()) == 1, proc.stderr


@pytest.mark.slow
def test_training_logs_fid_when_weights_are_configured(setup, tmp_path):
    """Validation with FID weights from the environment: fid and kid in val.jsonl at every
    validation, the targets' statistics written once to eval.fid_ref and reused."""
    from p2p.fid import FidReference

    ref = tmp_path / "val-ref.npz"
    run_p2p("train", f"run.out_dir={tmp_path}", "run.name=f", *TINY, "train.max_steps=4", "train.eval_every=2",
            f"data.val_source={setup['src']}", "data.val_fraction=0", f"eval.fid_ref={ref}", "eval.kid_subset_size=2",
            timeout=600, P2P_FID_WEIGHTS=str(setup["fid"]))
    val = [json.loads(x) for x in (tmp_path / "f" / "val.jsonl").read_text().splitlines()]
    assert [r["step"] for r in val] == [2, 4]
    assert all(r["fid"] > 0 and np.isfinite(r["kid"]) and "lpips" not in r for r in val), val
    assert val[0]["fid"] != val[1]["fid"]  # the model changed between the validations; the targets did not
    stats = FidReference.load(ref)
    assert stats.features.shape == (val[0]["count"], 2048)


def test_weights_come_from_the_flag_then_the_config_then_the_environment(monkeypatch):
    from p2p.evaluation import FID_WEIGHTS_ENV, LPIPS_WEIGHTS_ENV, weights_path

    for env in (FID_WEIGHTS_ENV, LPIPS_WEIGHTS_ENV):
        monkeypatch.setenv(env, "env.pth")
        assert weights_path("flag.pth", "cfg.pth", env) == "flag.pth"
        assert weights_path(None, "cfg.pth", env) == "cfg.pth"
        assert weights_path(None, "", env) == "env.pth"
        monkeypatch.delenv(env)
        assert weights_path(None, "", env) == ""  # nothing configured: the metric is not computed
