"""Losses and the training step."""

import pytest
import torch

from p2p.config import LossConfig, load_config
from p2p.losses import gan_loss, gradient_penalty
from p2p.models import DiscriminatorArch, GeneratorArch, build_discriminator, build_generator, init_weights
from p2p.precision import Precision
from p2p.train.step import Nets, train_step
from p2p.train.wrap import make_optimizer


def test_vanilla_is_bce_with_logits():
    pred = torch.tensor([[-3.0, 0.0, 2.0]])
    expect = -torch.log(torch.sigmoid(pred)).mean()
    torch.testing.assert_close(gan_loss(pred, True, "vanilla"), expect)
    torch.testing.assert_close(gan_loss(pred, False, "vanilla"), -torch.log(1 - torch.sigmoid(pred)).mean())
    # stable where sigmoid + BCE would overflow
    assert torch.isfinite(gan_loss(torch.tensor([200.0]), False, "vanilla"))


def test_lsgan_and_wgangp():
    pred = torch.tensor([0.5, 1.5])
    torch.testing.assert_close(gan_loss(pred, True, "lsgan"), ((pred - 1) ** 2).mean())
    torch.testing.assert_close(gan_loss(pred, False, "lsgan"), (pred ** 2).mean())
    assert gan_loss(pred, True, "wgangp") == -1.0 and gan_loss(pred, False, "wgangp") == 1.0


def test_gradient_penalty_of_a_linear_critic():
    w = torch.randn(1, 3, 4, 4)

    def critic(x):
        return (x * w).sum(dim=(1, 2, 3))

    real, fake = torch.randn(5, 3, 4, 4), torch.randn(5, 3, 4, 4)
    expected = (w.norm() - 1) ** 2 * 10
    torch.testing.assert_close(gradient_penalty(critic, real, fake, 10.0), expected, rtol=1e-4, atol=1e-4)


def photo_batch():
    """Two real 32x32 crops as colorization input/target: learnable, unlike noise."""
    from p2p.tasks import build_task
    from p2p.config import TaskConfig
    from helpers.image_folders import photo_batch as photos

    return build_task(TaskConfig(name="colorize")).prepare(photos(), 32, None)


def make_nets(norm="batch", precision="fp32", skip=False):
    torch.manual_seed(0)
    g = init_weights(build_generator(GeneratorArch(1, 2, 5, 8, norm, dropout=False)))
    d = init_weights(build_discriminator(DiscriminatorArch(3, 8, 3, norm)))
    cfg = load_config()
    p = Precision(precision, torch.device("cpu"))
    dev = torch.device("cpu")
    return Nets(g, d, d, make_optimizer(g.parameters(), cfg, dev), make_optimizer(d.parameters(), cfg, dev),
                p.make_scaler(skip), p.make_scaler(skip)), p


@pytest.mark.parametrize("mode", ["vanilla", "lsgan", "wgangp"])
def test_step_updates_both_networks_and_returns_tensors(mode):
    nets, p = make_nets()
    before_g = [q.clone() for q in nets.G.parameters()]
    before_d = [q.clone() for q in nets.D.parameters()]
    x, y = torch.rand(4, 1, 32, 32) * 2 - 1, torch.rand(4, 2, 32, 32) * 2 - 1
    out = train_step(nets, x, y, LossConfig(gan_mode=mode), p)
    assert {"G_GAN", "G_L1", "D_real", "D_fake"} <= out.keys()
    assert all(isinstance(v, torch.Tensor) and v.dim() == 0 and not v.requires_grad for v in out.values())
    assert ("D_gp" in out) == (mode == "wgangp")
    assert any(not torch.equal(a, b) for a, b in zip(before_g, nets.G.parameters()))
    assert any(not torch.equal(a, b) for a, b in zip(before_d, nets.D.parameters()))


@pytest.mark.parametrize("mode", ["vanilla", "wgangp"])
def test_generator_update_leaves_discriminator_gradients_alone(mode):
    nets, p = make_nets()
    x, y = torch.rand(2, 1, 32, 32) * 2 - 1, torch.rand(2, 2, 32, 32) * 2 - 1
    after_d_update = {}

    def snapshot(opt, args, kwargs):  # right after D's own optimizer step
        after_d_update.update({n: q.grad.clone() for n, q in nets.D.named_parameters()})

    nets.opt_d.register_step_post_hook(snapshot)
    train_step(nets, x, y, LossConfig(gan_mode=mode), p)
    # the G pass ran against a frozen D: it added nothing to D's gradients and froze it again
    assert after_d_update and all(q.grad is not None for q in nets.D.parameters())
    for n, q in nets.D.named_parameters():
        assert torch.equal(q.grad, after_d_update[n]), f"the G update changed D's gradient of {n}"
        assert not q.requires_grad


def test_overfitting_one_batch_lowers_l1():
    nets, p = make_nets()
    x, y = photo_batch()
    first = train_step(nets, x, y, LossConfig(), p)["G_L1"]
    for _ in range(40):
        last = train_step(nets, x, y, LossConfig(), p)["G_L1"]
    assert last < 0.5 * first


def test_bf16_autocast_step_on_cpu():
    nets, p = make_nets(precision="bf16")
    out = train_step(nets, torch.rand(2, 1, 32, 32), torch.rand(2, 2, 32, 32), LossConfig(), p)
    assert all(v.dtype == torch.float32 and torch.isfinite(v) for v in out.values())


def test_skip_mode_skips_nonfinite_updates():
    nets, p = make_nets(skip=True)
    before_g = [q.clone() for q in nets.G.parameters()]
    before_d = [q.clone() for q in nets.D.parameters()]
    x = torch.full((2, 1, 32, 32), float("nan"))
    out = train_step(nets, x, torch.rand(2, 2, 32, 32), LossConfig(), p)
    assert not torch.isfinite(out["G_L1"])
    assert all(torch.equal(a, b) for a, b in zip(before_g, nets.G.parameters()))
    assert all(torch.equal(a, b) for a, b in zip(before_d, nets.D.parameters()))
    x, y = photo_batch()
    train_step(nets, x, y, LossConfig(), p)  # and the next finite step trains normally
    assert any(not torch.equal(a, b) for a, b in zip(before_g, nets.G.parameters()))


# ------------------------------------------------------------------------------ exact-official and the new terms


def test_plain_adam_step_equals_the_official_step_bit_for_bit():
    """optim.impl=plain: p2p's step is the official optimize_parameters() with the official
    torch.optim.Adam, bit for bit on CPU, over several steps (batch norm, dropout on)."""
    from p2p.models import load_discriminator, load_generator
    from p2p.train.nets import build_nets

    from helpers.official_layout import OfficialNLayerD, OfficialUnet, official_optimize_parameters, randomize

    netG = randomize(OfficialUnet(1, 2, 5, 8, "batch", dropout=True), seed=5).train()
    netD = randomize(OfficialNLayerD(3, 8, 3, "batch"), seed=6).train()
    G, D = load_generator(netG.state_dict()).train(), load_discriminator(netD.state_dict()).train()
    cfg = load_config(None, ["optim.impl=plain"])
    nets = build_nets(G, D, D, cfg, torch.device("cpu"), Precision("fp32", torch.device("cpu")))
    opt_g = torch.optim.Adam(netG.parameters(), lr=0.0002, betas=(0.5, 0.999))
    opt_d = torch.optim.Adam(netD.parameters(), lr=0.0002, betas=(0.5, 0.999))
    x, y = photo_batch()
    for step in range(4):
        torch.manual_seed(100 + step)  # the same dropout masks in both
        ours = train_step(nets, x, y, LossConfig(), Precision("fp32", torch.device("cpu")))
        torch.manual_seed(100 + step)
        theirs = official_optimize_parameters(netG, netD, opt_g, opt_d, x, y, lambda_L1=100.0)
        for k, v in theirs.items():
            assert torch.equal(ours[k], v), (step, k, ours[k].item(), v.item())
    from p2p.models.official import generator_to_official

    for k, v in generator_to_official(G.state_dict()).items():
        assert torch.equal(v, netG.state_dict()[k]), k
    for k, v in D.state_dict().items():
        assert torch.equal(v, netD.state_dict()[k]), k


def build_with(overrides, vgg_path=None):
    from p2p.tasks import build_task
    from p2p.train.nets import build_nets, build_networks

    extra = [f"loss.vgg_weights={vgg_path}"] if vgg_path else []
    cfg = load_config(None, ["data.image_size=32", "data.load_size=40", "model.num_downs=5", "model.ngf=8",
                             "model.ndf=8", "model.dropout=false", *overrides, *extra])
    task = build_task(cfg.task)
    torch.manual_seed(0)
    G, D = build_networks(cfg, task)
    return build_nets(G, D, D, cfg, torch.device("cpu"), Precision("fp32", torch.device("cpu")), task=task), cfg


@pytest.fixture(scope="module")
def vgg_path(tmp_path_factory):
    import torchvision

    torch.manual_seed(0)
    state = {k: v for k, v in torchvision.models.vgg19(weights=None).state_dict().items() if k.startswith("features.")}
    path = tmp_path_factory.mktemp("vgg") / "vgg19.pth"
    torch.save(state, path)
    return path


EVERYTHING = ["model.num_d=2", "model.n_layers_d=2", "loss.lambda_feat=10", "loss.gan_mode=hinge",
              "loss.lambda_vgg=1", "train.ema_decay=0.9"]


@pytest.mark.parametrize("generator", ["unet", "resnet"])
def test_overfitting_one_batch_lowers_l1_with_every_term_on(generator, vgg_path):
    nets, cfg = build_with([f"model.generator={generator}", "model.n_blocks=2", *EVERYTHING], vgg_path)
    assert nets.perceptual is not None and nets.ema is not None and len(nets.D.scales) == 2
    x, y = photo_batch()
    p = Precision("fp32", torch.device("cpu"))
    first = train_step(nets, x, y, cfg.loss, p)
    assert {"G_GAN", "G_L1", "D_real", "D_fake", "G_feat", "G_VGG"} <= first.keys()
    assert all(torch.isfinite(v) and not v.requires_grad for v in first.values())
    for _ in range(40):
        last = train_step(nets, x, y, cfg.loss, p)
    assert last["G_L1"] < 0.5 * first["G_L1"]
    assert last["G_feat"] > 0 and last["G_VGG"] > 0


def test_feature_matching_compares_with_the_updated_discriminator():
    nets, cfg = build_with(["loss.lambda_feat=10", "loss.lambda_l1=0"])
    x, y = photo_batch()
    seen = []
    real = nets.D_frozen.forward

    def watched(pair, features=False):
        seen.append((features, torch.is_grad_enabled(), [q.clone() for q in nets.D.parameters()][0]))
        return real(pair, features)

    nets.D_frozen.forward = watched
    out = train_step(nets, x, y, cfg.loss, Precision("fp32", torch.device("cpu")))
    # D update: fake and real logits; G update: fake features with gradients, real ones without,
    # both from the discriminator after its own step
    assert [(f, g) for f, g, _ in seen] == [(False, True), (False, True), (True, True), (True, False)]
    assert not torch.equal(seen[0][2], seen[2][2]) and torch.equal(seen[2][2], seen[3][2])
    assert out["G_feat"] > 0


def test_ema_is_updated_after_the_g_step():
    nets, cfg = build_with(["train.ema_decay=0.75"])
    before = [q.clone() for q in nets.ema.module.parameters()]
    assert all(torch.equal(a, b) for a, b in zip(before, nets.G.parameters()))  # starts as G
    x, y = photo_batch()
    train_step(nets, x, y, cfg.loss, Precision("fp32", torch.device("cpu")))
    for old, new, ema in zip(before, nets.G.parameters(), nets.ema.module.parameters()):
        torch.testing.assert_close(ema, 0.75 * old + 0.25 * new.detach(), rtol=1e-6, atol=1e-6)
        assert not ema.requires_grad
    # BatchNorm statistics are copied, not averaged
    for (name, b), ema_b in zip(nets.G.named_buffers(), nets.ema.module.buffers()):
        assert torch.equal(b, ema_b), name


def test_optim_impl_picks_the_adam_kernel():
    from p2p.train.wrap import make_optimizer

    params = [torch.nn.Parameter(torch.zeros(3))]
    kinds = {}
    for impl in ("fused", "foreach", "plain"):
        d = make_optimizer(params, load_config(None, [f"optim.impl={impl}"]), torch.device("cpu")).defaults
        kinds[impl] = (d.get("fused"), d.get("foreach"))
    assert kinds["fused"][0] or kinds["fused"][1]  # fused where this PyTorch has it, else foreach
    assert kinds["foreach"] == (None, True) or kinds["foreach"][1] is True
    assert kinds["plain"] == (None, None)  # nothing chosen: torch.optim.Adam's own default, as the official code
