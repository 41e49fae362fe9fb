"""Every registered task (p2p.specs.tasks.TASKS) through the task contract: a new task is tested
by registering it. The spec says what the task is; these tests hold its implementation, the
networks, the loader, `p2p predict` and `p2p shard` to what it says."""

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from helpers.image_folders import make_coco_like, make_paired, photo_batch
from helpers.label_maps import make_layout
from p2p.config import TaskConfig, load_config
from p2p.specs import load
from p2p.specs.tasks import TASKS, TaskSpec
from p2p.tasks import Task, build_task

NAMES = TASKS.names()
SIDE = 32  # sample side: the crop is the whole sample, so the round trip sees every pixel


def _sample(spec: TaskSpec, n: int = 2, side: int = SIDE) -> torch.Tensor:
    """A uint8 batch shaped as the loaders deliver it for `spec`: real photos, A|B for pairs
    (two different photos, so a swapped half shows)."""
    photos = photo_batch(3, side)
    if spec.input_kind == "labels":  # A: class ids (< the default label_nc) in channel 0, boundaries 0/255 in 1
        g = torch.Generator().manual_seed(0)
        ids = torch.randint(0, TaskConfig().label_nc, (n, 1, side, side), generator=g, dtype=torch.uint8)
        edges = torch.randint(0, 2, (n, 1, side, side), generator=g, dtype=torch.uint8) * 255
        a = torch.cat([ids, edges, torch.zeros_like(ids)], dim=1)
        return torch.cat([a, photos[:n]], dim=-1).contiguous()
    if spec.paired:
        return torch.cat([photos[:n], photos[1:n + 1].flip(-1)], dim=-1).contiguous()
    return photos[:n].contiguous()


def _cfg(name: str, **over):
    tiny = {"task.name": name, "data.image_size": SIDE, "data.load_size": SIDE, "model.ngf": 4, "model.ndf": 4,
            "model.num_downs": 3, "data.workers": 0, "train.batch_size": 2, "run.name": "t"}
    tiny.update(over)
    return load_config(None, [f"{k}={v}" for k, v in tiny.items()])


@pytest.mark.parametrize("name", NAMES)
def test_the_spec_names_its_implementation_and_kernel(name):
    spec = TASKS[name]
    task = build_task(TaskConfig(name=name))
    assert isinstance(task, Task) and type(task) is spec.task_class() and task.spec is spec and task.name == name
    assert type(task)(TaskConfig(name=name)).spec is spec  # a class called directly finds its own spec
    assert task.fused_device_step == (spec.device_step is not None)
    if spec.device_step is not None:
        assert callable(load(spec.device_step))


@pytest.mark.parametrize("direction", ["AtoB", "BtoA"])
@pytest.mark.parametrize("device_step", ["fused", "eager"])
@pytest.mark.parametrize("name", NAMES)
def test_round_trip_recombines_the_target_into_the_image(name, device_step, direction):
    """uint8 sample -> (input, target) -> output_rgb(input, target) gives back the image the model
    should produce (eval_pair's target) within the task's known loss, and `model_input` of the
    RGB a user would give predict is what training fed the model."""
    spec = TASKS[name]
    if spec.input_kind == "labels" and direction == "BtoA":
        pytest.skip("a label map is only ever the input (task.direction=BtoA is refused for it)")
    cfg = TaskConfig(name=name, direction=direction)
    task = build_task(cfg, device_step)
    images = _sample(spec)
    inp, target = task.prepare(images, SIDE, None, flip=False, crop_gen=None)
    given, want = task.eval_pair(images, None)
    if not spec.paired:
        assert torch.equal(want, images.float() / 255)  # a single image is its own target
    else:
        half = images[..., SIDE:] if direction == "AtoB" else images[..., :SIDE]
        assert torch.equal(want, half.float() / 255)
    # Lab <-> RGB in float32: the true ab with the input's L is the image within 1/255; an RGB
    # output in [-1, 1] is the image up to float rounding.
    tolerance = 1 / 255 if spec.recombination == "input_lightness" else 1e-6
    back = task.output_rgb(inp, target)
    assert back.shape == want.shape and (back - want).abs().max() <= tolerance
    assert (task.output_rgb_autograd(inp, target) - back).abs().max() <= 1e-4
    # what predict feeds the model (model_input of the user's RGB) is what training fed it;
    # colorize's float L and its 8-bit table agree to 1e-4 of the normalised range
    assert (task.model_input(given) - inp).abs().max() <= (1e-4 if spec.recombination == "input_lightness" else 1e-6)
    shown = task.input_rgb(inp)
    assert shown.shape == want.shape and shown.min() >= 0 and shown.max() <= 1


@pytest.mark.parametrize("name", NAMES)
def test_channel_counts_are_the_generators(name):
    spec = TASKS[name]
    from p2p.models import build_generator
    from p2p.train.nets import architectures

    cfg = _cfg(name)
    task = build_task(cfg.task)
    g_arch, d_arch = architectures(cfg, task)
    inp, target = task.prepare(_sample(spec), SIDE, None, crop_gen=None)
    assert spec.channels(cfg.task) == (g_arch.in_channels, g_arch.out_channels) == (inp.shape[1], target.shape[1])
    assert d_arch.in_channels == inp.shape[1] + target.shape[1]
    G = build_generator(g_arch).eval()
    with torch.no_grad():
        assert G(inp).shape == target.shape


@pytest.mark.parametrize("name", NAMES)
def test_geometry_is_what_the_loader_delivers(name, tmp_path):
    spec = TASKS[name]
    if spec.input_kind == "labels":
        make_layout(tmp_path / "src", n_train=4, size=48, instances=False)
    elif spec.paired:
        make_paired(tmp_path / "src", n=4, size=48, seed=1)
    else:
        make_coco_like(tmp_path / "src", n=4, seed=1, scale=0.25)
    cfg = _cfg(name, **{"data.source": str(tmp_path / "src"), "data.backend": "folder", "data.val_fraction": 0,
                        "data.load_size": 40})
    from p2p.data import build_loader

    batch = next(iter(build_loader(cfg, "train").epoch(0)))
    assert tuple(batch.images.shape) == (2, *spec.sample_shape(40)) and batch.images.dtype == torch.uint8
    assert spec.geometry == ("2:1" if batch.images.shape[-1] == 2 * batch.images.shape[-2] else "square")


@pytest.mark.parametrize("name", NAMES)
def test_eval_pair_is_two_rgb_images_of_the_target_size(name):
    spec = TASKS[name]
    images = _sample(spec, n=1, side=24)
    given, want = build_task(TaskConfig(name=name)).eval_pair(images, None)
    for x in (given, want):
        assert x.shape == (1, 3, 24, 24) and x.dtype == torch.float32 and x.min() >= 0 and x.max() <= 1


def _save(path: Path, array: np.ndarray, mode: str = "RGB") -> None:
    Image.fromarray(array).convert(mode).save(path, quality=95)


@pytest.mark.parametrize("name", NAMES)
def test_p2p_shard_keeps_what_the_shard_filter_says(name, tmp_path):
    from p2p.data.shards import make_shards

    spec = TASKS[name]
    src = tmp_path / "src"
    src.mkdir()
    photo = photo_batch(1, 48)[0].permute(1, 2, 0).numpy()
    if spec.input_kind == "labels":  # pix2pixHD's folders; a colour picture given as a map is left out
        src = make_layout(tmp_path / "labels", n_train=2, size=48, instances=False)
        _save(sorted((src / "train_label").iterdir())[0], photo)
        kept, skipped = 2, {"label_not_ids": 1}  # 1 of 2 train pairs + the val pair
    elif spec.paired:
        _save(src / "pair.jpg", np.concatenate([photo, photo[:, ::-1]], axis=1))  # 96 x 48: A|B
        _save(src / "tall.jpg", np.concatenate([photo, photo], axis=0))  # 48 x 96: not two halves
        kept, skipped = 1, {"not_side_by_side": 1}
    else:
        _save(src / "colour.jpg", photo)
        _save(src / "gray.png", photo, "L")
        kept, skipped = (1, {"grayscale": 1}) if spec.shard_filter == "colour" else (2, {})
    m = make_shards(src, tmp_path / "out", task=name, size=32, workers=1,
                    val_fraction=None if spec.input_kind == "labels" else 0.0)  # labels: val_* folders are the split
    assert m["train"]["count"] + m["val"]["count"] == kept
    assert {r: n for r, n in m["skipped_counts"].items() if n} == skipped


def test_the_choices_of_task_name_are_the_table():
    import argparse

    from p2p.cli import eval as eval_cli, export, predict, shard
    from p2p.config.schema import TaskConfig as Schema

    assert Schema.__dataclass_fields__["name"].metadata["choices"] == NAMES
    for module in (shard, predict, export, eval_cli):
        parser = argparse.ArgumentParser()
        module.add_arguments(parser)
        (task,) = [a for a in parser._actions if a.dest == "task"]
        assert tuple(task.choices) == NAMES, module.__name__


def test_tasks_sit_below_the_config_and_the_shards():
    """p2p.specs.tasks imports nothing heavy, and p2p.data.shards reads it instead of p2p.config
    (the import that ran back up a floor)."""
    code = ("import sys, p2p.specs.tasks; heavy = [m for m in ('torch', 'numpy') if m in sys.modules]; "
            "assert not heavy, heavy; import p2p.data.shards; assert 'p2p.config' not in sys.modules")
    subprocess.run([sys.executable, "-c", code], check=True, cwd=Path(__file__).parents[1])


def test_a_spec_may_take_its_channels_from_the_task_config_and_refuses_unknown_kinds():
    """A label-map task (issue 25) has as many input channels as its config's classes."""
    from types import SimpleNamespace

    labels = TaskSpec("labels", "p2p.tasks:Paired", "", in_channels=lambda cfg: cfg.label_nc + cfg.instance,
                      paired=True, input_kind="labels")
    assert labels.channels(SimpleNamespace(label_nc=35, instance=1)) == (36, 3) and labels.geometry == "2:1"
    assert TASKS["colorize"].channels() == (1, 2) and TASKS["colorize"].sample_shape(8) == (3, 8, 8)
    with pytest.raises(ValueError, match="recombination='lab' is not one of"):
        TaskSpec("x", "m:X", "", recombination="lab")
    with pytest.raises(ValueError, match="shard filter applies to single images"):
        TaskSpec("x", "m:X", "", paired=True, shard_filter="colour")


@pytest.mark.parametrize("name", NAMES)
def test_predict_follows_the_spec_for_weights_that_record_no_task(name, tmp_path):
    from helpers.official_layout import OfficialUnet, randomize
    from p2p.inference import infer_task, load_predictor, predict

    spec = TASKS[name]
    cin, cout = spec.channels(TaskConfig(name=name))
    torch.save(randomize(OfficialUnet(cin, cout, 5, 8, "batch")).state_dict(), tmp_path / "latest_net_G.pth")
    guessed = load_predictor(str(tmp_path / "latest_net_G.pth"))
    assert guessed.task.name == infer_task(cin, cout) and guessed.task.spec.channels(guessed.task.cfg) == (cin, cout)
    p = load_predictor(str(tmp_path / "latest_net_G.pth"), name)
    assert p.task.spec is spec and p.geometry().mode == spec.predict_geometry
    rgb = _sample(spec, n=1, side=40)[..., :40].float() / 255
    out = predict(p.G, p.task, rgb[..., :36], p.geometry())
    assert out.shape == (1, 3, 40, 36) and out.min() >= 0 and out.max() <= 1


def test_weights_whose_channels_no_task_has_are_a_usage_error(tmp_path):
    from helpers.official_layout import OfficialUnet, randomize
    from p2p.errors import UsageError
    from p2p.inference import load_predictor

    torch.save(randomize(OfficialUnet(3, 1, 5, 8, "batch")).state_dict(), tmp_path / "odd.pth")
    with pytest.raises(UsageError, match=r"odd.pth maps 3->1 channels, which no task does \(colorize 1->2"):
        load_predictor(str(tmp_path / "odd.pth"))


def test_ab_inputs_and_b_dir_need_a_paired_task(tmp_path):
    from helpers.runs import run_p2p

    (tmp_path / "a").mkdir()
    _save(tmp_path / "a" / "x.png", photo_batch(1, 32)[0].permute(1, 2, 0).numpy())
    single = next(s.name for s in TASKS if not s.paired)
    proc = run_p2p("predict", tmp_path / "none.pt", tmp_path / "a", "--out", tmp_path / "o", "--ab", "--task", single,
                   check=False)
    assert proc.returncode == 2 and "--ab only applies to a task of A|B pairs (--task paired)" in proc.stderr
    assert "Traceback" not in proc.stderr and len(proc.stderr.strip().splitlines()) == 1, proc.stderr
    proc = run_p2p("shard", tmp_path / "a", tmp_path / "s", "--b-dir", tmp_path / "a", "--task", single, check=False)
    assert proc.returncode == 2 and "needs a paired task (--task paired)" in proc.stderr, proc.stderr
