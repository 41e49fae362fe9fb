"""GPU paths (skipped without CUDA; run on the device machine): Lab on the device, AMP, CUDA
graphs and channels_last training steps, and the nvjpeg backend (nvJPEG's pixels against
libjpeg-turbo's, resume, training, its `p2p bench data` row)."""

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


# ---------------------------------------------------------------------------------------------
# data.backend=nvjpeg: torchvision's nvJPEG against libjpeg-turbo on the same shards


@pytest.fixture(scope="module")
def coco_shards(tmp_path_factory):
    """COCO-sized photos (about 640 x 480) sharded at the pix2pix load size, 286."""
    from helpers import image_folders as F
    from p2p.data.shard import make_shards

    root = tmp_path_factory.mktemp("gpu_shards")
    F.make_coco_like(root / "src", n=48, seed=2)
    make_shards(root / "src", root / "shards", val_fraction=0.2, shard_size_mb=2, workers=4)
    return root / "shards"


def _shard_cfg(source, backend: str, load_size: int, batch_size: int = 8):
    from p2p.config import Config, with_values

    return with_values(Config(), {"data.backend": backend, "data.source": str(source), "data.load_size": load_size,
                                  "data.image_size": 256, "data.workers": 2, "data.val_images": 8,
                                  "train.batch_size": batch_size})


@pytest.mark.parametrize("load_size, split, bound", [(286, "train", 1), (286, "val", 1), (256, "train", 2)])
def test_nvjpeg_pixels_are_within_one_level_of_libjpeg_turbo(coco_shards, load_size, split, bound):
    # 286: the stored size, decode and window only (the bound: one level); 256: resized
    # on the GPU in float32 after the decode, on the CPU in fixed point: one more level at most
    from p2p.data import build_loader

    cpu = list(build_loader(_shard_cfg(coco_shards, "wds", load_size), split).epoch(0))
    gpu = list(build_loader(_shard_cfg(coco_shards, "nvjpeg", load_size), split, device=torch.device("cuda")).epoch(0))
    assert len(gpu) == len(cpu) > 0
    for a, b in zip(cpu, gpu):
        assert a.keys == b.keys
        assert b.images.is_cuda and b.images.dtype == torch.uint8 and b.images.shape == a.images.shape
        diff = (a.images.int() - b.images.cpu().int()).abs()
        counts = torch.bincount(diff.flatten(), minlength=bound + 2).tolist()
        assert diff.max() <= bound, f"{a.keys}: pixels by absolute difference 0, 1, 2, ...: {counts}"
        assert diff.float().mean() < 0.5, counts


def test_nvjpeg_resumes_mid_epoch_with_the_same_batches(coco_shards):
    from p2p.data import build_loader

    loader = build_loader(_shard_cfg(coco_shards, "nvjpeg", 286, batch_size=4), "train", device=torch.device("cuda"))
    full = list(loader.epoch(1))
    tail = list(loader.epoch(1, start=2))
    assert [b.keys for b in tail] == [b.keys for b in full[2:]]
    assert all(torch.equal(a.images, b.images) for a, b in zip(tail, full[2:]))


def test_train_and_resume_on_gpu_with_nvjpeg_and_auto(coco_shards, tmp_path):
    from helpers.runs import TINY, load_ckpt, run_p2p
    from p2p.data import dali_importable

    common = [f"run.out_dir={tmp_path}", *TINY, f"data.source={coco_shards}", "data.workers=2",
              "train.max_steps=4"]
    cut = run_p2p("train", *common, "data.backend=nvjpeg", "run.name=nv", "train.stop_after=2", check=False)
    assert cut.returncode == 75 and "(nvjpeg loader)" in cut.stderr, cut.stderr[-3000:]
    run_p2p("train", *common, "data.backend=nvjpeg", "run.name=nv")
    assert load_ckpt(tmp_path / "nv" / "checkpoints" / "last.pt")["step"] == 4
    auto = run_p2p("train", *common, "data.backend=auto", "run.name=auto")
    picked = "dali" if dali_importable() else "nvjpeg"
    assert f"({picked} loader)" in auto.stderr, auto.stderr[-3000:]


def test_bench_data_has_the_nvjpeg_row_with_gpu_memory(coco_shards):
    from p2p.bench.data import DataOptions, run_data

    res = run_data(str(coco_shards), DataOptions(quick=True, backends=("nvjpeg",)), progress=lambda s: None)
    (row,) = [r for r in res["results"] if r["backend"] == "nvjpeg"]
    assert not row.get("skipped") and row["img_per_s"] > 0 and row["device"] == "cuda:0"
    assert row["gpu_mem_peak_mb"] > 0 and row["gpu_mem_used_mb"] >= row["gpu_mem_peak_mb"]
