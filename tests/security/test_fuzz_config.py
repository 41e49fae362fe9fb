"""Security fuzz (issue 22): a few hundred seeded mutations of YAML configs, dotted overrides and
checkpoint files (bytes flipped, cut short, and payloads re-sealed with hostile values, so that
the checksum matches), thrown at config loading, at the checkpoint reader, at the loaders and
at `p2p predict`. Every answer is success, or one line and exit 2 (in the API: one
`UsageError`/`CheckpointError` line), never a traceback or another exception. In-process, but
for two subprocess calls that check the real exit code and stderr."""

from __future__ import annotations

import random
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from PIL import Image

from helpers.payloads import tiny_payload
from p2p.checkpoint_file import read_checkpoint_file, sealed
from p2p.cli import main as p2p_main
from p2p.config import Config, load_config
from p2p.errors import UsageError
from p2p.models import load_discriminator, load_generator
from p2p.train.checkpoint import Checkpoints

ROOT = Path(__file__).resolve().parents[2]
SEED = 22
HOSTILE_SCALARS = ["nan", ".nan", ".inf", "-.inf", "1e999", "1e40", "-1", "0", "2", "999999999999999999999999",
                   "9" * 5000, "'x'", "[]", "{}", "null", "true", "[[[[[[[[1]]]]]]]]", "[" * 3000 + "]" * 3000,
                   "{a: " * 3000 + "1" + "}" * 3000, "!!python/object:os.system ls", "&a [*a]", "\"\\xff\"",
                   "0x7fffffffffffffff", "1_000_000", "2020-01-01", "~", "'..'", "8192", "-0.0"]
PYTHON_HOSTILE = [float("nan"), float("inf"), -1, 0, 10**40, 10**5000, "abc", "", None, True, [], {}, [[[[1]]]],
                  [1] * 1000, {"a": {"b": {"c": 1}}}, torch.zeros(3), torch.full((2, 2), float("nan")), 2.5,
                  ("tuple",), b"bytes"]


def _one_line(err: str) -> bool:
    lines = [ln for ln in err.splitlines() if ln.strip()]
    return len(lines) <= 1 and "Traceback" not in err


def _config_answers(argv: list[str], capsys) -> None:
    rc = p2p_main(["config", *argv])
    captured = capsys.readouterr()
    assert rc in (0, 2), (argv[:1], rc, captured.err[-1500:])
    assert _one_line(captured.err) and (rc == 0) == (captured.err.strip() == ""), captured.err[-1500:]


def _mutate_text(rng: random.Random, text: bytes) -> bytes:
    data = bytearray(text)
    for _ in range(rng.randint(1, 4)):
        kind = rng.randrange(6)
        pos = rng.randrange(len(data) + 1)
        if kind == 0 and data:  # flip a byte
            data[min(pos, len(data) - 1)] ^= 1 << rng.randrange(8)
        elif kind == 1:  # insert raw bytes, not always UTF-8
            data[pos:pos] = bytes(rng.randrange(256) for _ in range(rng.randint(1, 6)))
        elif kind == 2:  # cut a range out
            del data[pos:pos + rng.randint(1, 40)]
        elif kind == 3:  # a hostile value after a key
            colon = data.find(b": ", pos)
            if colon >= 0:
                end = data.find(b"\n", colon)
                end = len(data) if end < 0 else end
                data[colon + 2:end] = rng.choice(HOSTILE_SCALARS).encode()
        elif kind == 4:  # a line repeated or a structure nested
            data[pos:pos] = rng.choice([b"\n  ", b"\n", b"- ", b"[", b"{", b"base: ", b"run:\n", b"\t", b": "])
        else:
            data = data[: rng.randrange(len(data) + 1)]  # truncated
    return bytes(data)


def test_mutated_yaml_configs_and_overrides(tmp_path, capsys):
    rng = random.Random(SEED)
    presets = sorted((ROOT / "configs").glob("*.yaml"))
    sources = [p.read_bytes() for p in presets] + [Config().to_yaml().encode()]
    for i in range(150):
        path = tmp_path / f"c{i}.yaml"
        path.write_bytes(_mutate_text(rng, rng.choice(sources)))
        _config_answers([str(path)], capsys)
    keys = [f"{s}.{k}" for s, sec in Config().to_dict().items() for k in sec]
    for _ in range(120):
        key = rng.choice(keys + ["slurm.extra.x", "run", "a.b.c", "data.load_size.x", ""])
        value = rng.choice(HOSTILE_SCALARS)
        _config_answers([f"{key}={value}"], capsys)


# ---------------------------------------------------------------------------------------------
# checkpoints


def _payload_with_config() -> dict:
    payload = tiny_payload(3)
    payload["config"] = Config().to_dict()
    payload["config"]["data"].update(image_size=32, load_size=40)
    payload["config"]["model"].update(num_downs=5, ngf=8, ndf=8)
    return payload


def _paths(obj, prefix=()):
    """Every (key path) of a payload, into dicts and lists, tensors as leaves."""
    if isinstance(obj, dict):
        for k, v in obj.items():
            yield prefix + (k,)
            yield from _paths(v, prefix + (k,))
    elif isinstance(obj, list):
        for i, v in enumerate(obj):
            yield prefix + (i,)
            yield from _paths(v, prefix + (i,))


def _hostile_value(rng: random.Random, old):
    if isinstance(old, torch.Tensor) and old.numel() and rng.random() < 0.5:
        t = old.clone()
        if t.is_floating_point():
            t.view(-1)[rng.randrange(t.numel())] = rng.choice([float("nan"), float("inf"), 1e38])
            return t
        return t.reshape(-1)[:-1] if rng.random() < 0.5 else torch.zeros(*t.shape, 2)
    value = rng.choice(PYTHON_HOSTILE)
    if isinstance(value, list) and value == [[[[1]]]] and rng.random() < 0.3:
        for _ in range(200):  # deeper than any walk may recurse
            value = [value]
    return value


def _expect_usage_error(call) -> None:
    try:
        call()
    except UsageError as e:  # CheckpointError and WeightsError are UsageErrors
        assert "\n" not in str(e) and len(str(e)) < 1000, str(e)[:2000]


@pytest.fixture(scope="module")
def good_checkpoint(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("fuzz")
    Checkpoints(root / "good").save(_payload_with_config(), 3)
    return root / "good" / "checkpoints" / "last.pt"


def _all_readers(path: Path) -> None:
    from p2p.inference import load_predictor

    _expect_usage_error(lambda: read_checkpoint_file(path))
    _expect_usage_error(lambda: load_generator(path))
    _expect_usage_error(lambda: load_discriminator(path))
    _expect_usage_error(lambda: load_predictor(str(path)))


def test_mutated_checkpoint_bytes(good_checkpoint, tmp_path):
    rng = random.Random(SEED)
    data = good_checkpoint.read_bytes()
    for i in range(30):
        mutated = bytearray(data)
        if i % 3 == 0:
            mutated = mutated[: rng.randrange(len(mutated))]
        else:
            for _ in range(rng.randint(1, 8)):
                # zip headers and the pickle sit in the first and last kB: aim there too
                where = rng.choice([rng.randrange(2048), rng.randrange(len(mutated)), len(mutated) - 1 - rng.randrange(2048)])
                mutated[where] ^= 1 << rng.randrange(8)
        path = tmp_path / f"m{i}.pt"
        path.write_bytes(bytes(mutated))
        _all_readers(path)


def _with(obj, where: tuple, value):
    """A copy of `obj` with the entry at `where` replaced: only the containers on the way are copied."""
    if not where:
        return value
    if not isinstance(obj, (dict, list)):
        return obj  # an earlier edit replaced a parent
    try:
        child = obj[where[0]]
    except (KeyError, IndexError):
        return obj
    out = dict(obj) if isinstance(obj, dict) else list(obj)
    out[where[0]] = _with(child, where[1:], value)
    return out


def _at(obj, where: tuple):
    for key in where:
        obj = obj[key]
    return obj


def test_resealed_checkpoints_with_hostile_values(tmp_path):
    from p2p.inference import load_predictor
    from p2p.train.payload_check import check_training_payload

    rng = random.Random(SEED)
    base = _payload_with_config()
    paths = list(_paths(base))
    config_paths = [p for p in paths if p[0] == "config"]  # a few among hundreds of tensors: drawn half the time
    for i in range(30):
        payload = base
        for where in rng.sample(config_paths if i % 2 else paths, rng.randint(1, 2)):
            try:
                payload = _with(payload, where, _hostile_value(rng, _at(payload, where)))
            except (KeyError, IndexError, TypeError):
                continue
        path = tmp_path / f"r{i}.pt"
        try:
            torch.save(sealed(payload), path)
        except (ValueError, TypeError):
            continue  # what torch.save or the checksum cannot write is no file to read
        try:
            obj = read_checkpoint_file(path)
        except UsageError as e:
            assert "\n" not in str(e), str(e)[:2000]
            continue
        _expect_usage_error(lambda: load_generator(obj, name=str(path)))
        _expect_usage_error(lambda: load_discriminator(obj, name=str(path)))
        _expect_usage_error(lambda: check_training_payload(obj, path))
        if i % 2:
            _expect_usage_error(lambda: load_predictor(str(path)))


def test_predict_answers_mutated_checkpoints_with_exit_0_or_2_and_one_line(good_checkpoint, tmp_path, capsys):
    rng = random.Random(SEED + 1)
    image = tmp_path / "in.png"
    Image.new("RGB", (40, 36), (90, 140, 60)).save(image)
    data = good_checkpoint.read_bytes()
    edits = [lambda d: d[: len(d) // 2], lambda d: d[:100], lambda d: d + b"\0" * 10]
    for i in range(6):
        mutated = bytearray(edits[i](data) if i < len(edits) else data)
        if i >= len(edits):
            mutated[rng.randrange(len(mutated))] ^= 0xFF
        path = tmp_path / f"p{i}.pt"
        path.write_bytes(bytes(mutated))
        rc = p2p_main(["predict", str(path), str(image), "--out", str(tmp_path / f"out{i}")])
        err = capsys.readouterr().err
        assert rc in (0, 2) and _one_line(err), err[-2000:]


def test_the_real_processes_exit_2_with_one_line_and_no_traceback(tmp_path, good_checkpoint):
    """Two subprocesses: what a shell sees (exit code, stderr) for a deep YAML and a cut checkpoint."""
    deep = tmp_path / "deep.yaml"
    deep.write_text("run:\n  name: " + "[" * 20000 + "]" * 20000 + "\n")
    cut = tmp_path / "cut.pt"
    cut.write_bytes(good_checkpoint.read_bytes()[:5000])
    for argv in (["config", str(deep)], ["predict", str(cut), str(deep), "--out", str(tmp_path / "o")]):
        proc = subprocess.run([sys.executable, "-m", "p2p", *argv], capture_output=True, text=True, timeout=300,
                              cwd=ROOT)
        assert proc.returncode == 2 and _one_line(proc.stderr) and proc.stderr.strip(), proc.stderr[-2000:]


def test_the_good_checkpoint_and_config_still_load(good_checkpoint):
    assert load_generator(good_checkpoint).down[0].conv.in_channels == 1
    assert load_config(ROOT / "configs" / "pix2pix.yaml").model.ngf == 64
