"""GPU paths (skipped without CUDA; run on the device machine): Lab on the device, AMP, CUDA
graphs and channels_last training steps."""

import copy

import pytest
import torch

from p2p.config import LossConfig, load_config
from p2p.models import DiscriminatorArch, GeneratorArch, build_discriminator, build_generator, init_weights
from p2p.train.step import Nets, Precision, train_step
from p2p.train.wrap import make_optimizer

pytestmark = pytest.mark.gpu


def test_lab_on_cuda_matches_cpu():
    from p2p.color import lab_to_rgb, rgb_to_lab

    x = torch.randint(0, 256, (4, 3, 64, 64), dtype=torch.uint8)
    torch.testing.assert_close(rgb_to_lab(x.cuda()).cpu(), rgb_to_lab(x), atol=1e-3, rtol=0)
    lab = rgb_to_lab(x)
    torch.testing.assert_close(lab_to_rgb(lab.cuda()).cpu(), lab_to_rgb(lab), atol=1e-4, rtol=0)


def _nets(precision, capturable=False):
    torch.manual_seed(0)
    cfg = load_config()
    dev = torch.device("cuda")
    G = init_weights(build_generator(GeneratorArch(1, 2, 6, 32, dropout=False))).to(dev)
    D = init_weights(build_discriminator(DiscriminatorArch(3, 32, 3))).to(dev)
    G, D = G.to(memory_format=torch.channels_last), D.to(memory_format=torch.channels_last)
    p = Precision(precision, dev)
    return Nets(G, D, D, make_optimizer(G.parameters(), cfg, dev, capturable), make_optimizer(D.parameters(), cfg, dev,
                                                                                          capturable),
                p.make_scaler(False), p.make_scaler(False)), p


@pytest.mark.parametrize("precision", ["fp32", "bf16", "fp16"])
def test_amp_steps_are_finite(precision):
    nets, p = _nets(precision)
    x, y = torch.rand(8, 1, 64, 64, device="cuda"), torch.rand(8, 2, 64, 64, device="cuda")
    for _ in range(3):
        out = train_step(nets, x, y, LossConfig(), p)
    assert all(torch.isfinite(v) and v.dtype == torch.float32 for v in out.values())


def test_cuda_graph_step_matches_eager():
    from p2p.train.graphs import GraphedStep

    torch.backends.cudnn.deterministic = True
    eager, p = _nets("fp32", capturable=True)
    graphed = copy.deepcopy(eager)
    graphed.opt_g = make_optimizer(graphed.G.parameters(), load_config(), torch.device("cuda"), True)
    graphed.opt_d = make_optimizer(graphed.D.parameters(), load_config(), torch.device("cuda"), True)
    graphed.D_frozen = graphed.D
    step = GraphedStep(lambda a, b: train_step(graphed, a, b, LossConfig(), p), warmup=2)
    g = torch.Generator(device="cuda").manual_seed(0)
    for _ in range(5):
        x = torch.rand(4, 1, 64, 64, device="cuda", generator=g)
        y = torch.rand(4, 2, 64, 64, device="cuda", generator=g)
        a = train_step(eager, x, y, LossConfig(), p)
        b = step(x, y)
        torch.testing.assert_close(a["G_L1"], b["G_L1"], rtol=1e-3, atol=1e-3)
    assert step.graph is not None and not step.failed
    for pa, pb in zip(eager.G.parameters(), graphed.G.parameters()):
        torch.testing.assert_close(pa, pb, rtol=1e-3, atol=1e-4)


def test_train_command_on_gpu_with_every_speedup(tmp_path):
    from helpers.runs import TINY, run_p2p

    run_p2p("train", f"run.out_dir={tmp_path}", *TINY, "train.max_steps=8", "train.precision=bf16",
            "train.cuda_graphs=true", "train.channels_last=true")


def _nets_with_every_term(tmp_path, precision="fp32"):
    import torchvision

    from p2p.tasks import build_task
    from p2p.train.nets import build_nets, build_networks

    vgg = tmp_path / "vgg19.pth"
    if not vgg.exists():
        torch.manual_seed(0)
        state = torchvision.models.vgg19(weights=None).state_dict()
        torch.save({k: v for k, v in state.items() if k.startswith("features.")}, vgg)
    cfg = load_config(None, ["data.image_size=64", "data.load_size=72", "model.ngf=16", "model.ndf=16",
                             "model.dropout=false", "model.num_d=2", "loss.lambda_feat=10", "loss.gan_mode=hinge",
                             "loss.lambda_vgg=1", f"loss.vgg_weights={vgg}", "train.ema_decay=0.9"])
    task, dev = build_task(cfg.task), torch.device("cuda")
    p = Precision(precision, dev)
    torch.manual_seed(0)
    G, D = (n.to(dev) for n in build_networks(cfg, task))
    return build_nets(G, D, D, cfg, dev, p, capturable=precision != "fp16", task=task), cfg, p


def test_cuda_graph_step_with_every_new_term_matches_eager(tmp_path):
    """Multi-scale D, feature matching, hinge, the VGG loss and the EMA update are all inside
    the captured step: no host syncs, replays equal eager steps."""
    from p2p.train.graphs import GraphedStep

    torch.backends.cudnn.deterministic = True
    eager, cfg, p = _nets_with_every_term(tmp_path)
    graphed, _, _ = _nets_with_every_term(tmp_path)
    step = GraphedStep(lambda a, b: train_step(graphed, a, b, cfg.loss, p), warmup=2)
    g = torch.Generator(device="cuda").manual_seed(0)
    for _ in range(5):
        x = torch.rand(4, 1, 64, 64, device="cuda", generator=g) * 2 - 1
        y = torch.rand(4, 2, 64, 64, device="cuda", generator=g) * 2 - 1
        a, b = train_step(eager, x, y, cfg.loss, p), step(x, y)
        for k in ("G_L1", "G_feat", "G_VGG", "D_real"):
            torch.testing.assert_close(a[k], b[k], rtol=1e-3, atol=1e-3)
    assert step.graph is not None and not step.failed
    for pa, pb in zip(eager.ema.module.parameters(), graphed.ema.module.parameters()):
        torch.testing.assert_close(pa, pb, rtol=1e-3, atol=1e-4)


@pytest.mark.parametrize("precision", ["bf16", "fp16"])
def test_amp_steps_with_every_new_term_are_finite(tmp_path, precision):
    nets, cfg, p = _nets_with_every_term(tmp_path, precision)
    x, y = torch.rand(8, 1, 64, 64, device="cuda") * 2 - 1, torch.rand(8, 2, 64, 64, device="cuda") * 2 - 1
    for _ in range(3):
        out = train_step(nets, x, y, cfg.loss, p)
    assert all(torch.isfinite(v) and v.dtype == torch.float32 for v in out.values())


def test_train_command_on_gpu_with_resnet_multiscale_and_ema(tmp_path):
    from helpers.runs import TINY, run_p2p

    proc = run_p2p("train", f"run.out_dir={tmp_path}", *TINY, "train.max_steps=8", "train.precision=bf16",
                   "train.cuda_graphs=true", "model.generator=resnet", "model.n_blocks=3", "model.num_d=2",
                   "model.n_layers_d=2", "loss.lambda_feat=10", "train.ema_decay=0.99")
    assert "capture failed" not in proc.stderr, proc.stderr[-2000:]
