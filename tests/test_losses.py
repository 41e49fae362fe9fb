"""The losses that pix2pixHD / SPADE add to pix2pix, each on a case small enough to check by hand
(or against the reference package): hinge, multi-scale averaging, feature matching, the VGG19
perceptual loss with its weights file, and the differentiable Lab -> RGB it needs."""

import pytest
import torch
import torchvision

from p2p.errors import UsageError
from p2p.losses import feature_matching, gan_loss, gan_loss_over_scales, gradient_penalty
from p2p.perceptual import LAYER_WEIGHTS, build_perceptual_loss, read_vgg19_weights


def test_hinge_by_hand():
    pred = torch.tensor([-2.0, 0.5, 3.0])
    # D on real: mean(max(0, 1 - D)) = (3 + 0.5 + 0) / 3; on fake: mean(max(0, 1 + D)) = (0 + 1.5 + 4) / 3
    assert gan_loss(pred, True, "hinge").item() == pytest.approx(3.5 / 3)
    assert gan_loss(pred, False, "hinge").item() == pytest.approx(5.5 / 3)
    # G: -mean(D), whatever it is told the target is
    assert gan_loss(pred, True, "hinge", for_discriminator=False).item() == pytest.approx(-0.5)
    # the other modes do not tell the players apart
    assert gan_loss(pred, True, "lsgan", for_discriminator=False) == gan_loss(pred, True, "lsgan")


def test_gan_loss_is_averaged_over_scales():
    full, half = torch.tensor([0.0, 2.0]), torch.tensor([4.0])
    # lsgan to 1: full scale mean((0-1)^2, (2-1)^2) = 1, half scale (4-1)^2 = 9 -> (1 + 9) / 2
    assert gan_loss_over_scales([full, half], True, "lsgan").item() == pytest.approx(5.0)
    assert torch.equal(gan_loss_over_scales([full], True, "lsgan"), gan_loss(full, True, "lsgan"))


def test_feature_matching_by_hand():
    # 2 scales, each with 2 feature maps and the logits (which do not count)
    fake = [[torch.full((1, 2, 2, 2), 1.0), torch.full((1, 2, 1, 1), 2.0), torch.full((1, 1, 1, 1), 99.0)],
            [torch.full((1, 2, 1, 1), 3.0), torch.full((1, 2, 1, 1), 0.0), torch.full((1, 1, 1, 1), -99.0)]]
    real = [[torch.zeros(1, 2, 2, 2), torch.zeros(1, 2, 1, 1), torch.zeros(1, 1, 1, 1)],
            [torch.ones(1, 2, 1, 1), torch.ones(1, 2, 1, 1), torch.zeros(1, 1, 1, 1)]]
    for t in (t for scale in fake for t in scale):
        t.requires_grad_(True)
    for t in (t for scale in real for t in scale):
        t.requires_grad_(True)
    # per layer weight 4 / 2 layers = 2, per scale 1 / 2: scale 0 L1s 1 and 2, scale 1 L1s 2 and 1
    expected = 10.0 * 0.5 * 2 * ((1 + 2) + (2 + 1))
    got = feature_matching(fake, real, 10.0)
    assert got.item() == pytest.approx(expected)
    got.backward()
    assert fake[0][0].grad is not None and real[0][0].grad is None  # real activations are constants
    assert fake[0][2].grad is None  # the logits are not matched


def test_gradient_penalty_per_scale_of_a_multiscale_critic():
    w1, w2 = torch.randn(1, 3, 4, 4), torch.randn(1, 3, 4, 4)

    def critic(x):  # two linear "scales" with known gradient norms |w1| and 2|w2|
        return [(x * w1).sum(dim=(1, 2, 3)), 2 * (x * w2).sum(dim=(1, 2, 3))]

    real, fake = torch.randn(5, 3, 4, 4), torch.randn(5, 3, 4, 4)
    expected = ((w1.norm() - 1) ** 2 * 10 + (2 * w2.norm() - 1) ** 2 * 10) / 2
    torch.testing.assert_close(gradient_penalty(critic, real, fake, 10.0), expected, rtol=1e-4, atol=1e-4)


# ------------------------------------------------------------------------------ VGG19


@pytest.fixture(scope="module")
def vgg_file(tmp_path_factory):
    """Random weights in torchvision's vgg19 state-dict format (features only: the classifier is
    400 MB and ignored)."""
    torch.manual_seed(0)
    net = torchvision.models.vgg19(weights=None)
    path = tmp_path_factory.mktemp("vgg") / "vgg19.pth"
    torch.save({k: v for k, v in net.state_dict().items() if k.startswith("features.")}, path)
    return path, net.features.eval()


def test_perceptual_loss_equals_torchvision_vgg19_features(vgg_file):
    path, reference = vgg_file
    loss = build_perceptual_loss(str(path), lambda inp, out: (out + 1) / 2, 10.0, torch.device("cpu"))
    g = torch.Generator().manual_seed(1)
    fake, target = torch.rand(2, 3, 32, 32, generator=g) * 2 - 1, torch.rand(2, 3, 32, 32, generator=g) * 2 - 1
    got = loss(None, fake, target)

    mean, std = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1), torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)

    def relus(x):  # torchvision's own network, read off after relu1_1 .. relu5_1 (indices 1, 6, 11, 20, 29)
        x, out = (x - mean) / std, []
        for i, layer in enumerate(reference):
            x = layer(x.clone())
            if i in (1, 6, 11, 20, 29):
                out.append(x)
            if i == 29:
                return out

    with torch.no_grad():
        a, b = relus((fake + 1) / 2), relus((target + 1) / 2)
    expected = 10.0 * sum(w * (x - y).abs().mean() for w, x, y in zip((1 / 32, 1 / 16, 1 / 8, 1 / 4, 1.0), a, b))
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-6)
    assert LAYER_WEIGHTS == (1 / 32, 1 / 16, 1 / 8, 1 / 4, 1.0)
    assert loss(None, target, target).item() == 0.0
    # the network is frozen: gradients reach the image, none reach the weights
    fake.requires_grad_(True)
    loss(None, fake, target).backward()
    assert fake.grad.abs().sum() > 0 and all(p.grad is None for p in loss.parameters())
    loss.train()
    assert not loss.training


def test_vgg_weights_file_errors_are_one_line(tmp_path, vgg_file):
    cases = [(tmp_path / "missing.pth", "no such file")]
    torch.save({"features.0.weight": torch.zeros(64, 3, 3, 3)}, tmp_path / "partial.pth")
    cases.append((tmp_path / "partial.pth", "no features.0.bias"))
    bn = {k: v for k, v in torchvision.models.vgg19_bn(weights=None).state_dict().items() if k.startswith("features.")}
    torch.save(bn, tmp_path / "bn.pth")
    cases.append((tmp_path / "bn.pth", "vgg19_bn"))
    vgg16 = {k: v for k, v in torchvision.models.vgg16(weights=None).state_dict().items() if k.startswith("features.")}
    torch.save(vgg16, tmp_path / "vgg16.pth")  # a pool where vgg19 has conv3_4
    cases.append((tmp_path / "vgg16.pth", "no features.16.weight"))
    (tmp_path / "text.pth").write_text("not a checkpoint")
    cases.append((tmp_path / "text.pth", "not a state dict torch.load can read"))
    for path, needle in cases:
        with pytest.raises(UsageError, match="loss.vgg_weights") as e:
            read_vgg19_weights(str(path))
        assert needle in str(e.value) and "\n" not in str(e.value), str(e.value)
    # the legacy (pre-1.6) file format, which torchvision's own download uses, is read too
    legacy = tmp_path / "legacy.pth"
    torch.save(torch.load(vgg_file[0]), legacy, _use_new_zipfile_serialization=False)
    assert len(read_vgg19_weights(str(legacy))) == 26


@pytest.mark.slow
def test_train_with_a_bad_vgg_file_stops_before_training(tmp_path):
    from helpers.runs import TINY, run_p2p

    proc = run_p2p("train", f"run.out_dir={tmp_path}", "run.name=v", *TINY, "loss.lambda_vgg=10",
                   f"loss.vgg_weights={tmp_path / 'nope.pth'}", check=False)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert proc.stderr.strip().count("\n") == 0 and "loss.vgg_weights" in proc.stderr
    assert not (tmp_path / "v" / "metrics.jsonl").exists() and not (tmp_path / "v" / "checkpoints").exists()


def test_colourised_output_as_rgb_with_gradients():
    from p2p import color
    from p2p.config import TaskConfig
    from p2p.tasks import build_task

    task = build_task(TaskConfig(name="colorize"))
    g = torch.Generator().manual_seed(0)
    inp = torch.rand(2, 1, 16, 16, generator=g) * 2 - 1
    ab = ((torch.rand(2, 2, 16, 16, generator=g) * 2 - 1) * 1.2).requires_grad_(True)  # out of gamut too
    rgb = task.output_rgb_autograd(inp, ab)
    torch.testing.assert_close(rgb, task.output_rgb(inp, ab.detach()), rtol=0, atol=2e-5)
    rgb.sum().backward()
    assert torch.isfinite(ab.grad).all() and ab.grad.abs().sum() > 0
    lab = color.rgb_to_lab(torch.rand(1, 3, 8, 8, generator=g))
    torch.testing.assert_close(color.lab_to_rgb_autograd(lab), color.lab_to_rgb(lab), rtol=0, atol=2e-5)


@pytest.mark.slow
def test_train_with_the_vgg_loss_logs_it_and_its_checkpoint_predicts(tmp_path, vgg_file):
    """`p2p train` with loss.lambda_vgg end to end: the term is in the step (logged), the
    checkpoint records it, and `p2p predict` runs that checkpoint (it needs no VGG file)."""
    import json

    from PIL import Image

    from helpers.runs import TINY, load_ckpt, run_p2p
    from p2p.data.folder import embedded_photo

    run_p2p("train", f"run.out_dir={tmp_path}", "run.name=v", *TINY, "train.max_steps=2", "train.log_every=1",
            "loss.lambda_vgg=10", f"loss.vgg_weights={vgg_file[0]}")
    rows = [json.loads(x) for x in (tmp_path / "v" / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [1, 2] and all(r["G_VGG"] > 0 for r in rows)
    ckpt = tmp_path / "v" / "checkpoints" / "last.pt"
    assert load_ckpt(ckpt)["config"]["loss"]["lambda_vgg"] == 10
    src = tmp_path / "in"
    src.mkdir()
    Image.fromarray(embedded_photo("astronaut")[:48, :40]).save(src / "a.png")
    vgg_file[0].rename(tmp_path / "moved.pth")  # predict must not need the training-time VGG file
    try:
        run_p2p("predict", ckpt, src, "--out", tmp_path / "out")
    finally:
        (tmp_path / "moved.pth").rename(vgg_file[0])
    assert Image.open(tmp_path / "out" / "a.png").size == (40, 48)
