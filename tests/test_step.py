"""Losses and the training step."""

import pytest
import torch

from p2p.config import LossConfig, load_config
from p2p.losses import gan_loss, gradient_penalty
from p2p.models import DiscriminatorArch, GeneratorArch, build_discriminator, build_generator, init_weights
from p2p.train.step import Nets, Precision, train_step
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
