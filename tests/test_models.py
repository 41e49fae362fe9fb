"""Models: exact official topology, parameter counts, init, and loading official weights."""

import pytest
import torch

from p2p.models import (DiscriminatorArch, GeneratorArch, build_discriminator, build_generator, init_weights,
                        load_discriminator, load_generator)
from p2p.models.official import generator_from_official, generator_to_official

from helpers.official_layout import OfficialNLayerD, OfficialPixelD, OfficialUnet, assert_same_outputs, randomize


def count(net):
    return sum(p.numel() for p in net.parameters())


def test_official_parameter_counts():
    assert count(build_generator(GeneratorArch(3, 3, 8, 64, "batch"))) == 54_413_955
    assert count(build_discriminator(DiscriminatorArch(6, 64, 3, "batch"))) == 2_768_705


@pytest.mark.parametrize("norm", ["batch", "instance", "none"])
@pytest.mark.parametrize("num_downs", [5, 6, 7])
def test_counts_match_official_layout(norm, num_downs):
    ours = build_generator(GeneratorArch(1, 2, num_downs, 8, norm))
    official = OfficialUnet(1, 2, num_downs, 8, norm, dropout=True)
    assert count(ours) == count(official)
    assert set(generator_to_official(ours.state_dict())) == set(official.state_dict())


@pytest.mark.parametrize("in_ch, out_ch, num_downs, size", [(1, 2, 5, 32), (3, 3, 6, 64), (1, 3, 7, 128)])
def test_generator_shapes_and_range(in_ch, out_ch, num_downs, size):
    g = build_generator(GeneratorArch(in_ch, out_ch, num_downs, 8)).eval()
    y = g(torch.randn(2, in_ch, size, size))
    assert y.shape == (2, out_ch, size, size) and y.abs().max() <= 1


@pytest.mark.parametrize("n_layers, out_side", [(0, 64), (1, 30), (2, 14), (3, 6)])
def test_discriminator_patch_grid(n_layers, out_side):
    d = build_discriminator(DiscriminatorArch(3, 8, n_layers))
    assert d(torch.randn(2, 3, 64, 64)).shape == (2, 1, out_side, out_side)


def test_dropout_sits_in_the_8ngf_decoder_blocks():
    g = build_generator(GeneratorArch(3, 3, 8, 4, dropout=True))
    with_dropout = [k for k, up in enumerate(g.up) if isinstance(up.dropout, torch.nn.Dropout)]
    assert with_dropout == [4, 5, 6]  # official: the num_downs-5 blocks between innermost and 8ngf level 3


@pytest.mark.parametrize("norm", ["batch", "instance", "none"])
@pytest.mark.parametrize("num_downs, size", [(5, 32), (8, 256)])
def test_official_generator_weights_give_official_outputs(tmp_path, norm, num_downs, size):
    official = randomize(OfficialUnet(3, 3, num_downs, 8, norm, dropout=True), seed=1).eval()
    torch.save(official.state_dict(), tmp_path / "latest_net_G.pth")
    keys = official.state_dict()
    assert "model.model.1.model.1.weight" in keys and "model.model.1.model.3.model.1.weight" in keys
    ours = load_generator(tmp_path / "latest_net_G.pth")
    assert (ours.num_downs, ours.down[0].conv.out_channels) == (num_downs, 8)
    # train mode too: batch statistics, the official in-place skip activations
    assert_same_outputs(ours, official, torch.randn(2, 3, size, size))


@pytest.mark.parametrize("which", ["G", "D"])
def test_old_official_instance_norm_files_with_running_stats_load(which):
    # before PyTorch 0.4 InstanceNorm tracked statistics; they are no batch norm's
    official = randomize(OfficialUnet(1, 2, 6, 8, "instance") if which == "G" else OfficialNLayerD(6, 8, 3, "instance"))
    state = dict(official.state_dict())
    norms = {"model.model.1.model.2": 16, "model.model.1.model.6": 8} if which == "G" else {"model.3": 16}
    for norm, ch in norms.items():
        state[f"{norm}.running_mean"], state[f"{norm}.running_var"] = torch.zeros(ch), torch.ones(ch)
    net = load_generator(state) if which == "G" else load_discriminator(state)
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in net.modules())
    assert any(isinstance(m, torch.nn.InstanceNorm2d) for m in net.modules())


def test_official_state_without_num_batches_tracked_loads():
    official = randomize(OfficialUnet(1, 2, 6, 8, "batch"))
    state = {k: v for k, v in official.state_dict().items() if not k.endswith("num_batches_tracked")}
    load_generator(state)


@pytest.mark.parametrize("norm", ["batch", "instance", "none"])
@pytest.mark.parametrize("n_layers", [0, 1, 3])
def test_official_discriminator_weights(tmp_path, norm, n_layers):
    official = OfficialPixelD(6, 8, norm) if n_layers == 0 else OfficialNLayerD(6, 8, n_layers, norm)
    randomize(official, seed=2).eval()
    torch.save(official.state_dict(), tmp_path / "latest_net_D.pth")
    ours = load_discriminator(tmp_path / "latest_net_D.pth")
    x = torch.randn(2, 6, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(ours(x), official(x), rtol=1e-5, atol=1e-6)


def test_official_mapping_round_trips():
    state = build_generator(GeneratorArch(3, 3, 8, 4)).state_dict()
    back = generator_from_official(generator_to_official(state))
    assert back.keys() == state.keys() and all(torch.equal(back[k], state[k]) for k in state)


def test_ddp_prefixed_state_dict_loads():
    g = build_generator(GeneratorArch(1, 2, 5, 8))
    state = {f"module.{k}": v for k, v in g.state_dict().items()}
    assert load_generator(state).down[0].conv.in_channels == 1


def test_mismatched_state_dict_is_an_error():
    state = build_generator(GeneratorArch(1, 2, 5, 8)).state_dict()
    state["down.1.conv.weight"] = torch.zeros(3, 3, 4, 4)
    with pytest.raises(ValueError, match=r"does not fit the inferred network: size mismatch for down\.1\.conv\.weight"):
        load_generator(state)
    state = build_generator(GeneratorArch(1, 2, 5, 8)).state_dict()
    del state["up.2.norm.weight"]
    with pytest.raises(ValueError, match=r"does not fit the inferred network: missing \['up\.2\.norm\.weight'\]"):
        load_generator(state)


def _fans(w: torch.Tensor) -> tuple[int, int]:
    """torch.nn.init's fan_in / fan_out of a conv weight (ConvTranspose2d swaps the roles)."""
    receptive = w[0, 0].numel()
    return w.shape[1] * receptive, w.shape[0] * receptive


@pytest.mark.parametrize("init_type", ["normal", "xavier", "kaiming", "orthogonal"])
def test_init_types(init_type):
    torch.manual_seed(0)
    gain = 0.02
    g = init_weights(build_generator(GeneratorArch(1, 2, 6, 16)), init_type, gain)
    d = init_weights(build_discriminator(DiscriminatorArch(3, 16, 3)), init_type, gain)
    convs = [m for m in list(g.modules()) + list(d.modules()) if isinstance(m, (torch.nn.Conv2d, torch.nn.ConvTranspose2d))]
    for m in convs:
        w = m.weight.detach().double()
        fan_in, fan_out = _fans(w)
        if init_type == "orthogonal":  # rows of the flattened weight (or its columns) are orthogonal, norm gain
            flat = w.flatten(1)
            gram = flat @ flat.T if flat.shape[0] <= flat.shape[1] else flat.T @ flat
            torch.testing.assert_close(gram, gain ** 2 * torch.eye(len(gram), dtype=gram.dtype), atol=1e-9, rtol=1e-6)
            continue
        expect = {"normal": gain, "xavier": gain * (2.0 / (fan_in + fan_out)) ** 0.5,
                  "kaiming": (2.0 / fan_in) ** 0.5}[init_type]
        n = w.numel()
        # the sample std of n normal draws is within a few std / sqrt(2n) of the true std
        assert abs(w.std().item() - expect) < 5 * expect / (2 * n) ** 0.5 + 1e-12, (init_type, w.shape)
        assert abs(w.mean().item()) < 5 * expect / n ** 0.5
        if m.bias is not None:
            assert m.bias.abs().sum() == 0
    for m in g.modules():
        if isinstance(m, torch.nn.BatchNorm2d):  # official: N(1, gain) weights, zero biases
            assert m.bias.abs().sum() == 0
            assert abs(m.weight.mean().item() - 1.0) < 5 * gain / m.weight.numel() ** 0.5
            assert abs(m.weight.std().item() - gain) < 0.5 * gain


def test_predict_runs_official_weights(tmp_path):
    """`p2p predict` with an official latest_net_G.pth gives the official network's output."""
    import numpy as np
    from PIL import Image

    from p2p.cli import main
    from p2p.data.folder import embedded_photo

    official = randomize(OfficialUnet(3, 3, 5, 8, "batch", dropout=True)).eval()
    torch.save(official.state_dict(), tmp_path / "latest_net_G.pth")
    photo = embedded_photo("coffee")[100:164, 200:264]  # the model size: no resampling on the way
    Image.fromarray(photo).save(tmp_path / "facade.png")
    assert main(["predict", str(tmp_path / "latest_net_G.pth"), str(tmp_path / "facade.png"),
                 "--out", str(tmp_path / "out"), "--size", "64", "--device", "cpu"]) == 0
    got = np.asarray(Image.open(tmp_path / "out" / "facade.png")).astype(np.float64) / 255
    x = torch.from_numpy(photo).permute(2, 0, 1)[None].float() / 127.5 - 1
    with torch.no_grad():
        want = ((official(x)[0].permute(1, 2, 0).double().numpy() + 1) / 2).clip(0, 1)
    assert got.shape == want.shape
    assert np.abs(got - want).max() <= 0.5 / 255 + 1e-6  # the PNG's 8-bit rounding only
