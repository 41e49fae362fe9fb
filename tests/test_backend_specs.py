"""Every registered data backend (p2p.specs.backends.BACKENDS) against the loader contract of
p2p.data, driven by its spec: uint8 N x 3 x H x W batches with their keys, the same
batches_per_epoch on every rank, ranks reading disjoint samples, a resumed epoch giving the same
batches, and an epoch begun under another world size continued where the spec says it can
(refused in one line where it says not). A new backend is tested by registering it; one that
cannot run here (a GPU, an optional package) is skipped with the reason."""

from __future__ import annotations

import pickle
import warnings
from dataclasses import dataclass

import pytest
import torch

from helpers import image_folders as F
from helpers.requirements import require_dali
from p2p.config import Config, with_values
from p2p.data import Backend, build_loader, importable, resolve_backend
from p2p.data.shards import make_shards
from p2p.errors import UsageError
from p2p.specs.backends import BACKENDS
from p2p.train.position import continue_loader

SIZE, BATCH = 48, 2


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    root = tmp_path_factory.mktemp("backend_specs")
    F.make_coco_like(root / "src", n=20, seed=3, scale=0.25)
    make_shards(root / "src", root / "shards", size=SIZE, val_fraction=0.2, shard_size_mb=0.02, workers=1)
    F.make_coco_like(root / "one_src", n=1, seed=4, scale=0.25)
    make_shards(root / "one_src", root / "one", size=SIZE, val_fraction=0.0, workers=1)
    return root


def runnable(spec) -> torch.device:
    """The device a spec's loader runs on here; skips (with the reason) when it cannot run here."""
    if spec.package == "nvidia.dali":
        require_dali()  # fails instead where CI requires DALI (P2P_REQUIRE_DALI=1)
    if spec.package and not importable(spec.package):
        pytest.skip(f"data.backend={spec.name} needs {spec.package}, not importable here")
    if spec.needs_gpu and not torch.cuda.is_available():
        pytest.skip(f"data.backend={spec.name} runs on {', '.join(spec.devices)} only: this machine has no CUDA GPU")
    return torch.device("cuda" if spec.needs_gpu else "cpu")


def config(data, spec, **values) -> Config:
    source = data / ("shards" if spec.needs_shards else "src")
    return with_values(Config(), {
        "data.backend": spec.name, "data.source": str(source), "data.load_size": SIZE, "data.image_size": 32,
        "data.val_fraction": 0.2, "data.val_images": 4, "data.workers": 0, "train.batch_size": BATCH,
        "model.num_downs": 5, **values})


@dataclass
class State:  # the position fields of p2p.train.checkpoint.TrainState that p2p.train.position reads
    epoch: int
    epoch_history: list


def keys(batches) -> list[str]:
    return [k for b in batches for k in b.keys]


@pytest.fixture(params=BACKENDS.names())
def spec(request):
    return BACKENDS[request.param]


def test_batches_keep_the_contract_on_every_rank(data, spec):
    device = runnable(spec)
    cfg = config(data, spec)
    loaders = [build_loader(cfg, "train", rank, 2, device) for rank in range(2)]
    assert loaders[0].batches_per_epoch == loaders[1].batches_per_epoch >= 2
    per_rank = []
    for loader in loaders:
        batches = list(loader.epoch(0))
        assert len(batches) == loader.batches_per_epoch == loader.epoch_batches(0)
        for b in batches:
            assert b.images.dtype == torch.uint8 and tuple(b.images.shape) == (BATCH, 3, SIZE, SIZE)
            assert len(b.keys) == BATCH and all(isinstance(k, str) and k for k in b.keys)
        per_rank.append(keys(batches))
    assert not set(per_rank[0]) & set(per_rank[1]), "ranks read disjoint samples"
    assert all(len(set(k)) == len(k) for k in per_rank), "no sample twice in a rank's epoch"


def test_a_resumed_epoch_gives_the_same_batches(data, spec):
    device = runnable(spec)
    cfg = config(data, spec)
    full = list(build_loader(cfg, "train", 0, 1, device).epoch(1))
    tail = list(build_loader(cfg, "train", 0, 1, device).epoch(1, start=1))  # a fresh process's loader
    assert keys(tail) == keys(full[1:]) and tail
    assert all(torch.equal(a.images.cpu(), b.images.cpu()) for a, b in zip(tail, full[1:]))


@pytest.mark.parametrize("world", [1, 3])
def test_an_epoch_begun_by_two_ranks_goes_on_where_the_spec_says_it_can(data, spec, world):
    device = runnable(spec)
    cfg = config(data, spec)
    read = [k for rank in range(2) for k in keys(list(build_loader(cfg, "train", rank, 2, device).epoch(0))[:1])]
    state = State(epoch=0, epoch_history=[(2, BATCH, 1)])  # two ranks read one batch each
    backend = resolve_backend(cfg.data.source, spec.name, device)
    loaders = [build_loader(cfg, "train", rank, world, device, backend) for rank in range(world)]
    if not spec.continues_other_world:
        with pytest.raises(UsageError) as e:
            continue_loader(loaders[0], state, backend)
        message = str(e.value)
        assert "\n" not in message and message.startswith(f"data.backend={spec.name} cannot continue epoch 0")
        assert "resume with 2 process(es) and train.batch_size=2" in message
        return
    rest = []
    for loader in loaders:
        continue_loader(loader, state, backend)
        assert loader.epoch_batches(0) == loaders[0].epoch_batches(0)
        rest += keys(loader.epoch(0))
    seen = read + rest
    assert len(set(seen)) == len(seen), "no image of the epoch read twice"
    assert 0 <= loaders[0].sample_count - len(seen) < world * BATCH, "none skipped but a remainder too small"
    assert [len(b.keys) for b in loaders[0].epoch(1)] == [BATCH] * loaders[0].batches_per_epoch, \
        "the next epoch is a plain one"


def test_a_refusal_under_auto_names_the_backend_auto_chose(data):
    """What `auto` became is what the refusal names (it was resolved once and passed on)."""
    require_dali()
    spec = BACKENDS["dali"]
    cfg = config(data, spec)
    loader = build_loader(cfg, "train", 0, 1)
    chosen = Backend(spec, cfg.data.source, by_auto=True)
    with pytest.raises(UsageError, match=r"^data\.backend=dali \(chosen by auto\) cannot continue epoch 3"):
        continue_loader(loader, State(epoch=3, epoch_history=[(2, BATCH, 1)]), chosen)


def test_auto_reads_the_table_and_is_resolved_once(data):
    shards, images = str(data / "shards"), str(data / "src")
    on_cpu = resolve_backend(shards, "auto", torch.device("cpu"))
    assert (on_cpu, on_cpu.by_auto, on_cpu.setting) == ("wds", True, "data.backend=wds (chosen by auto)")
    assert on_cpu.spec is BACKENDS["wds"] and pickle.loads(pickle.dumps(on_cpu)).setting == on_cpu.setting
    assert resolve_backend(images, "auto") == "folder"
    assert resolve_backend(shards, "wds").setting == "data.backend=wds"
    for spec in BACKENDS:  # on a GPU, auto takes the lowest auto_rank that imports: never one that cannot run
        if spec.needs_shards and "cpu" not in spec.auto_devices:
            assert spec.package or spec.needs_gpu
    with pytest.raises(UsageError, match="did you mean 'dali'"):
        resolve_backend(shards, "dalli")


def test_the_config_offers_the_registered_backends():
    from p2p.config.schema import BACKENDS as CHOICES

    assert CHOICES == ("auto", *BACKENDS.names())


def test_dali_reading_a_split_smaller_than_the_world_says_so_once(data):
    require_dali()
    one = str(data / "one")
    cfg = with_values(config(data, BACKENDS["dali"]), {"data.source": one, "data.val_source": one})
    loader = build_loader(cfg, "val", 1, 2)  # rank 0 of 2 has none of the one sample
    with pytest.warns(UserWarning, match=r"data\.backend=dali: the train split .* holds 1 sample\(s\), fewer than "
                                         r"the 2 processes .* wds reader"):
        batches = list(loader.epoch(0))
    assert [len(b.keys) for b in batches] == [1]
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # once: the next epoch reads the same way without a word
        assert [b.keys for b in loader.epoch(1)] == [b.keys for b in batches]
