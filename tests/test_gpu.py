"""GPU paths (skipped without CUDA; run on the device machine): Lab on the device, AMP, CUDA
graphs and channels_last training steps, p2p eval's FID/KID/LPIPS on the GPU, tiled predict."""

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


def test_eval_on_gpu_gives_the_cpu_numbers(tmp_path):
    """FID/KID/LPIPS on CUDA (float32, TF32 off) equal the CPU's; a bf16 generator stays close."""
    import json

    import numpy as np
    from PIL import Image

    from helpers.image_folders import photo
    from helpers.reference_weights import alexnet_file, fid_inception_file
    from helpers.runs import TINY, run_p2p

    run_p2p("train", f"run.out_dir={tmp_path}", "run.name=t", *TINY, "train.max_steps=2", "train.device=cpu")
    src = tmp_path / "src"
    src.mkdir()
    for i in range(6):
        Image.fromarray(np.ascontiguousarray(photo(i)[::4, ::4])).save(src / f"{i}.png")
    fid, alex = fid_inception_file(tmp_path / "fid.pth"), alexnet_file(tmp_path / "alex.pth")
    got = {}
    for device, precision in (("cpu", "fp32"), ("cuda", "fp32"), ("cuda", "bf16")):
        out = tmp_path / f"{device}-{precision}.json"
        run_p2p("eval", tmp_path / "t" / "checkpoints" / "last.pt", "--data", src, "--fid-weights", fid,
                "--lpips-weights", alex, "--device", device, "--precision", precision, "--json", out, timeout=600)
        got[device, precision] = json.loads(out.read_text())
    cpu, gpu, bf16 = got["cpu", "fp32"], got["cuda", "fp32"], got["cuda", "bf16"]
    for k in ("psnr", "ssim", "lpips", "fid"):
        assert gpu[k] == pytest.approx(cpu[k], rel=1e-3), k
    assert gpu["kid"] == pytest.approx(cpu["kid"], rel=1e-2, abs=1e-5)
    assert bf16["psnr"] == pytest.approx(cpu["psnr"], abs=0.5) and bf16["fid"] == pytest.approx(cpu["fid"], rel=0.1)


def test_tiled_predict_on_gpu_matches_cpu():
    from p2p.config import TaskConfig
    from p2p.inference import Geometry, predict
    from p2p.tasks import build_task
    from p2p.tiling import Tiling

    torch.manual_seed(0)
    G = init_weights(build_generator(GeneratorArch(1, 2, 5, 8))).eval()
    task = build_task(TaskConfig(name="colorize"))
    rgb = torch.rand(2, 3, 160, 224)
    cpu = predict(G, task, rgb, Geometry("full", 0), tiling=Tiling(64, 16))
    gpu = predict(G.cuda(), task, rgb.cuda(), Geometry("full", 0), tiling=Tiling(64, 16)).cpu()
    torch.testing.assert_close(gpu, cpu, atol=2e-3, rtol=0)
