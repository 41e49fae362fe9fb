"""Security: configs from a careless or hostile hand (issue 22). Every numeric key has bounds
(checked before anything starts), every float must be finite, and a YAML file or override that
PyYAML or Python cannot read (not UTF-8, nested 20000 deep, an int of 5000 digits) is one line
and exit 2, never a traceback."""

from __future__ import annotations

import dataclasses

import pytest

from p2p.cli import main
from p2p.config import Config, from_tree, help_table, load_config, sections
from p2p.config.schema import bounds_of
from p2p.errors import UsageError

DEEP = "[" * 20000 + "]" * 20000
LONG_INT = "9" * 5000


def _one_line_exit_2(argv, capsys) -> str:
    assert main(argv) == 2
    captured = capsys.readouterr()
    err = captured.err.strip()
    assert len(err.splitlines()) == 1 and "Traceback" not in err, err[-2000:]
    assert len(err) < 400, "the line quotes the value, not all of it"
    return err


@pytest.mark.parametrize("override, needle", [
    ("model.init_gain=nan", "must be a finite number"),
    ("model.init_gain=.nan", "must be a finite number"),
    ("optim.lr=.inf", "must be a finite number"),
    ("loss.lambda_l1=-.inf", "must be a finite number"),
    ("task.noise_std=1e999", "must be a finite number"),  # float("1e999") is inf
    ("run.seed=1e40", "expected int"),
    ("run.seed=1.0e+40", "expected int"),
    (f"run.seed={10**40}", "must be between 0 and"),
    ("data.load_size=1e8", "expected int"),
    ("data.load_size=100000000", "must be between 1 and 16384"),
    (f"train.batch_size={LONG_INT}", "4300 digits"),
    (f"optim.lr={DEEP}", "nested too deeply"),
    (f"run.name={DEEP}", "nested too deeply"),
    ("a." * 20000 + "b=1", "unknown config key"),
    ("slurm.extra." + "a." * 20000 + "b=1", "sbatch long options"),
    ("slurm.extra.mem=.nan", "must be a finite number"),
    (f"slurm.extra.mem={10**30}", "must be a finite number below 2**63"),
    ("train.max_steps=10000000000000000", "must be between 1 and"),
    ("train.batch_size=100000000", "must be between 1 and"),
    ("model.ngf=1000000", "must be between 1 and"),
    ("train.timeout_s=100000000000", "must be between 1 and"),
])
def test_bad_numbers_and_unreadable_overrides_are_one_line_exit_2(override, needle, capsys):
    err = _one_line_exit_2(["config", override], capsys)
    assert needle in err, err


def _yaml(tmp_path, name: str, data: bytes) -> str:
    path = tmp_path / name
    path.write_bytes(data)
    return str(path)


@pytest.mark.parametrize("name, data, needle", [
    ("latin1.yaml", b"run:\n  name: caf\xe9\n", "is not UTF-8 text (byte 0xe9 at offset 16)"),
    ("utf16.yaml", "run:\n  seed: 1\n".encode("utf-16"), "is not UTF-8 text"),
    ("deep.yaml", f"run:\n  name: {DEEP}\n".encode(), "nested too deeply"),
    ("deep_map.yaml", ("{a: " * 20000 + "1" + "}" * 20000).encode(), "nested too deeply"),
    ("long_int.yaml", f"run:\n  seed: {LONG_INT}\n".encode(), "4300 digits"),
    ("nan.yaml", b"model:\n  init_gain: .nan\n", "must be a finite number"),
    ("big.yaml", b"data:\n  load_size: 100000000\n", "must be between 1 and 16384"),
    ("base.yaml", b"base: [a.yaml]\n", "must be the path of another config file"),
    ("huge.yaml", b"run:\n  name: x\n" + b"#" * (2 << 20), "larger than a config can be"),
])
def test_unreadable_or_out_of_bounds_yaml_is_one_line_exit_2(tmp_path, name, data, needle, capsys):
    err = _one_line_exit_2(["config", _yaml(tmp_path, name, data)], capsys)
    assert needle in err and (name in err or needle.startswith("must")), err  # a bad value names its key


def test_bounds_are_generous_for_real_use():
    cfg = load_config(None, ["data.load_size=8192", "data.image_size=8192", "model.num_downs=8",
                             "train.batch_size=4096", "train.max_steps=100000000", "run.seed=4294967296",
                             "slurm.nodes=512", "slurm.gpus_per_node=8", "slurm.mem_gb=2048", "model.ngf=256",
                             "optim.lr=1e-7", "model.init_gain=1.0", "loss.lambda_l1=1000"])
    assert cfg.data.load_size == 8192 and cfg.train.batch_size == 4096


def _numeric_keys() -> list[tuple[str, str]]:
    return [(name, f.name) for name, cls in sections().items() for f in dataclasses.fields(cls)
            if f.type in ("int", "float")]


@pytest.mark.parametrize("section, key", _numeric_keys())
def test_every_numeric_key_has_bounds_and_refuses_huge_and_non_finite_values(section, key):
    assert bounds_of(f"{section}.{key}") is not None, f"{section}.{key} has no bounds"
    field = next(f for f in dataclasses.fields(sections()[section]) if f.name == key)
    huge = [10**40, -10**40] + ([float("nan"), float("inf"), -float("inf"), 1e300] if field.type == "float" else [])
    for value in huge:
        with pytest.raises(UsageError) as info:
            from_tree({section: {key: value}})
        assert "\n" not in str(info.value) and len(str(info.value)) < 300


def test_config_keys_shows_each_numeric_keys_bounds():
    rows = {key: text for key, _, text in help_table()}
    assert rows["data.load_size"].endswith("[1 .. 16384]")
    assert rows["model.init_gain"].endswith("]") and rows["run.name"][-1] != "]"


def test_a_checkpoint_config_is_held_to_the_same_bounds():
    # what predict/eval build from a checkpoint's pickled config: ints of any size survive pickle
    for tree in ({"data": {"load_size": 10**7}}, {"run": {"seed": 10**5000}}, {"model": {"init_gain": float("nan")}},
                 {"train": {"batch_size": [[[[1]]]] * 3}}, {"data": {("a",) * 3: 1}}):
        with pytest.raises(UsageError) as info:
            from_tree(tree)
        assert "\n" not in str(info.value) and len(str(info.value)) < 300, str(info.value)[:500]
    assert from_tree({"data": {"load_size": 256, "image_size": 256}, "model": {"num_downs": 8}}) != Config()
