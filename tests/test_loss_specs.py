"""Every loss term registered in p2p.specs.losses through its contract: its weight key in the
config with its default, its forward against a hand computation on tiny tensors, a float32
scalar that carries gradients to what it trains, a NaN in it stopping training by its name, and
a step with every term on returning it. A new term is tested by registering it (and writing its
hand computation in HAND below)."""

from __future__ import annotations

import dataclasses
import math
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from p2p.config import LossConfig, TaskConfig, load_config, with_values
from p2p.errors import TrainingError
from p2p.models import DiscriminatorArch, build_discriminator, init_weights
from p2p.specs import load
from p2p.specs.losses import LOSSES, LossSpec
from p2p.tasks import build_task
from p2p.precision import Precision
from p2p.train.step import Nets, StepView

SIDE = 16  # VGG19 pools four times before relu5_1: 1 px left


@pytest.fixture(scope="module")
def vgg_file(tmp_path_factory):
    from p2p.perceptual import vgg19_features

    torch.manual_seed(3)
    path = tmp_path_factory.mktemp("vgg") / "vgg19.pth"
    torch.save({f"features.{k}": v for k, v in vgg19_features().state_dict().items()}, path)
    return path


def linear_critic(weights: torch.Tensor):
    """A critic whose input gradient is `weights` everywhere: its gradient norm is ||weights||."""
    def critic(x, features=False):
        return (x * weights).sum(dim=(1, 2, 3))
    return critic


def make_view(loss: LossConfig, vgg_file: Path, features: bool = False) -> StepView:
    """One step's view on a 2-image paired batch, its discriminator outputs from a real 2-scale
    PatchGAN, G_VGG's module built by its spec."""
    torch.manual_seed(0)
    task = build_task(TaskConfig(name="paired"))
    inp, target = torch.rand(2, 3, SIDE, SIDE) * 2 - 1, torch.rand(2, 3, SIDE, SIDE) * 2 - 1
    fake = torch.tanh(torch.randn(2, 3, SIDE, SIDE)).requires_grad_(True)
    D = init_weights(build_discriminator(DiscriminatorArch(6, 4, 1, "none", 2)))
    modules = {"G_VGG": load(LOSSES["G_VGG"].module)(dataclasses.replace(loss, vgg_weights=str(vgg_file)), task,
                                                      torch.device("cpu"))}
    nets = Nets(None, D, D, None, None, None, None, loss_modules=modules)
    real_pair, fake_pair = torch.cat([inp, target], 1), torch.cat([inp, fake], 1)
    view = StepView(nets, loss, Precision("fp32", torch.device("cpu")), inp, target, fake, real_pair,
                    fake_pair.detach(), pred_fake=D(fake_pair.detach()), pred_real=D(real_pair))
    view.pred, view.d_features = D(fake_pair, features=features), features
    return view


# ------------------------------------------------------------------------------ by hand


def _bce(logits: torch.Tensor, real: bool) -> torch.Tensor:
    p = torch.sigmoid(logits.double())
    return -(torch.log(p) if real else torch.log(1 - p)).mean()


def _scales(values: list) -> torch.Tensor:
    return sum(values) / len(values)


def hand_g_gan(view, weight):
    return _scales([_bce(p[-1] if view.d_features else p, True) for p in view.pred])


def hand_l1(view, weight):
    return (view.fake - view.target).double().abs().mean() * weight


def hand_d_real(view, weight):
    return _scales([_bce(p, True) for p in view.pred_real])


def hand_d_fake(view, weight):
    return _scales([_bce(p, False) for p in view.pred_fake])


def hand_d_gp(view, weight):
    w = torch.randn(1, 6, SIDE, SIDE)
    view.nets.D = linear_critic(w)
    return (w.double().norm() - 1) ** 2 * weight


def hand_g_feat(view, weight):
    real = view.nets.D(view.real_pair, features=True)
    total = 0.0
    for fake_scale, real_scale in zip(view.pred, real):
        layers = len(fake_scale) - 1
        for f, r in zip(fake_scale[:-1], real_scale[:-1]):
            total = total + (f - r).detach().double().abs().mean() * 4 / layers / len(view.pred)
    return total * weight


def hand_g_vgg(view, weight):
    from p2p.perceptual import IMAGENET_MEAN, IMAGENET_STD, LAYER_WEIGHTS, SLICE_ENDS, vgg19_features

    module = view.nets.loss_modules["G_VGG"]
    vgg = vgg19_features()
    vgg.load_state_dict({k[len("features."):]: v for k, v in torch.load(_VGG_FILE[0]).items()})
    mean, std = torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1), torch.tensor(IMAGENET_STD).view(1, 3, 1, 1)

    def relus(image):
        x, out = (module.to_rgb(view.inp, image) - mean) / std, []
        for i, layer in enumerate(vgg):
            x = layer(x)
            if i + 1 in SLICE_ENDS:
                out.append(x)
        return out

    return sum(w * (f - r).double().abs().mean() for w, f, r in
               zip(LAYER_WEIGHTS, relus(view.fake), relus(view.target))) * view.loss.lambda_vgg


def hand_g_charbonnier(view, weight):
    d = (view.fake - view.target).double()
    return (d * d + 1e-6).sqrt().mean() * weight


HAND = {"G_GAN": hand_g_gan, "G_L1": hand_l1, "D_real": hand_d_real, "D_fake": hand_d_fake, "D_gp": hand_d_gp,
        "G_feat": hand_g_feat, "G_VGG": hand_g_vgg, "G_charbonnier": hand_g_charbonnier}
_VGG_FILE: list[Path] = []  # the module's weights file, for G_VGG's hand computation


def config_on(spec: LossSpec, weight: float = 3.0) -> LossConfig:
    """The loss config with `spec` on at `weight` (its GAN mode where it needs one)."""
    values = {f"loss.{spec.field}": weight} if spec.weight_key else {}
    if spec.gan_modes:
        values["loss.gan_mode"] = spec.gan_modes[0]
    if spec.name == "G_VGG":
        values["loss.vgg_weights"] = str(_VGG_FILE[0])
    return with_values(load_config(), values).loss


# ------------------------------------------------------------------------------ the contract


@pytest.mark.parametrize("name", LOSSES.names())
def test_every_term_has_its_weight_key_in_the_config_with_its_default(name):
    spec = LOSSES[name]
    defaults = LossConfig()
    if spec.weight_key:
        assert getattr(defaults, spec.field) == spec.default and isinstance(spec.default, float)
        assert spec.help and spec.weight_key.startswith("loss.")
        off = dataclasses.replace(defaults, **{spec.field: 0.0, "gan_mode": spec.gan_modes[0] if spec.gan_modes else
                                               defaults.gan_mode})
        assert spec.on(off) == spec.always
    assert spec.network in ("G", "D") and callable(load(spec.forward))
    assert spec.checked  # every term is checked for finiteness


@pytest.mark.parametrize("name", LOSSES.names())
def test_every_term_equals_its_hand_computation(name, vgg_file):
    _VGG_FILE[:] = [vgg_file]
    spec = LOSSES[name]
    assert name in HAND, f"loss term {name} is registered: add its hand computation to HAND"
    loss = config_on(spec)  # vanilla GAN terms: the other modes' formulas are tests/test_step.py's
    view = make_view(loss, vgg_file, features=spec.d_features)
    expected = HAND[name](view, spec.weight(loss))  # before the forward: D_gp's swaps the critic in
    got = load(spec.forward)(view, spec.weight(loss))
    assert got.dtype == torch.float32 and got.dim() == 0 and torch.isfinite(got)
    assert got.detach().item() == pytest.approx(float(expected), rel=1e-5, abs=1e-6), name
    if spec.network == "G":  # a generator term trains the generator
        (grad,) = torch.autograd.grad(got, view.fake, allow_unused=True)
        assert grad is not None and grad.abs().sum() > 0, name


@pytest.mark.parametrize("name", LOSSES.names())
def test_a_nan_in_any_term_stops_training_naming_it(name, tmp_path):
    from p2p.train.loop import check_finite

    run = SimpleNamespace(cfg=load_config(), state=SimpleNamespace(step=7),
                          ckpts=SimpleNamespace(last=tmp_path / "last.pt", last_step=None))
    metrics = {spec.name: 0.5 for spec in LOSSES}
    check_finite(metrics, run)  # all finite: goes on
    metrics[name] = math.nan
    with pytest.raises(TrainingError, match=rf"non-finite loss {name}=nan in the steps up to 7"):
        check_finite(metrics, run)
    skip = SimpleNamespace(**{**vars(run), "cfg": with_values(run.cfg, {"train.on_nonfinite": "skip"})})
    check_finite(metrics, skip)  # skip mode dropped that update already


def test_a_step_with_every_term_on_returns_every_term(vgg_file):
    """The step runs the table: every registered term on, each comes back finite."""
    from p2p.train.nets import build_nets, build_networks
    from p2p.train.step import train_step

    values = [f"{spec.weight_key}=1" for spec in LOSSES if spec.weight_key]
    cfg = load_config(None, ["data.image_size=16", "data.load_size=16", "model.num_downs=4", "model.ngf=4",
                             "model.ndf=4", "model.n_layers_d=1", "task.name=paired", "loss.gan_mode=wgangp",
                             f"loss.vgg_weights={vgg_file}", *values])
    task = build_task(cfg.task)
    torch.manual_seed(0)
    G, D = build_networks(cfg, task)
    p = Precision("fp32", torch.device("cpu"))
    nets = build_nets(G, D, D, cfg, torch.device("cpu"), p, task=task)
    out = train_step(nets, torch.rand(2, 3, 16, 16) * 2 - 1, torch.rand(2, 3, 16, 16) * 2 - 1, cfg.loss, p)
    assert set(out) == set(LOSSES.names())
    assert all(torch.isfinite(v) and not v.requires_grad for v in out.values())


def test_terms_off_by_default_are_not_computed():
    from p2p.train.step import active_terms

    g, d = active_terms(LossConfig())
    assert [s.name for s, _, _ in g] == ["G_GAN", "G_L1"] and [s.name for s, _, _ in d] == ["D_real", "D_fake"]
    g, _ = active_terms(LossConfig(lambda_feat=2.0))
    assert [(s.name, w) for s, _, w in g][-1] == ("G_feat", 2.0)


def test_the_loss_keys_and_defaults_stay_as_they_were(tmp_path):
    """configs/*.yaml and saved configs keep loading: the loss section's keys, defaults, order."""
    fields = {f.name: f.default for f in dataclasses.fields(LossConfig)}
    assert list(fields)[:5] == ["gan_mode", "lambda_l1", "lambda_gp", "lambda_feat", "lambda_vgg"]
    assert (fields["lambda_l1"], fields["lambda_gp"], fields["lambda_feat"], fields["lambda_vgg"]) == \
        (100.0, 10.0, 0.0, 0.0)
    saved = tmp_path / "config.yaml"
    saved.write_text(load_config(None, ["loss.lambda_feat=10", "loss.gan_mode=hinge"]).to_yaml())
    assert load_config(saved).loss.lambda_feat == 10.0
    for preset in Path("configs").glob("*.yaml"):
        load_config(preset)


def test_charbonnier_by_hand_numbers():
    """sqrt(d^2 + 1e-6) for d = 0 and d = 1: 1e-3 and sqrt(1 + 1e-6), averaged, times the weight."""
    from p2p.losses.charbonnier import charbonnier

    view = SimpleNamespace(fake=torch.tensor([[0.0, 0.5]]), target=torch.tensor([[0.0, -0.5]]))
    assert charbonnier(view, 4.0).item() == pytest.approx(4.0 * (1e-3 + math.sqrt(1 + 1e-6)) / 2, rel=1e-6)


def test_a_term_adds_its_flops_to_the_step():
    from p2p.models import GeneratorArch
    from p2p.train.flops import step_flops_per_image

    g, d = GeneratorArch(1, 2, 4, 4, "batch", False), DiscriminatorArch(3, 4, 1, "batch", 2)
    base = step_flops_per_image(g, d, 32, LossConfig())
    with_feat = step_flops_per_image(g, d, 32, LossConfig(lambda_feat=10.0))
    with_l1 = step_flops_per_image(g, d, 32, LossConfig(lambda_l1=1.0))
    from p2p.train.flops import forward_flops

    with torch.device("meta"):
        df = forward_flops(build_discriminator(d), (1, 3, 32, 32))
    assert with_feat - base == df and with_l1 == base  # elementwise: not counted
