"""The fused device step (p2p.fused): the C kernel against skimage and the eager path on real
photos and every 8-bit colour, the same windows as the eager crop for a generator, float32
under autocast, its build cache and its fallbacks, and the prepare-ahead of a CPU run."""

from __future__ import annotations

import subprocess
import sys
import textwrap

import numpy as np
import pytest
import torch
from skimage import color as skcolor

from helpers.image_folders import photos
from helpers.requirements import require_c_compiler
from helpers.runs import ROOT, p2p_env
from p2p import color
from p2p.augment import apply_windows, crop_flip, draw_windows, step_generator
from p2p.config import TaskConfig
from p2p.fused import DeviceStep, build, cpu, cuda
from p2p.tasks import build_task

LAB_CONTRACT = 2e-3  # Lab units from skimage's float64 rgb2lab, on real photos
SAME_AS_EAGER = 5e-4  # Lab units between the fused and eager paths (float32, different cube roots)


@pytest.fixture
def one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def photo_batch(side: int = 300) -> torch.Tensor:
    """The embedded photos' top-left side x side corners, a uint8 N x 3 x side x side batch."""
    imgs = [p[:side, :side] for p in photos().values() if min(p.shape[:2]) >= side and p.ndim == 3]
    return torch.from_numpy(np.stack(imgs)).permute(0, 3, 1, 2).contiguous()


def lab_units(l_norm: torch.Tensor, ab_norm: torch.Tensor) -> np.ndarray:
    """The model's L/50 - 1, ab/110 back to Lab, N x H x W x 3 float64."""
    lab = torch.cat([color.denormalize_l(l_norm), color.denormalize_ab(ab_norm)], 1)
    return lab.permute(0, 2, 3, 1).double().numpy()


def colorize(mode: str):
    return build_task(TaskConfig(name="colorize"), mode)


def test_kernel_is_built_here():
    require_c_compiler()
    assert DeviceStep("fused").implementation(torch.device("cpu")) == "c-kernel"


def test_fused_colorize_matches_skimage_on_real_photos():
    images = photo_batch()
    for step in range(3):
        windows = draw_windows(len(images), 300, 300, 256, step_generator(0, 0, step))
        l_norm, ab_norm = colorize("fused").prepare(images, 256, None, crop_gen=step_generator(0, 0, step))
        crops = apply_windows(images, windows, 256).permute(0, 2, 3, 1).numpy()
        assert windows.mirror.any() and not windows.mirror.all()  # both directions are read
        reference = np.stack([skcolor.rgb2lab(c) for c in crops])
        assert np.abs(lab_units(l_norm, ab_norm) - reference).max() < LAB_CONTRACT


@pytest.mark.parametrize("task_name", ["colorize", "gray2rgb"])
def test_fused_equals_eager_for_the_same_generator(task_name):
    images = photo_batch()
    fused, eager = (build_task(TaskConfig(name=task_name), m) for m in ("fused", "eager"))
    for step in range(4):
        a = fused.prepare(images, 256, None, crop_gen=step_generator(3, 1, step))
        b = eager.prepare(images, 256, None, crop_gen=step_generator(3, 1, step))
        scale = (50.0, 110.0) if task_name == "colorize" else (1.0, 1.0)
        for x, y, s in zip(a, b, scale):
            assert x.shape == y.shape and x.dtype == y.dtype == torch.float32
            assert (x - y).abs().max() * s < (SAME_AS_EAGER if task_name == "colorize" else 1e-6)
    # validation: no generator, the centre window
    a, b = fused.prepare(images, 256, None), eager.prepare(images, 256, None)
    assert all((x - y).abs().max() < 1e-5 for x, y in zip(a, b))


def test_windows_are_crop_flips_windows():
    """One generator, one set of windows: draw_windows is what crop_flip crops by."""
    x = torch.arange(5 * 3 * 20 * 24, dtype=torch.int32).reshape(5, 3, 20, 24)
    for step in range(5):
        windows = draw_windows(5, 20, 24, 10, step_generator(0, 0, step))
        assert torch.equal(crop_flip(x, 10, step_generator(0, 0, step)), apply_windows(x, windows, 10))
    assert torch.equal(crop_flip(x, 10, step_generator(0, 0, 1), flip=False),
                       apply_windows(x, draw_windows(5, 20, 24, 10, step_generator(0, 0, 1), flip=False), 10))


def test_every_8bit_colour_round_trips_exactly_through_the_kernel(one_thread):
    codes = torch.arange(2**24, dtype=torch.int32)
    every_colour = torch.stack([codes >> 16, (codes >> 8) & 255, codes & 255]).to(torch.uint8)
    images = every_colour.view(3, 64, 512, 512).permute(1, 0, 2, 3).contiguous()  # 64 images of 512 x 512
    step = DeviceStep("fused")
    for chunk in images.split(8):
        whole = draw_windows(len(chunk), 512, 512, 512, None)
        l_norm, ab_norm = step.colorize(chunk, whole, 512)
        lab = torch.cat([color.denormalize_l(l_norm), color.denormalize_ab(ab_norm)], 1)
        back = torch.round(color.lab_to_rgb(lab) * 255).to(torch.uint8)
        assert torch.equal(back, chunk)


def test_channels_last_and_threads_give_the_same_numbers():
    images = photo_batch(280)
    windows = draw_windows(len(images), 280, 280, 256, step_generator(0, 0, 7))
    table, matrix = color._gamma_table(torch.device("cpu")), DeviceStep()._matrix()
    one = cpu.colorize(images, windows, 256, 256, table, matrix, threads=1)
    for x, threads in ((images, 2), (images, 3), (images.contiguous(memory_format=torch.channels_last), 1)):
        other = cpu.colorize(x, windows, 256, 256, table, matrix, threads=threads)
        assert all(torch.equal(a, b) for a, b in zip(one, other))


def test_float32_under_autocast():
    images = photo_batch(260)
    task = colorize("fused")
    expected = task.prepare(images, 256, None, crop_gen=step_generator(0, 0, 0))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        got = task.prepare(images, 256, None, crop_gen=step_generator(0, 0, 0))
    assert all(g.dtype == torch.float32 and torch.equal(g, e) for g, e in zip(got, expected))


def test_windows_that_do_not_fit_and_wrong_inputs_are_refused():
    images = torch.zeros(2, 3, 20, 20, dtype=torch.uint8)
    table, matrix = color._gamma_table(torch.device("cpu")), DeviceStep()._matrix()
    ok = draw_windows(2, 20, 20, 16, None)
    for top, left in (([0, 5], [0, 0]), ([0, 0], [0, 5]), ([-1, 0], [0, 0])):
        windows = ok._replace(top=torch.tensor(top), left=torch.tensor(left))
        with pytest.raises(ValueError, match="does not fit"):
            cpu.colorize(images, windows, 16, 16, table, matrix)
    with pytest.raises(ValueError, match="uint8"):
        cpu.colorize(images.float(), ok, 16, 16, table, matrix)
    with pytest.raises(ValueError, match="window entries"):
        cpu.colorize(images, ok._replace(top=torch.zeros(3, dtype=torch.long)), 16, 16, table, matrix)
    with pytest.raises(ValueError, match="table"):
        cpu.colorize(images, ok, 16, 16, table[:100], matrix)


def test_fusable_gpu_functions_equal_the_eager_path_uncompiled():
    """p2p.fused.cuda is what torch.compile turns into Triton on a GPU; here its plain PyTorch."""
    images = photo_batch()
    windows = draw_windows(len(images), 300, 300, 256, step_generator(5, 0, 2))
    assert windows.mirror.any()
    rows, cols = cuda.window_indices(*windows, 256, images.device)
    l_norm, ab_norm = cuda.colorize(images, rows, cols, color._gamma_table(images.device))
    eager = colorize("eager").prepare(images, 256, None, crop_gen=step_generator(5, 0, 2))
    assert (l_norm - eager[0]).abs().max() * 50 < SAME_AS_EAGER and (ab_norm - eager[1]).abs().max() * 110 < SAME_AS_EAGER
    gray, rgb = cuda.gray2rgb(images, rows, cols, torch.arange(256, dtype=torch.float32) / 255)
    eager = build_task(TaskConfig(name="gray2rgb"), "eager").prepare(images, 256, None,
                                                                   crop_gen=step_generator(5, 0, 2))
    assert (gray - eager[0]).abs().max() < 1e-6 and torch.equal(rgb, eager[1])


def test_lightness_only_path_equals_full_lab():
    rgb = photo_batch(64)
    assert torch.equal(color.rgb_to_lightness(rgb), color.rgb_to_lab(rgb)[:, :1])
    unit = rgb.float() / 255
    assert torch.equal(color.rgb_to_lightness(unit), color.rgb_to_lab(unit)[:, :1])
    assert color.rgb_to_lightness(unit[0]).shape == (1, 64, 64)
    task = colorize("fused")
    assert torch.equal(task.model_input(unit), color.normalize_l(color.rgb_to_lab(unit)[:, :1]))


# ------------------------------------------------------------------------------------ build


def test_cache_is_keyed_by_flags_and_cpu_and_reused(tmp_path, monkeypatch):
    require_c_compiler()
    first = build.build(folder=tmp_path)
    again = build.build(folder=tmp_path)
    assert not first.cached and first.compile_s > 0
    assert again.cached and again.path == first.path and again.compile_s == 0.0
    portable = build.build(build.PORTABLE_FLAGS, folder=tmp_path)
    assert portable.path != first.path
    monkeypatch.setattr(build, "cpu_identity", lambda: "another CPU")
    assert build.build(folder=tmp_path).path not in (first.path, portable.path)
    assert not list(tmp_path.glob("*.tmp*")) and not list(tmp_path.glob("*.o"))


def test_portable_build_gives_the_native_numbers(tmp_path, monkeypatch):
    """Compiled without -march (the baseline instruction set, as on a CPU without AVX-512)."""
    require_c_compiler()
    monkeypatch.setattr(cpu, "_BUILT", {})
    images = photo_batch(270)
    windows = draw_windows(len(images), 270, 270, 256, step_generator(0, 0, 4))
    table, matrix = color._gamma_table(torch.device("cpu")), DeviceStep()._matrix()
    monkeypatch.setenv("P2P_KERNEL_CACHE", str(tmp_path))
    native = cpu.colorize(images, windows, 256, 256, table, matrix)
    portable = cpu.colorize(images, windows, 256, 256, table, matrix, flags=build.PORTABLE_FLAGS)
    assert all((a - b).abs().max() < 1e-5 for a, b in zip(native, portable))


def test_a_failed_compile_leaves_nothing_to_load(tmp_path, monkeypatch):
    """A compiler that writes half a library and then fails: the next build of the same key must
    compile again, not load the half library."""
    require_c_compiler()
    broken = tmp_path / "broken-cc"
    broken.write_text("#!/bin/sh\nfor a; do [ \"$prev\" = -o ] && echo half > \"$a\"; prev=$a; done\n"
                      "case \" $* \" in *' -shared '*) echo 'ld: error: boom' >&2; exit 1;; esac\n")
    broken.chmod(0o755)
    monkeypatch.setattr(build, "library_key", lambda *args: "one-key")
    monkeypatch.setenv("CC", str(broken))
    cache = tmp_path / "cache"
    with pytest.raises(build.KernelUnavailable, match="boom"):
        build.build(folder=cache)
    assert not list(cache.iterdir())
    monkeypatch.delenv("CC")
    assert build.build(folder=cache).lib.p2p_kernel_version() == build.VERSION


@pytest.mark.parametrize("compiler", ["missing", "failing"])
def test_no_kernel_means_one_notice_and_the_eager_numbers(tmp_path, monkeypatch, compiler):
    monkeypatch.setattr(cpu, "_BUILT", {})
    monkeypatch.setenv("P2P_KERNEL_CACHE", str(tmp_path / "cache"))
    if compiler == "missing":
        monkeypatch.setenv("PATH", str(tmp_path))
        monkeypatch.delenv("CC", raising=False)
    else:
        fake = tmp_path / "cc"
        fake.write_text("#!/bin/sh\necho 'fatal error: no space' >&2\nexit 1\n")
        fake.chmod(0o755)
        monkeypatch.setenv("CC", str(fake))
    task = colorize("fused")
    notice = task.device_step.notice(torch.device("cpu"))
    assert notice and "\n" not in notice and ("no C compiler" in notice if compiler == "missing" else "failed" in notice)
    images = photo_batch(260)
    got = task.prepare(images, 256, None, crop_gen=step_generator(0, 0, 0))
    expected = colorize("eager").prepare(images, 256, None, crop_gen=step_generator(0, 0, 0))
    assert all(torch.equal(g, e) for g, e in zip(got, expected))


def test_loading_the_kernel_keeps_denormals(tmp_path):
    """gcc's -ffast-math at link time adds crtfastmath.o, which would switch the whole process to
    flush-to-zero when the library loads: torch's numbers would change everywhere."""
    require_c_compiler()
    code = textwrap.dedent(f"""
        import numpy as np
        from pathlib import Path
        from p2p.fused import build
        tiny = np.array([1e-40], np.float32)
        assert tiny[0] * np.float32(2) > 0
        built = build.build(folder=Path({str(tmp_path)!r}))
        assert tiny[0] * np.float32(2) > 0, "denormals flushed after loading " + str(built.path)
    """)
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=p2p_env(), cwd=ROOT,
                          timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]


def test_config_key_and_eager_mode():
    from p2p.config import help_table, load_config
    from p2p.errors import UsageError

    assert load_config().data.device_step == "fused"
    assert "data.device_step" in [row[0] for row in help_table()]
    with pytest.raises(UsageError, match="device_step"):
        load_config(None, ["data.device_step=turbo"])
    assert colorize("eager").device_step.implementation(torch.device("cpu")).startswith("eager")


# ------------------------------------------------------------------------- runs and processes


@pytest.mark.slow
def test_two_process_batches_are_unchanged_by_the_fusion(tmp_path):
    """2 ranks (gloo), shards through the wds backend with a worker: the fused device step, run one
    batch ahead, sees the same samples and gives the same pixels as the eager one, per step."""
    from helpers import image_folders as F
    from helpers.runs import torchrun
    from p2p.data.shards import make_shards

    F.make_coco_like(tmp_path / "src", n=24, seed=3, scale=0.25)
    make_shards(tmp_path / "src", tmp_path / "shards", size=72, val_fraction=0.0, shard_size_mb=0.05, workers=1)
    torchrun("tests/helpers/ddp_prepare_worker.py", tmp_path, "--steps", 4, f"data.source={tmp_path / 'shards'}",
             "data.load_size=72", "data.image_size=64", "model.num_downs=5", "train.batch_size=3",
             "data.workers=1")
    ranks = [torch.load(tmp_path / f"rank{r}.pt") for r in (0, 1)]
    for got in ranks:
        fused, eager = got["fused"], got["eager"]
        assert fused["keys"] == eager["keys"] and len(fused["keys"]) == 4
        for a, b in zip(fused["inputs"] + fused["targets"], eager["inputs"] + eager["targets"]):
            assert a.shape == b.shape and (a - b).abs().max() < 1e-5
        assert not torch.equal(fused["inputs"][0], fused["inputs"][1])  # real, different batches
    keys = [{k for batch in got["fused"]["keys"] for k in batch} for got in ranks]
    assert keys[0] and not keys[0] & keys[1]


def test_prepare_ahead_gives_each_step_its_own_batch():
    """One batch ahead in a thread or in line: the same (input, target) for every step."""
    from p2p.config import load_config
    from p2p.data import build_loader
    from p2p.data.prefetch import PreparedBatches, device_batches
    from p2p.train.run import prepare_batch

    cfg = load_config(None, ["data.workers=0", "train.batch_size=2", "data.epoch_size=6"])
    task, cpu_device = build_task(cfg.task), torch.device("cpu")
    runs = []
    for ahead in (False, True):
        loader = build_loader(cfg, "train", 0, 1, cpu_device)
        stream = PreparedBatches(device_batches(loader, 0, 1, cpu_device),
                                 lambda batch, step: prepare_batch(task, batch.images, cfg, 0, step), 5, ahead, end=12)
        runs.append([next(stream) for _ in range(7)])  # crosses an epoch boundary
        stream.close()
    for (e1, i1, (a1, b1)), (e2, i2, (a2, b2)) in zip(*runs):
        assert (e1, i1) == (e2, i2) and torch.equal(a1, a2) and torch.equal(b1, b2)
    assert [(e, i) for e, i, _ in runs[0]][:3] == [(0, 1), (0, 2), (1, 0)]


def test_loader_decode_keeps_libjpeg_turbos_accurate_pixels():
    """The loaders' decoder (simplejpeg) gives torchvision's (libjpeg-turbo islow) pixels exactly,
    for 4:4:4 (what p2p shard writes) and 4:2:0 JPEGs of real photos."""
    import io

    from PIL import Image
    from torchvision.io import ImageReadMode, decode_jpeg

    from p2p.data import decode

    assert decode.simplejpeg is not None
    for i, photo in enumerate(list(photos().values())[:4]):
        buf = io.BytesIO()
        Image.fromarray(photo[:200, :260]).convert("RGB").save(buf, "JPEG", quality=95 - 20 * (i % 2),
                                                                  subsampling=0 if i % 2 else 2)
        data = buf.getvalue()
        reference = decode_jpeg(torch.frombuffer(bytearray(data), dtype=torch.uint8), mode=ImageReadMode.RGB)
        assert torch.equal(decode.decode_rgb(data), reference)


@pytest.mark.slow
def test_fusable_functions_compile_as_one_graph():
    """torch.compile(fullgraph=True) traces p2p.fused.cuda without a graph break and the compiled
    code gives the uncompiled numbers. Inductor generates C++ here, Triton on a GPU (that part is
    in tests/test_gpu.py); the graph both start from is the same."""
    x = photo_batch(80)
    windows = draw_windows(len(x), 80, 80, 64, step_generator(0, 0, 1))
    rows, cols = cuda.window_indices(*windows, 64, x.device)
    for name, table in (("colorize", color._gamma_table(x.device)), ("gray2rgb", torch.arange(256.0) / 255)):
        fn = getattr(cuda, name)
        compiled = torch.compile(fn, fullgraph=True, dynamic=False)(x, rows, cols, table)
        assert all((a - b).abs().max() < 1e-6 for a, b in zip(compiled, fn(x, rows, cols, table)))
