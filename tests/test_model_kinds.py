"""The generator and discriminator kinds beyond pix2pix's defaults: the official ResnetGenerator
(resnet_9blocks / resnet_6blocks) and pix2pixHD's multi-scale discriminator, each norm:
shapes, parameter counts, official state dicts built here loading with equal outputs, export
back, and one-line refusals of weights p2p does not support."""

import pytest
import torch

from p2p.errors import UsageError, WeightsError
from p2p.models import (DiscriminatorArch, build_discriminator, build_generator, load_discriminator, load_generator,
                        resnet_arch)
from p2p.models.official import generator_to_official

from helpers.official_layout import OfficialMultiscaleD, OfficialNLayerD, OfficialResnet, assert_same_outputs, randomize

NORMS = ["batch", "instance", "none"]


def count(net):
    return sum(p.numel() for p in net.parameters())


def test_resnet_9blocks_parameter_count():
    # CycleGAN's resnet_9blocks (instance norm, 3 -> 3, ngf 64): the official code prints 11.378 M
    g = build_generator(resnet_arch(3, 3, 9, 64, "instance", False))
    assert count(g) == count(OfficialResnet(3, 3, 64, "instance", False, 9)) == 11_378_179
    # batch norm drops the conv biases and adds affine norm weights
    assert count(build_generator(resnet_arch(3, 3, 9, 64, "batch", False))) == 11_383_427


@pytest.mark.parametrize("norm", NORMS)
@pytest.mark.parametrize("n_blocks, dropout", [(9, False), (6, True), (2, True)])
def test_resnet_counts_and_keys_match_the_official_layout(norm, n_blocks, dropout):
    ours = build_generator(resnet_arch(1, 2, n_blocks, 8, norm, dropout))
    official = OfficialResnet(1, 2, 8, norm, dropout, n_blocks)
    assert count(ours) == count(official)
    assert list(ours.state_dict()) == list(official.state_dict())
    assert generator_to_official(ours.state_dict()).keys() == official.state_dict().keys()


@pytest.mark.parametrize("size", [32, 36, 64])
def test_resnet_shapes_and_range(size):
    g = build_generator(resnet_arch(1, 3, 2, 8, "batch", False)).eval()
    y = g(torch.randn(2, 1, size, 48))
    assert y.shape == (2, 3, size, 48) and y.abs().max() <= 1 and g.stride == 4
    assert (g.in_channels, g.out_channels) == (1, 3)


@pytest.mark.parametrize("norm", NORMS)
@pytest.mark.parametrize("n_blocks, dropout", [(9, False), (6, True)])
def test_official_resnet_weights_give_official_outputs(tmp_path, norm, n_blocks, dropout):
    official = randomize(OfficialResnet(3, 3, 8, norm, dropout, n_blocks), seed=3).eval()
    torch.save(official.state_dict(), tmp_path / "latest_net_G.pth")
    ours = load_generator(tmp_path / "latest_net_G.pth")
    # everything read off the tensors, dropout included (it shifts the blocks' second conv)
    assert (ours.n_blocks, ours.model[1].out_channels, ours.in_channels, ours.out_channels) == (n_blocks, 8, 3, 3)
    assert any(isinstance(m, torch.nn.Dropout) for m in ours.modules()) == dropout
    assert_same_outputs(ours, official, torch.randn(2, 3, 32, 40))
    # and export gives the official network the same weights back
    back = generator_to_official(ours.state_dict())
    assert all(torch.equal(back[k], v) for k, v in official.state_dict().items())


def test_old_official_resnet_with_instance_norm_running_stats_loads():
    # checkpoints from before PyTorch 0.4 tracked InstanceNorm statistics; the official loader drops them
    official = randomize(OfficialResnet(3, 3, 8, "instance", False, 2))
    state = dict(official.state_dict())
    state["model.2.running_mean"], state["model.2.running_var"] = torch.zeros(8), torch.ones(8)
    g = load_generator(state)
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in g.modules())


@pytest.mark.parametrize("state, needle", [
    # 4 downsamplings and dropout: neither pix2pix's ResnetGenerator nor pix2pixHD's GlobalGenerator
    (OfficialResnet(3, 3, 8, "instance", True, 2, n_downsampling=4).state_dict(), "4 stride-2 downsamplings"),
    ({"foo.weight": torch.zeros(3)}, "not a generator p2p supports"),
    (OfficialNLayerD(6, 8, 3, "batch").state_dict(), "looks like a discriminator"),
])
def test_unsupported_generator_weights_are_one_line(state, needle):
    with pytest.raises(WeightsError, match=needle) as e:
        load_generator(state)
    assert "\n" not in str(e.value) and isinstance(e.value, UsageError)


def test_resnet_with_biases_before_batch_norm_is_refused():
    state = dict(randomize(OfficialResnet(3, 3, 8, "batch", False, 2)).state_dict())
    state["model.1.bias"] = torch.zeros(8)  # pix2pixHD-style conv bias in front of batch norm
    with pytest.raises(WeightsError, match=r"unexpected \['model\.1\.bias'\]"):
        load_generator(state)


def test_predict_with_an_unsupported_official_file_is_exit_2(tmp_path):
    from helpers.runs import run_p2p

    torch.save(OfficialResnet(3, 3, 8, "instance", True, 2, n_downsampling=4).state_dict(), tmp_path / "G.pth")
    from PIL import Image

    Image.new("RGB", (32, 32)).save(tmp_path / "a.png")
    proc = run_p2p("predict", tmp_path / "G.pth", tmp_path / "a.png", "--out", tmp_path / "o", check=False)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    line = proc.stderr.strip()
    assert len(line.splitlines()) == 1 and "G.pth" in line and "GlobalGenerator" in line, line


# ------------------------------------------------------------------------------ discriminators


@pytest.mark.parametrize("norm", NORMS)
@pytest.mark.parametrize("n_layers, num_d", [(3, 2), (2, 3), (0, 2)])
def test_multiscale_discriminator_equals_pix2pixhd_composition(norm, n_layers, num_d):
    official = randomize(OfficialMultiscaleD(6, 8, n_layers, norm, num_d), seed=4).eval()
    # pix2pixHD's layer<num_D-1> is the full-resolution discriminator, p2p's scales.0
    state = {}
    for s in range(num_d):
        for k, v in getattr(official, f"layer{num_d - 1 - s}").state_dict().items():
            state[f"scales.{s}.{k}"] = v
    ours = load_discriminator(state)
    arch = DiscriminatorArch(6, 8, n_layers, norm, num_d)
    assert count(ours) == count(official) == num_d * count(build_discriminator(DiscriminatorArch(6, 8, n_layers, norm)))
    assert count(build_discriminator(arch)) == count(ours)
    x = torch.randn(2, 6, 64, 48)
    with torch.no_grad():
        got, want = ours(x), official(x)
        assert len(got) == len(want) == num_d
        for s, (a, b) in enumerate(zip(got, want)):
            assert a.shape == b.shape, s
            torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)
        # the intermediate activations that feature matching compares
        got, want = ours(x, features=True), official(x, intermediate=True)
        for a_scale, b_scale in zip(got, want):
            assert len(a_scale) == len(b_scale) == (n_layers + 2 if n_layers else 3)
            for a, b in zip(a_scale, b_scale):
                torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)


def test_multiscale_scales_halve_the_patch_grid():
    d = build_discriminator(DiscriminatorArch(3, 8, 3, "batch", 3)).eval()
    sides = [p.shape[-1] for p in d(torch.randn(1, 3, 256, 256))]
    assert sides == [30, 14, 6]  # 256, 128, 64 px through a 70x70 PatchGAN


def test_single_scale_is_todays_discriminator():
    d = build_discriminator(DiscriminatorArch(6, 8, 3, "batch", 1))
    assert isinstance(d(torch.randn(1, 6, 64, 64)), torch.Tensor)
    assert next(iter(d.state_dict())) == "model.0.weight"  # the official layout, no scales prefix


def test_pix2pixhd_discriminator_files_are_refused():
    official = OfficialMultiscaleD(6, 8, 3, "instance", 2)
    with pytest.raises(WeightsError, match="pix2pixHD multi-scale discriminator") as e:
        load_discriminator(official.state_dict())
    assert "\n" not in str(e.value)


def test_p2p_checkpoint_records_the_new_kinds(tmp_path):
    from p2p.models import arch_dict, same_arch

    g, d = resnet_arch(1, 2, 6, 8, "instance", True), DiscriminatorArch(3, 8, 2, "instance", 2)
    G, D = build_generator(g), build_discriminator(d)
    from p2p.checkpoint_file import sealed

    payload = {"format": "p2p", "arch": arch_dict(g, d), "generator": G.state_dict(), "discriminator": D.state_dict()}
    torch.save(sealed(payload), tmp_path / "ck.pt")
    assert load_generator(tmp_path / "ck.pt").n_blocks == 6
    assert len(load_discriminator(tmp_path / "ck.pt").scales) == 2
    assert same_arch(arch_dict(g, d), g, d)
    assert not same_arch(arch_dict(g, d), resnet_arch(1, 2, 9, 8, "instance", True), d)
    # a recorded discriminator without num_d is a single PatchGAN (an arch without a generator
    # kind is refused: tests/test_generator_specs.py::test_a_checkpoint_arch_without_kind_...)
    from p2p.models import GeneratorArch

    unet, patch = GeneratorArch(1, 2, 5, 8, "batch", True), DiscriminatorArch(3, 8, 3, "batch")
    saved = {"generator": {"in_channels": 1, "out_channels": 2, "num_downs": 5, "ngf": 8, "norm": "batch",
                           "dropout": True, "kind": "unet"},
             "discriminator": {"in_channels": 3, "ndf": 8, "n_layers": 3, "norm": "batch"}}
    assert same_arch(saved, unet, patch) and not same_arch(saved, unet, d)


@pytest.mark.slow
def test_resnet_and_multiscale_train_predict_eval_and_export(tmp_path):
    """From `p2p train` through the checkpoint, `p2p predict`, `p2p eval` and export to the
    official layout, with the ResNet generator and a 2-scale discriminator."""
    import json

    from PIL import Image

    from helpers.runs import TINY, load_ckpt, run_p2p
    from p2p.data.folder import embedded_photo

    run_p2p("train", f"run.out_dir={tmp_path}", "run.name=r", *TINY, "model.generator=resnet", "model.n_blocks=3",
            "model.num_d=2", "model.n_layers_d=2", "loss.lambda_feat=10", "train.max_steps=2")
    ck = load_ckpt(tmp_path / "r" / "checkpoints" / "last.pt")
    assert ck["arch"]["generator"]["kind"] == "resnet" and ck["arch"]["discriminator"]["num_d"] == 2
    src = tmp_path / "in"
    src.mkdir()
    Image.fromarray(embedded_photo("coffee")[:70, :53]).save(src / "a.png")  # not a multiple of 4
    run_p2p("predict", tmp_path / "r" / "checkpoints" / "last.pt", src, "--out", tmp_path / "out")
    assert Image.open(tmp_path / "out" / "a.png").size == (53, 70)
    run_p2p("eval", tmp_path / "r" / "checkpoints" / "last.pt", "--data", src, "--json", tmp_path / "e.json")
    assert json.loads((tmp_path / "e.json").read_text())["count"] == 1
    G = load_generator(tmp_path / "r" / "checkpoints" / "last.pt")
    official = OfficialResnet(1, 2, 8, "batch", True, 3).eval()
    official.load_state_dict(generator_to_official(G.state_dict()))
    x = torch.randn(1, 1, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(official(x), G(x), rtol=1e-5, atol=1e-6)
