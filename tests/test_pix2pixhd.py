"""pix2pixHD's coarse-to-fine generators (`model.generator=global|local`): layout, parameters and
outputs equal to an independent restatement of pix2pixHD's networks (tests/helpers/
pix2pixhd_layout.py), import of its latest_net_G.pth files, the config's checks, and the
coarse-to-fine schedule (a frozen global part, a local run started from a global one)."""

from __future__ import annotations

import pytest
import torch

from p2p.config import load_config
from p2p.errors import UsageError, WeightsError
from p2p.models import build_generator, hd_arch, init_weights, load_generator
from p2p.models.pix2pixhd import GlobalGenerator, LocalEnhancer

from helpers.official_layout import assert_same_outputs, randomize
from helpers.pix2pixhd_layout import HDGlobal, HDLocal, hd_state_dict

NORMS = ["batch", "instance"]


def count(net):
    return sum(p.numel() for p in net.parameters())


@pytest.mark.parametrize("norm", NORMS)
@pytest.mark.parametrize("n_down, n_blocks", [(4, 9), (3, 2), (1, 1)])
def test_global_keys_and_counts_match_pix2pixhd(norm, n_down, n_blocks):
    ours = build_generator(hd_arch("global", 5, 3, 8, n_down, n_blocks, 0, 0, norm))
    theirs = HDGlobal(5, 3, 8, n_down, n_blocks, norm)
    assert list(ours.state_dict()) == list(theirs.state_dict())
    assert count(ours) == count(theirs)
    assert (ours.stride, ours.in_channels, ours.out_channels) == (2 ** n_down, 5, 3)


@pytest.mark.parametrize("norm", NORMS)
@pytest.mark.parametrize("n_local, n_blocks_local", [(1, 3), (2, 1), (1, 0)])
def test_local_keys_and_counts_match_pix2pixhd(norm, n_local, n_blocks_local):
    ours = build_generator(hd_arch("local", 4, 3, 4, 2, 2, n_local, n_blocks_local, norm))
    theirs = HDLocal(4, 3, 4, 2, 2, n_local, n_blocks_local, norm)
    assert list(ours.state_dict()) == list(theirs.state_dict())
    assert count(ours) == count(theirs)
    assert (ours.stride, ours.in_channels, ours.out_channels) == (2 ** (2 + n_local), 4, 3)


def test_pix2pixhd_default_global_generator_size():
    # pix2pixHD's label2city global generator: 35 labels + the instance edge map in, ngf 64, 4
    # downsamplings, 9 blocks, instance norm; its count from the restatement
    ours = build_generator(hd_arch("global", 36, 3, 64, 4, 9, 0, 0, "instance"))
    assert count(ours) == count(HDGlobal(36, 3, 64, 4, 9, "instance"))
    assert all(m.bias is not None for m in ours.modules() if isinstance(m, (torch.nn.Conv2d, torch.nn.ConvTranspose2d)))


@pytest.mark.parametrize("norm", NORMS)
def test_pix2pixhd_global_weights_give_its_outputs(tmp_path, norm):
    theirs = randomize(HDGlobal(5, 3, 8, 3, 2, norm), seed=5).eval()
    torch.save(hd_state_dict(theirs), tmp_path / "latest_net_G.pth")
    ours = load_generator(tmp_path / "latest_net_G.pth")
    assert isinstance(ours, GlobalGenerator) and ours.stride == 8
    assert_same_outputs(ours, theirs, torch.randn(2, 5, 32, 48))


@pytest.mark.parametrize("norm", NORMS)
@pytest.mark.parametrize("n_local", [1, 2])
def test_pix2pixhd_local_weights_give_its_outputs(tmp_path, norm, n_local):
    theirs = randomize(HDLocal(4, 3, 4, 2, 2, n_local, 2, norm), seed=6).eval()
    torch.save(hd_state_dict(theirs), tmp_path / "latest_net_G.pth")
    ours = load_generator(tmp_path / "latest_net_G.pth")
    assert isinstance(ours, LocalEnhancer)
    assert (ours.n_local_enhancers, ours.stride, ours.in_channels, ours.out_channels) == \
        (n_local, 4 * 2 ** n_local, 4, 3)
    assert_same_outputs(ours, theirs, torch.randn(2, 4, 8 * 2 ** n_local, 12 * 2 ** n_local))


def test_pix2pixhd_weights_with_an_odd_layout_are_one_line():
    state = dict(HDLocal(3, 3, 4, 2, 2, 1, 1, "batch").state_dict())
    state["model1_1.1.weight"] = torch.zeros(4, 3, 5, 5)  # not a 7x7 stem
    with pytest.raises(WeightsError) as e:
        load_generator(state)
    assert "\n" not in str(e.value) and "model1_1.1.weight" in str(e.value)


def test_the_pix2pix_resnet_still_loads_as_the_resnet():
    from helpers.official_layout import OfficialResnet

    g = load_generator(OfficialResnet(3, 3, 8, "batch", False, 2).state_dict())
    assert type(g).__name__ == "ResnetGenerator"


# ------------------------------------------------------------------------------------- config


@pytest.mark.parametrize("overrides, needle", [
    (["model.generator=global", "data.image_size=16", "data.load_size=20"], "at least 32"),  # stride 16: 1 px
    (["model.generator=local", "model.n_downsample_global=2", "data.image_size=20", "data.load_size=40"],
     "multiple of 8"),
    (["train.fix_global_steps=5"], "train.fix_global_steps=5: freezes the global part"),
    (["model.generator=global", "model.init_global=x.pt", "data.image_size=64", "data.load_size=72"],
     "model.init_global='x.pt'"),
    (["model.generator=local", "model.n_local_enhancers=0"], "model.n_local_enhancers=0"),
])
def test_bad_high_resolution_settings_are_one_line(overrides, needle):
    with pytest.raises(UsageError, match=needle.replace(".", r"\.")) as e:
        load_config(None, overrides)
    assert "\n" not in str(e.value)


def test_config_strides():
    cfg = load_config(None, ["model.generator=local", "model.n_downsample_global=3", "model.n_local_enhancers=2",
                             "data.image_size=64", "data.load_size=72"])
    assert cfg.model.stride == 32


# ----------------------------------------------------------------------------- coarse to fine


def tiny_local_cfg(*extra):
    return load_config(None, ["model.generator=local", "model.ngf=4", "model.ndf=8", "model.n_downsample_global=2",
                              "model.n_blocks_global=2", "model.n_blocks_local=1", "model.norm=instance",
                              "data.image_size=32", "data.load_size=40", "optim.impl=plain", *extra])


def one_step(cfg, frozen_step):
    from p2p.tasks import build_task
    from p2p.train.coarse_to_fine import frozen_parameters
    from p2p.train.nets import build_nets, build_networks
    from p2p.precision import Precision
    from p2p.train.step import train_step

    from helpers.image_folders import photo_batch

    torch.manual_seed(0)
    task = build_task(cfg.task)
    G, D = build_networks(cfg, task)
    precision = Precision("fp32", torch.device("cpu"))
    nets = build_nets(G, D, D, cfg, torch.device("cpu"), precision, task=task)
    before = {k: v.clone() for k, v in G.state_dict().items()}
    nets.frozen_g = frozen_parameters(G, cfg, frozen_step)
    inp, target = task.prepare(photo_batch(2, 32), 32, None)
    train_step(nets, inp, target, cfg.loss, precision)
    return G, before, nets


def test_a_frozen_global_part_does_not_move_and_the_enhancer_does():
    cfg = tiny_local_cfg("train.fix_global_steps=3")
    G, before, nets = one_step(cfg, frozen_step=2)
    after = G.state_dict()
    moved = {k for k in before if not torch.equal(before[k], after[k])}
    assert moved and all(k.startswith(("model1_1.", "model1_2.")) for k in moved)
    assert not any(k.startswith("model.") for k in moved)
    # Adam holds no state for the frozen weights: they start fresh when they thaw (pix2pixHD's new optimizer)
    frozen = {id(p) for p in G.global_part.parameters()}
    assert not any(id(p) in frozen for p in nets.opt_g.state)


def test_after_fix_global_steps_everything_trains():
    cfg = tiny_local_cfg("train.fix_global_steps=3")
    G, before, _ = one_step(cfg, frozen_step=3)
    after = G.state_dict()
    assert any(not torch.equal(before[k], after[k]) for k in before if k.startswith("model."))


def test_init_global_copies_a_global_generator_into_the_global_part(tmp_path):
    from p2p.train.coarse_to_fine import start_global_part

    source = randomize(HDGlobal(1, 2, 8, 2, 2, "instance"), seed=7)
    torch.save(hd_state_dict(source), tmp_path / "global_G.pth")
    local = init_weights(build_generator(hd_arch("local", 1, 2, 4, 2, 2, 1, 1, "instance")))
    start_global_part(local, tmp_path / "global_G.pth")
    theirs = source.model.state_dict()
    for k, v in local.global_part.state_dict().items():
        assert torch.equal(v, theirs[k]), k
    # the global's own head (its last conv) is not part of the enhancer
    assert len(local.global_part) == len(source.model) - 3


@pytest.mark.parametrize("make, needle", [
    (lambda: HDGlobal(1, 2, 4, 2, 2, "instance"), "does not fit"),  # ngf not 2**n_local x the local ngf
    (lambda: HDLocal(1, 2, 4, 2, 2, 1, 1, "instance"), "not a global generator"),
])
def test_init_global_that_does_not_fit_is_one_line(tmp_path, make, needle):
    from p2p.train.coarse_to_fine import start_global_part

    torch.save(hd_state_dict(make()), tmp_path / "G.pth")
    local = build_generator(hd_arch("local", 1, 2, 4, 2, 2, 1, 1, "instance"))
    with pytest.raises(UsageError, match=needle) as e:
        start_global_part(local, tmp_path / "G.pth")
    assert "\n" not in str(e.value)


# ------------------------------------------------------------------------ the whole life cycle

HD_TINY = ["run.deterministic=true", "data.image_size=32", "data.load_size=40", "model.ndf=8", "model.norm=instance",
           "model.n_downsample_global=2", "model.n_blocks_global=2", "train.batch_size=2", "data.epoch_size=8",
           "data.val_images=2", "data.workers=0", "train.log_every=1", "train.sample_every=0", "train.eval_every=0",
           "optim.impl=plain"]


@pytest.mark.slow
def test_global_then_local_train_resume_predict_and_export(tmp_path):
    """A global run; a local run started from it with the global part frozen for 3 of 6 steps and
    activation checkpointing on; the same local run cut at 2 and resumed ends identical; its
    checkpoint predicts and exports to ONNX and TorchScript."""
    from helpers.runs import load_ckpt, run_p2p
    from helpers.same_run import assert_same_run

    out = f"run.out_dir={tmp_path}"
    run_p2p("train", out, "run.name=global", *HD_TINY, "model.generator=global", "model.ngf=8", "train.max_steps=2")
    start = tmp_path / "global" / "checkpoints" / "last.pt"
    local = [out, *HD_TINY, "model.generator=local", "model.ngf=4", "model.n_blocks_local=1",
             f"model.init_global={start}", "train.fix_global_steps=3", "train.activation_checkpointing=generator", "train.max_steps=6",
             "train.ckpt_every=3"]
    run_p2p("train", *local, "run.name=straight")
    run_p2p("train", *local, "run.name=cut", "train.stop_after=2", check=False)
    assert "resumed" in run_p2p("train", *local, "run.name=cut").stderr
    assert_same_run(tmp_path / "straight", tmp_path / "cut")

    trained = load_ckpt(start)["generator"]
    at3 = load_ckpt(tmp_path / "straight" / "checkpoints" / "step-00000003.pt")["generator"]
    last = load_ckpt(tmp_path / "straight" / "checkpoints" / "last.pt")["generator"]
    part = [k for k in at3 if k.startswith("model.")]
    assert part and all(torch.equal(at3[k], trained[k]) for k in part)  # started from it, frozen
    assert any(not torch.equal(last[k], at3[k]) for k in part)  # and trained after step 3
    assert load_ckpt(tmp_path / "straight" / "checkpoints" / "last.pt")["arch"]["generator"]["kind"] == "local"

    from PIL import Image

    Image.new("RGB", (40, 24), (120, 60, 30)).save(tmp_path / "a.png")
    ckpt = tmp_path / "straight" / "checkpoints" / "last.pt"
    run_p2p("predict", ckpt, tmp_path / "a.png", "--out", tmp_path / "pred")
    assert (tmp_path / "pred" / "a.png").is_file()
    for fmt in ("onnx", "torchscript"):
        proc = run_p2p("export", ckpt, "--format", fmt, "--out", tmp_path / f"G.{fmt}")
        assert (tmp_path / f"G.{fmt}").is_file() and "max |" in proc.stdout


# ------------------------------------------------------------------------------ small inputs


def test_predict_pads_small_inputs_to_the_two_pixels_the_coarsest_blocks_need():
    from p2p.config import TaskConfig
    from p2p.inference import Geometry, predict
    from p2p.tasks import build_task

    G = build_generator(hd_arch("local", 3, 3, 4, 2, 1, 1, 1, "instance")).eval()  # stride 8: 16 px at least
    task = build_task(TaskConfig(name="paired"))
    with torch.no_grad():
        out = predict(G, task, torch.rand(1, 3, 10, 12), Geometry("scale", 8))
    assert out.shape == (1, 3, 10, 12) and torch.isfinite(out).all()


def test_a_tile_smaller_than_the_network_needs_is_one_line():
    from p2p.tiling import Tiling

    with pytest.raises(UsageError, match="--tile 8 must be at least 16") as e:
        Tiling(8, 2).check(8, build_generator(hd_arch("local", 3, 3, 4, 2, 1, 1, 1, "instance")).min_side)
    assert "\n" not in str(e.value)
