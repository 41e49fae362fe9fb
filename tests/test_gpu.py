"""GPU paths (skipped without CUDA; run on the device machine): Lab on the device, AMP, CUDA
graphs and channels_last training steps, the nvjpeg backend (nvJPEG's pixels against
libjpeg-turbo's, resume, training, its `p2p bench data` row), p2p eval's FID/KID/LPIPS on the
GPU, tiled predict."""

import copy
import io
import json
import threading

import numpy as np
import pytest
import torch

from p2p.config import LossConfig, load_config, with_values
from p2p.models import DiscriminatorArch, GeneratorArch, build_discriminator, build_generator, init_weights
from p2p.precision import Precision
from p2p.train.step import Nets, train_step
from p2p.train.wrap import make_optimizer

pytestmark = pytest.mark.gpu
CUDA = torch.device("cuda")
# Also here: CUDA graphs against eager under a changing lr, with another thread's CUDA calls
# during capture, and a capture that fails; torch.compile + graphs on colorization's strided
# inputs through `p2p train`; restore's degradations on the device; DALI's mixed decoder against
# its CPU decoder; the MFU peak of this GPU. benchmarks/gpu-check.sh runs them on a GPU node;
# what can be checked without a GPU is in tests/test_gpu_paths.py.


@pytest.fixture
def deterministic_cudnn():
    """Eager and graphed steps pick the same convolution algorithms."""
    before = torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark
    torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark = True, False
    yield
    torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark = before


def test_lab_on_cuda_matches_cpu():
    from p2p.color import lab_to_rgb, rgb_to_lab

    x = torch.randint(0, 256, (4, 3, 64, 64), dtype=torch.uint8)
    torch.testing.assert_close(rgb_to_lab(x.cuda()).cpu(), rgb_to_lab(x), atol=1e-3, rtol=0)
    lab = rgb_to_lab(x)
    torch.testing.assert_close(lab_to_rgb(lab.cuda()).cpu(), lab_to_rgb(lab), atol=1e-4, rtol=0)


def _nets(precision, capturable=False):
    torch.manual_seed(0)
    cfg = load_config()
    G = init_weights(build_generator(GeneratorArch(1, 2, 6, 32, dropout=False))).to(CUDA)
    D = init_weights(build_discriminator(DiscriminatorArch(3, 32, 3))).to(CUDA)
    G, D = G.to(memory_format=torch.channels_last), D.to(memory_format=torch.channels_last)
    p = Precision(precision, CUDA)
    return Nets(G, D, D, make_optimizer(G.parameters(), cfg, CUDA, capturable),
                make_optimizer(D.parameters(), cfg, CUDA, capturable), p.make_scaler(False), p.make_scaler(False),
                torch.channels_last), p


def _colorize_batches(n: int, batch: int = 4, size: int = 64):
    """(L, ab) as the trainer feeds them: strided channel views of one Lab tensor, on the GPU."""
    from p2p.tasks import Colorize
    from p2p.config import TaskConfig

    task, g = Colorize(TaskConfig()), torch.Generator(device="cuda").manual_seed(0)
    for _ in range(n):
        rgb = torch.randint(0, 256, (batch, 3, size, size), dtype=torch.uint8, device="cuda", generator=g)
        yield task.convert(rgb, None)


@pytest.mark.parametrize("precision", ["fp32", "bf16", "fp16"])
def test_amp_steps_are_finite(precision):
    nets, p = _nets(precision)
    x, y = torch.rand(8, 1, 64, 64, device="cuda"), torch.rand(8, 2, 64, 64, device="cuda")
    for _ in range(3):
        out = train_step(nets, x, y, LossConfig(), p)
    assert all(torch.isfinite(v) and v.dtype == torch.float32 for v in out.values())
    if precision == "fp16":
        assert nets.scaler_g.is_enabled() and nets.scaler_g.get_scale() > 0


def test_cuda_graph_step_matches_eager_under_a_changing_lr(deterministic_cudnn):
    """Replays with the linear lr decay filled in between them give the eager step's G and D."""
    from p2p.train.graphs import GraphedStep
    from p2p.train.schedule import lr_factor, set_lr

    cfg = with_values(load_config(), {"train.max_steps": 8, "optim.lr_policy": "linear", "optim.decay_start": 1})
    eager, p = _nets("fp32", capturable=True)
    graphed = copy.deepcopy(eager)
    graphed.opt_g = make_optimizer(graphed.G.parameters(), cfg, CUDA, True)
    graphed.opt_d = make_optimizer(graphed.D.parameters(), cfg, CUDA, True)
    graphed.D_frozen = graphed.D
    notices = []
    step = GraphedStep(lambda a, b: train_step(graphed, a, b, LossConfig(), p), warmup=2, notice=notices.append)
    lrs = []
    for i, (x, y) in enumerate(_colorize_batches(8)):
        lr = cfg.optim.lr * lr_factor(i, cfg)
        lrs.append(lr)
        for nets in (eager, graphed):
            set_lr(nets.opt_g, lr)
            set_lr(nets.opt_d, lr)
        a = train_step(eager, x, y, LossConfig(), p)
        b = step(x, y)
        for k in a:
            torch.testing.assert_close(a[k], b[k], rtol=1e-3, atol=1e-3, msg=f"step {i}: {k}")
    assert len(set(lrs)) > 4  # the lr really changed between replays
    assert not notices and step.graph is not None and not step.failed and step.replays == 6
    assert float(graphed.opt_g.param_groups[0]["lr"]) == pytest.approx(lrs[-1])
    for name, net_a, net_b in (("G", eager.G, graphed.G), ("D", eager.D, graphed.D)):
        for (k, pa), pb in zip(net_a.named_parameters(), net_b.parameters()):
            torch.testing.assert_close(pa, pb, rtol=1e-3, atol=1e-4, msg=f"{name}.{k}")


def test_capture_survives_cuda_calls_from_another_thread():
    """What the DataLoader's pin-memory thread does while the step is captured: allocate pinned
    memory. In the default "global" capture mode that call fails and invalidates the capture."""
    from p2p.train.graphs import GraphedStep

    nets, p = _nets("bf16", capturable=True)
    errors, notices = [], []

    def pin():
        try:
            torch.empty(3_000_017, dtype=torch.uint8).pin_memory()  # a new size: a fresh host allocation
        except Exception as e:
            errors.append(e)

    def step(a, b):
        out = train_step(nets, a, b, LossConfig(), p)
        if torch.cuda.is_current_stream_capturing():
            t = threading.Thread(target=pin)
            t.start()
            t.join()
        return out

    graphed = GraphedStep(step, warmup=2, notice=notices.append)
    for x, y in _colorize_batches(5):
        out = graphed(x, y)
    torch.cuda.synchronize()
    assert not errors and not notices, (errors, notices)
    assert graphed.graph is not None and graphed.replays == 3 and torch.isfinite(out["G_L1"])


def test_a_failed_capture_is_reported_and_steps_go_on_eagerly_on_the_callers_stream():
    from p2p.train.graphs import GraphedStep

    nets, p = _nets("fp32", capturable=True)
    notices = []

    def step(a, b):
        out = train_step(nets, a, b, LossConfig(), p)
        if torch.cuda.is_current_stream_capturing():
            out["G_L1"].item()  # a host read: cannot be captured
        return out

    graphed = GraphedStep(step, warmup=1, notice=notices.append)
    caller = torch.cuda.current_stream()
    batches = list(_colorize_batches(3))
    graphed(*batches[0])
    out = graphed(*batches[1])  # the capture fails; this step runs eagerly
    assert graphed.failed and graphed.graph is None
    assert len(notices) == 1 and "CUDA graph capture failed" in notices[0]
    assert torch.cuda.current_stream() == caller, "left on the capture stream"
    before = [q.clone() for q in nets.G.parameters()]
    out = graphed(*batches[2])
    torch.cuda.synchronize()
    assert torch.isfinite(out["G_L1"]) and graphed.replays == 0 and len(notices) == 1
    assert any(not torch.equal(a, b) for a, b in zip(before, nets.G.parameters()))  # it really trained


@pytest.mark.slow  # starts p2p processes: gpu-check.sh runs these last (pytest-trainings)
def test_train_with_compile_and_graphs_captures_colorization_with_loader_workers(tmp_path):
    """The default task feeds strided L/ab views; loader workers keep the pin-memory thread busy.
    The metrics rows must show the graph replaying every step after the capture, compiled
    networks, channels_last, and the linear lr decay read back from the optimizer."""
    from helpers.runs import TINY, run_p2p

    proc = run_p2p("train", f"run.out_dir={tmp_path}", *TINY, "data.workers=2", "train.max_steps=12",
                   "train.log_every=4", "train.precision=bf16", "train.cuda_graphs=true", "train.compile=true",
                   "train.channels_last=true", "optim.lr_policy=linear", "run.name=gpu", timeout=600)
    rows = [json.loads(line) for line in (tmp_path / "gpu" / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [4, 8, 12]
    notices = [n for r in rows for n in r.get("notices", [])]
    assert not any("capture failed" in n or "recompile limit" in n for n in notices), notices
    assert "capture failed" not in proc.stderr
    assert all(r["cuda_graphs"] and {"G", "D"} <= set(r["compiled"]) and r["channels_last"] and r["precision"] == "bf16" for r in rows)
    assert [r["graph_replays"] for r in rows] == [1, 4, 4]  # 3 eager warm-up steps, then every step replayed
    assert rows[0]["lr"] > rows[1]["lr"] > rows[2]["lr"] > 0  # decay from step 6 on, through the graph's lr tensor
    assert all(r["adam"] == "foreach, capturable" for r in rows)


def test_restore_degradations_stay_on_the_gpu(tmp_path):
    """Noise is drawn on the device (no batch-sized host tensor copied up per step) from the
    step's generator, and the JPEG round trip runs in nvJPEG, close to the libjpeg-turbo twin."""
    from torch.profiler import ProfilerActivity, profile

    from helpers.image_folders import photo_batch
    from p2p.augment import step_generator
    from p2p.config import TaskConfig
    from p2p.tasks import degrade

    clean = photo_batch().float().div(255).cuda()
    noisy = TaskConfig(name="restore", jpeg_quality=100)
    with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
        out = degrade(clean, noisy, step_generator(0, 0, 1))
        torch.cuda.synchronize()
    prof.export_chrome_trace(str(tmp_path / "trace.json"))
    events = json.loads((tmp_path / "trace.json").read_text())["traceEvents"]
    uploads = [e.get("args", {}).get("bytes", 0) for e in events
               if e.get("cat") == "gpu_memcpy" and "HtoD" in e.get("name", "")]
    assert max(uploads, default=0) < clean.numel(), f"a batch-sized host-to-device copy: {max(uploads)} bytes"
    torch.testing.assert_close(degrade(clean, noisy, step_generator(0, 0, 1)), out)  # a function of the step
    assert not torch.equal(degrade(clean, noisy, step_generator(0, 0, 2)), out)

    jpeg = TaskConfig(name="restore", noise_std=0.0, blur_sigma=0.0, jpeg_quality=30)
    notices = []
    on_gpu = degrade(clean, jpeg, step_generator(0, 0, 1), notices.append)
    on_cpu = degrade(clean.cpu(), jpeg, step_generator(0, 0, 1))
    assert not notices, notices  # nvJPEG ran
    assert on_gpu.is_cuda

    def psnr(a, b):
        return float(10 * torch.log10(1 / ((a.cpu() - b.cpu()) ** 2).mean()))

    # nvJPEG and libjpeg-turbo round differently: the two are near each other, equally degraded
    assert psnr(on_gpu, on_cpu) > 30
    assert abs(psnr(on_gpu, clean) - psnr(on_cpu, clean)) < 1.5 and psnr(on_cpu, clean) < 40


def test_this_gpu_has_a_peak_for_mfu():
    from p2p.train.flops import gpu_model, peak_flops

    name = torch.cuda.get_device_name(0)
    if any(m in name for m in ("H100", "H200", "A100")) and "MIG" not in name:
        assert peak_flops(CUDA, "bf16") is not None, f"{name!r} parses as {gpu_model(name)}"


# ------------------------------------------------------------------ DALI's mixed decoder


def _subsampled_jpegs(count: int = 6, size: int = 256) -> list[bytes]:
    """4:2:0 JPEGs of real photographs: the chroma planes need upsampling when decoded."""
    from PIL import Image

    from p2p.bench.photos import photographs

    out = []
    for photo in photographs(size, count):
        buf = io.BytesIO()
        Image.fromarray(photo).save(buf, format="JPEG", quality=90, subsampling=2)
        out.append(buf.getvalue())
    return out


def test_dali_mixed_decoder_matches_its_cpu_decoder_within_one_level():
    from helpers.requirements import require_dali

    require_dali()
    from nvidia.dali import fn, pipeline_def, types

    from p2p.data.dali import decoder_options

    blobs = [np.frombuffer(b, dtype=np.uint8) for b in _subsampled_jpegs()]

    def decoded(decoder: str) -> list[np.ndarray]:
        @pipeline_def(batch_size=len(blobs), num_threads=2, device_id=torch.cuda.current_device())
        def pipe():
            data = fn.external_source(source=lambda: blobs, batch=True)
            return fn.decoders.image(data, device=decoder, output_type=types.RGB, **decoder_options(decoder))

        p = pipe()
        p.build()
        (images,) = p.run()
        images = images.as_cpu() if decoder == "mixed" else images
        return [np.array(images.at(i)) for i in range(len(blobs))]

    for gpu, cpu in zip(decoded("mixed"), decoded("cpu")):
        diff = np.abs(gpu.astype(np.int16) - cpu.astype(np.int16))
        assert diff.max() <= 1, f"mixed and cpu decoders differ by up to {diff.max()} levels"


def test_dali_loader_on_the_gpu_gives_the_cpu_loaders_pixels(tmp_path):
    from helpers import image_folders as F
    from helpers.requirements import require_dali

    require_dali()
    from p2p.data import loader_args
    from p2p.data.dali import DaliLoader
    from p2p.data.shards import make_shards

    F.make_coco_like(tmp_path / "src", n=24, seed=5, scale=0.25)
    make_shards(tmp_path / "src", tmp_path / "shards", size=72, val_fraction=0.5, shard_size_mb=0.05, workers=1)
    cfg = with_values(load_config(), {"data.source": str(tmp_path / "shards"), "data.backend": "dali",
                                      "data.load_size": 72, "data.image_size": 64, "data.val_images": 8,
                                      "train.batch_size": 4})
    args = loader_args(cfg)
    on_gpu = list(DaliLoader(cfg.data.source, "val", 0, 1, args, CUDA).epoch(0))
    on_cpu = list(DaliLoader(cfg.data.source, "val", 0, 1, args, None).epoch(0))
    assert [b.keys for b in on_gpu] == [b.keys for b in on_cpu] and on_gpu
    for a, b in zip(on_gpu, on_cpu):
        assert a.images.is_cuda
        assert (a.images.cpu().short() - b.images.short()).abs().max() <= 1


def test_bench_data_has_a_dali_mixed_row_on_the_gpu(tmp_path):
    from helpers.requirements import require_dali

    require_dali()
    from p2p.bench.data import DataOptions, run_data
    from p2p.bench.photos import build_shards

    shards = build_shards(tmp_path, 16, 0.25, 72)
    payload = run_data(str(shards), DataOptions(quick=True, backends=("dali",), image_size=64), lambda s: None)
    mixed = [r for r in payload["results"] if r["backend"] == "dali_mixed"]
    assert len(mixed) == 2 and all(r["img_per_s"] > 0 and r["device"].startswith("cuda") for r in mixed)


@pytest.mark.slow  # starts p2p processes: gpu-check.sh runs these last (pytest-trainings)
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


@pytest.mark.slow  # starts p2p processes: gpu-check.sh runs these last (pytest-trainings)
def test_train_command_on_gpu_with_resnet_multiscale_and_ema(tmp_path):
    from helpers.runs import TINY, run_p2p

    proc = run_p2p("train", f"run.out_dir={tmp_path}", *TINY, "train.max_steps=8", "train.precision=bf16",
                   "train.cuda_graphs=true", "model.generator=resnet", "model.n_blocks=3", "model.num_d=2",
                   "model.n_layers_d=2", "loss.lambda_feat=10", "train.ema_decay=0.99")
    assert "capture failed" not in proc.stderr, proc.stderr[-2000:]


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


def test_a_failed_gpu_compile_is_one_run_notice_and_the_eager_numbers(monkeypatch):
    """A Triton/Inductor failure of the fused step mid-run (stood in for by a torch.compile that
    raises: no GPU here can be made to fail compiling on demand) goes to the run's notices once,
    and the batch and every later one come from the eager path."""
    from p2p.augment import step_generator
    from p2p.config import TaskConfig
    from p2p.tasks import build_task

    def failing_compile(fn, **kwargs):
        def compiled(*args):
            raise RuntimeError("triton: out of resources\nsecond line")
        return compiled

    monkeypatch.setattr(torch, "compile", failing_compile)
    x = torch.randint(0, 256, (4, 3, 72, 72), dtype=torch.uint8, device="cuda")
    fused, eager = build_task(TaskConfig(name="colorize"), "fused"), build_task(TaskConfig(name="colorize"), "eager")
    notices: list[str] = []
    fused.device_step.report = notices.append
    for step in range(2):
        got = fused.prepare(x, 64, None, crop_gen=step_generator(0, 0, step))
        want = eager.prepare(x, 64, None, crop_gen=step_generator(0, 0, step))
        assert all(torch.equal(a, b) for a, b in zip(got, want))
    assert len(notices) == 1 and "out of resources" in notices[0] and "\n" not in notices[0], notices
    assert fused.device_step.implementation(x.device).startswith("eager (torch.compile of the fused colorize")


def test_fused_lab_bench_row_on_cuda():
    from p2p.bench.lab import FUSED_ROW, run_lab

    rows = run_lab(device="cuda", size=256, images=64, repeats=3)
    row = next(r for r in rows if r["name"] == FUSED_ROW)
    assert row["implementation"] == "torch.compile" and row["img_per_s"] > 0 and row["compile_s"] > 0
    assert row["max_abs_diff_vs_skimage"] < 2e-3


@pytest.mark.slow  # starts p2p processes: gpu-check.sh runs these last (pytest-trainings)
def test_eval_on_gpu_gives_the_cpu_numbers(tmp_path):
    """FID/KID/LPIPS on CUDA (float32, TF32 off) equal the CPU's; a bf16 generator stays close."""
    from helpers.requirements import require_module

    for name in ("pytorch_fid", "lpips", "torchmetrics"):  # the [metrics] extra
        require_module(name)
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


# ---------------------------------------------------------------------------------------------
# data.backend=nvjpeg: torchvision's nvJPEG against libjpeg-turbo on the same shards


@pytest.fixture(scope="module")
def coco_shards(tmp_path_factory):
    """COCO-sized photos (about 640 x 480) sharded at the pix2pix load size, 286."""
    from helpers import image_folders as F
    from p2p.data.shards import make_shards

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


@pytest.mark.parametrize("workers, kind", [(0, "process"), (2, "process"), (2, "thread")])
def test_wds_batches_for_a_gpu_are_pinned_channels_last_and_arrive_whole(coco_shards, workers, kind):
    """For a CUDA device every wds batch is made in (or copied into) pinned memory, channels-last
    like the decoder's pixels, and the non-blocking copy to the GPU keeps both the layout and
    the pixels."""
    from p2p.config import with_values
    from p2p.data import build_loader
    from p2p.data.prefetch import device_batches

    cfg = with_values(_shard_cfg(coco_shards, "wds", 286, batch_size=4), {"data.workers": workers,
                                                                         "data.worker_kind": kind})
    loader = build_loader(cfg, "train", device=torch.device("cuda"))
    on_cpu = list(loader.epoch(0))
    assert all(b.images.is_pinned() and b.images.is_contiguous(memory_format=torch.channels_last) for b in on_cpu)
    stream = device_batches(loader, 0, 0, torch.device("cuda"))
    for a in on_cpu:
        _, _, b = next(stream)
        assert b.images.is_cuda and b.images.is_contiguous(memory_format=torch.channels_last)
        assert b.keys == a.keys and torch.equal(b.images.cpu(), a.images)


def test_nvjpeg_resumes_mid_epoch_with_the_same_batches(coco_shards):
    from p2p.data import build_loader

    loader = build_loader(_shard_cfg(coco_shards, "nvjpeg", 286, batch_size=4), "train", device=torch.device("cuda"))
    full = list(loader.epoch(1))
    tail = list(loader.epoch(1, start=2))
    assert [b.keys for b in tail] == [b.keys for b in full[2:]]
    assert all(torch.equal(a.images, b.images) for a, b in zip(tail, full[2:]))


@pytest.mark.slow  # starts p2p processes: gpu-check.sh runs these last (pytest-trainings)
def test_train_and_resume_on_gpu_with_nvjpeg_and_auto(coco_shards, tmp_path):
    from helpers.runs import TINY, load_ckpt, run_p2p
    from p2p.data import importable

    common = [f"run.out_dir={tmp_path}", *TINY, f"data.source={coco_shards}", "data.workers=2",
              "train.max_steps=4"]
    cut = run_p2p("train", *common, "data.backend=nvjpeg", "run.name=nv", "train.stop_after=2", check=False)
    assert cut.returncode == 75 and "(nvjpeg loader)" in cut.stderr, cut.stderr[-3000:]
    run_p2p("train", *common, "data.backend=nvjpeg", "run.name=nv")
    assert load_ckpt(tmp_path / "nv" / "checkpoints" / "last.pt")["step"] == 4
    auto = run_p2p("train", *common, "data.backend=auto", "run.name=auto")
    picked = "dali" if importable("nvidia.dali") else "nvjpeg"
    assert f"({picked} loader)" in auto.stderr, auto.stderr[-3000:]


def test_bench_data_has_the_nvjpeg_row_with_gpu_memory(coco_shards):
    from p2p.bench.data import DataOptions, run_data

    res = run_data(str(coco_shards), DataOptions(quick=True, backends=("nvjpeg",)), progress=lambda s: None)
    (row,) = [r for r in res["results"] if r["backend"] == "nvjpeg"]
    assert not row.get("skipped") and row["img_per_s"] > 0 and row["device"] == "cuda:0"
    assert row["gpu_mem_peak_mb"] > 0 and row["gpu_mem_used_mb"] >= row["gpu_mem_peak_mb"]
