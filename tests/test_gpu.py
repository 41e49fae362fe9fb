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


def test_fused_device_step_compiles_on_cuda_and_matches_the_cpu_kernel():
    """torch.compile (Triton) of p2p.fused.cuda against the C kernel and the eager path."""
    from p2p.augment import step_generator
    from p2p.config import TaskConfig
    from p2p.tasks import build_task

    x = torch.randint(0, 256, (8, 3, 286, 286), dtype=torch.uint8)
    for name in ("colorize", "gray2rgb"):
        fused, eager = build_task(TaskConfig(name=name), "fused"), build_task(TaskConfig(name=name), "eager")
        assert fused.device_step.implementation(torch.device("cuda")) == "torch.compile"
        for step in range(3):
            on_cpu = fused.prepare(x, 256, None, crop_gen=step_generator(0, 0, step))
            on_gpu = fused.prepare(x.cuda(), 256, None, crop_gen=step_generator(0, 0, step))
            eager_gpu = eager.prepare(x.cuda(), 256, None, crop_gen=step_generator(0, 0, step))
            assert "cuda" not in fused.device_step.unavailable, fused.device_step.unavailable
            for a, b, c in zip(on_gpu, on_cpu, eager_gpu):
                assert a.device.type == "cuda" and a.dtype == torch.float32
                torch.testing.assert_close(a.cpu(), b, atol=1e-5, rtol=0)
                torch.testing.assert_close(a, c, atol=1e-5, rtol=0)
        with torch.autocast("cuda", dtype=torch.bfloat16):
            assert fused.prepare(x.cuda(), 256, None)[0].dtype == torch.float32
        assert fused.device_step.compile_s[name] > 0


def test_fused_lab_bench_row_on_cuda():
    from p2p.bench.lab import FUSED_ROW, run_lab

    rows = run_lab(device="cuda", size=256, images=64, repeats=3)
    row = next(r for r in rows if r["name"] == FUSED_ROW)
    assert row["implementation"] == "torch.compile" and row["img_per_s"] > 0 and row["compile_s"] > 0
    assert row["max_abs_diff_vs_skimage"] < 2e-3
