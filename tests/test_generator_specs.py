"""Every generator registered in p2p.specs.generators through its contract (timm's test over
every registered model): built tiny from the config keys it reads, an output of the input's
shape at any multiple of its stride, one stride rule for the config, the arch and the module,
its official layout read back by loading.py's inference to the same network (and by no other
spec's), FLOPs that grow with the image area. A new generator is tested by registering it."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from p2p.config import load_config, with_values
from p2p.errors import WeightsError
from p2p.models import build_generator, init_weights, load_generator
from p2p.models.arch import OPTIONAL_FIELDS, GeneratorArch
from p2p.models.loading import generator_arch_of, in_p2p_names
from p2p.specs import load
from p2p.specs.generators import GENERATORS, SHARED
from p2p.tasks import build_task
from p2p.train.flops import forward_flops
from p2p.train.nets import architectures

NAMES = GENERATORS.names()


def tiny(name: str):
    """The config's defaults for generator `name` at width 4, at the smallest image it takes."""
    spec = GENERATORS[name]
    model = dataclasses.replace(load_config().model, generator=name, ngf=4, ndf=4)
    stride = spec.config_stride(model)
    side = stride * max(spec.min_strides, -(-32 // stride))  # 32 px at least: the PatchGAN's smallest
    cfg = load_config(None, [f"model.generator={name}", "model.ngf=4", "model.ndf=4", f"data.image_size={side}",
                             f"data.load_size={side}", "task.name=paired"])
    g_arch, _ = architectures(cfg, build_task(cfg.task))
    torch.manual_seed(0)
    return cfg, g_arch, init_weights(build_generator(g_arch)).eval(), side


@pytest.mark.parametrize("name", NAMES)
def test_builds_tiny_and_keeps_the_input_shape_at_multiples_of_its_stride(name):
    cfg, arch, G, side = tiny(name)
    stride = cfg.model.stride
    assert stride == arch.stride == G.stride == GENERATORS[name].config_stride(cfg.model)  # one rule
    assert arch.kind == name and (G.in_channels, G.out_channels) == (3, 3)
    with torch.no_grad():
        for h, w in ((side, side), (side, side + stride)):
            y = G(torch.rand(1, 3, h, w) * 2 - 1)
            assert y.shape == (1, 3, h, w) and y.abs().max() <= 1
    with pytest.raises(Exception, match="data.image_size"):  # a side off the stride is a config error
        with_values(cfg, {"data.image_size": side + stride // 2, "data.load_size": side + stride})


@pytest.mark.parametrize("name", NAMES)
def test_reads_the_config_keys_its_spec_lists(name):
    spec = GENERATORS[name]
    cfg, arch, _, _ = tiny(name)
    model = cfg.model
    for key, field in spec.reads:
        assert key.startswith("model.") and field in OPTIONAL_FIELDS
        assert getattr(arch, field) == getattr(model, key.partition(".")[2])
        bumped = dataclasses.replace(model, **{key.partition(".")[2]: getattr(model, key.partition(".")[2]) + 1})
        assert spec.arch_values(bumped)[field] == getattr(arch, field) + 1
    for field in set(OPTIONAL_FIELDS) - set(spec.fields):  # what it does not read is 0, whatever the config says
        assert getattr(arch, field) == 0
    assert {k: getattr(arch, k) for k in SHARED if k != "dropout"} == {"ngf": 4, "norm": model.norm}
    assert arch.dropout == (model.dropout and spec.dropout)


@pytest.mark.parametrize("name", NAMES)
def test_its_official_layout_round_trips_through_loadings_inference(name):
    spec = GENERATORS[name]
    _, arch, G, side = tiny(name)
    state = G.state_dict()
    official = load(spec.to_official)(state) if spec.to_official else dict(state)
    # read back: the same architecture, only from its own spec's layout
    named = in_p2p_names(official)
    assert generator_arch_of(named, arch.dropout) == arch
    found = [s.name for s in GENERATORS if load(s.layout)(named, arch.dropout) is not None]
    assert found == [name]
    loaded = load_generator(official, dropout=arch.dropout)
    assert all(torch.equal(v, loaded.state_dict()[k]) for k, v in state.items())
    x = torch.rand(1, 3, side, side) * 2 - 1
    with torch.no_grad():
        assert torch.equal(loaded(x), G(x))


@pytest.mark.parametrize("name", NAMES)
def test_flops_are_positive_and_grow_with_the_area(name):
    _, arch, _, side = tiny(name)
    with torch.device("meta"):
        G = build_generator(arch)
    small = forward_flops(G, (1, arch.in_channels, side, side))
    large = forward_flops(G, (1, arch.in_channels, 2 * side, 2 * side))
    assert small > 0 and large == 4 * small  # fully convolutional: every layer's work scales with the pixels


def test_a_recorded_arch_without_a_registered_kind_is_refused_in_one_line():
    _, arch, G, _ = tiny("unet")
    saved = dataclasses.asdict(arch)
    for kind, needle in ((None, "records no generator kind"), ("vit", "kind='vit'")):
        record = {k: v for k, v in saved.items() if k != "kind"} if kind is None else {**saved, "kind": kind}
        ckpt = {"format": "p2p", "arch": {"generator": record}, "generator": G.state_dict()}
        with pytest.raises(WeightsError, match=needle):
            load_generator(ckpt)


def test_a_resnet_arch_records_no_u_net_depth():
    """The ResNet's two downsamplings are fixed: its arch has no num_downs to disagree with."""
    arch = GeneratorArch(3, 3, 7, 8, "batch", False, "resnet", 2)
    assert arch.num_downs == 0 and arch.stride == 4


@pytest.mark.parametrize("name", NAMES)
def test_its_model_card_line_shows_the_settings_a_folder_records(name):
    from p2p.model_card import _architecture
    from p2p.export import config_tree

    cfg, arch, _, _ = tiny(name)
    model = config_tree(arch, cfg)["model"]
    line = _architecture(model, {"stride": arch.stride})
    assert "ngf 4" in line and all(str(model[key.partition(".")[2]]) in line for key, _ in GENERATORS[name].reads)


def test_a_checkpoint_arch_without_kind_is_not_the_same_network():
    from p2p.models import DiscriminatorArch, arch_dict, same_arch

    _, g, _, _ = tiny("unet")
    d = DiscriminatorArch(6, 4)
    saved = arch_dict(g, d)
    assert same_arch(saved, g, d)
    del saved["generator"]["kind"]
    assert not same_arch(saved, g, d) and not same_arch(None, g, d) and not same_arch({"generator": 5}, g, d)


@pytest.mark.parametrize("name", NAMES)
def test_the_coarse_to_fine_keys_are_taken_only_by_a_spec_that_says_so(name):
    """model.init_global and train.fix_global_steps start and freeze a global part; the config
    takes them for the generators whose spec has one (`coarse_to_fine`) and refuses them, naming
    the key, for the others."""
    cfg, _, _, _ = tiny(name)
    for key, value in (("train.fix_global_steps", 3), ("model.init_global", "global.pt")):
        if GENERATORS[name].coarse_to_fine:
            assert with_values(cfg, {key: value}) is not None
        else:
            with pytest.raises(Exception, match=key.replace(".", r"\.")):
                with_values(cfg, {key: value})
