"""Security: checkpoints that ask for memory they do not hold (issue 22). A zip member deflated
from zeros (a 200 kB file that inflates to 200 MB, and the ratio scales), a pickle that declares
a storage of 4 GB in a 5 kB file (the zip format and the older non-zip one), an architecture of
absurd width, a recorded config out of the schema's bounds: each is refused with one line
before anything is allocated, by the API and by `p2p predict` / `p2p eval` (exit 2)."""

from __future__ import annotations

import zipfile

import pytest
import torch
from PIL import Image

from helpers.payloads import tiny_payload
from p2p.checkpoint_file import read_checkpoint_file, sealed
from p2p.cli import main as p2p_main
from p2p.config import Config
from p2p.errors import CheckpointError
from p2p.models import load_generator
from p2p.weights_check import check_tensor_size, tensor_nbytes

BIG = 1000  # elements of the tensor whose declared size the tests inflate


def _members(path) -> dict[str, bytes]:
    with zipfile.ZipFile(path) as z:
        return {n: z.read(n) for n in z.namelist()}


def _rezip(path, members: dict[str, bytes], deflate: set[str] = frozenset()) -> None:
    with zipfile.ZipFile(path, "w") as z:
        for name, data in members.items():
            z.writestr(name, data, compress_type=zipfile.ZIP_DEFLATED if name in deflate else zipfile.ZIP_STORED)


@pytest.fixture(scope="module")
def deflate_bomb(tmp_path_factory):
    """A real torch.save file of 50M float zeros (200 MB) whose tensor member is re-zipped
    deflated: about 200 kB on disk. torch.load inflates it in full."""
    root = tmp_path_factory.mktemp("bomb")
    plain = root / "plain.pt"
    torch.save({"w": torch.zeros(50_000_000)}, plain)
    members = _members(plain)
    plain.unlink()
    bomb = root / "bomb.pt"
    _rezip(bomb, members, deflate={n for n in members if n.endswith("/data/0")})
    assert bomb.stat().st_size < 1_000_000
    return bomb


def test_a_deflated_zip_member_is_refused_before_it_is_inflated(deflate_bomb):
    with pytest.raises(CheckpointError) as info:
        read_checkpoint_file(deflate_bomb)
    message = str(info.value)
    assert "zip bomb" in message and "200,000,000 bytes" in message and "\n" not in message, message


def _declaring(tmp_path, name, numel: int) -> str:
    """A sound torch.save zip whose pickle declares `numel` elements for the BIG-element storage."""
    path = tmp_path / name
    torch.save({"w": torch.zeros(BIG), "v": torch.ones(5)}, path)
    members = _members(path)
    pkl = next(n for n in members if n.endswith("data.pkl"))
    old = b"M" + BIG.to_bytes(2, "little")  # BININT2 1000: the storage's numel (and the shape)
    assert old in members[pkl]
    members[pkl] = members[pkl].replace(old, b"J" + numel.to_bytes(4, "little"))
    _rezip(path, members)
    return str(path)


def test_a_storage_larger_than_the_file_is_refused_before_it_is_allocated(tmp_path):
    path = _declaring(tmp_path, "declares.pt", 10**9)
    with pytest.raises(CheckpointError, match=r"declares 4,000,000,000 bytes, more than the file's"):
        read_checkpoint_file(path)
    same = _declaring(tmp_path, "same.pt", BIG)  # the rewriting itself is harmless
    assert read_checkpoint_file(same)["w"].shape == (BIG,)


def test_the_older_non_zip_format_is_scanned_without_unpickling(tmp_path):
    path = tmp_path / "legacy.pt"
    torch.save({"w": torch.zeros(BIG), "d": torch.ones(3, dtype=torch.float64)}, path,
               _use_new_zipfile_serialization=False)
    assert read_checkpoint_file(path)["w"].shape == (BIG,)
    raw = path.read_bytes()
    old = b"M" + BIG.to_bytes(2, "little")
    bad = tmp_path / "legacy_bad.pt"
    bad.write_bytes(raw.replace(old, b"J" + (10**9).to_bytes(4, "little"), 1))
    with pytest.raises(CheckpointError, match=r"declares 4,000,000,000 bytes"):
        read_checkpoint_file(bad)


def test_tensor_size_arithmetic_for_other_formats():
    assert tensor_nbytes([64, 3, 4, 4], 4) == 12288
    assert tensor_nbytes([2**40, 2**40], 4) == 2**82  # Python ints: no overflow to a small number
    for shape in ([-1, 4], [1] * 9, [1.5], [True]):
        with pytest.raises(ValueError):
            tensor_nbytes(shape, 4)
    with pytest.raises(CheckpointError, match="refused before allocating"):
        check_tensor_size("w", [2**31, 2**31], 2, 10**6, "model.safetensors")
    assert check_tensor_size("w", [10, 10], 4, 400, "model.safetensors") == 400


def _sealed_copy(tmp_path, name, edit) -> str:
    payload = tiny_payload(1)
    payload["config"] = Config().to_dict()
    payload["config"]["data"].update(image_size=32, load_size=40)
    payload["config"]["model"].update(num_downs=5, ngf=8, ndf=8)
    edit(payload)
    path = tmp_path / name
    torch.save(sealed(payload), path)  # re-sealed: the checksum matches, so only the bounds can tell
    return str(path)


def _arch_width(payload):
    payload["arch"]["generator"]["ngf"] = 10**6


def _load_size(payload):
    payload["config"]["data"]["load_size"] = 10**7


def _seed(payload):
    payload["config"]["run"]["seed"] = 10**40


def _huge_int(payload):
    payload["config"]["run"]["seed"] = 10**5000  # past repr's 4300 digits (torch's unpickler refuses it)


@pytest.mark.parametrize("edit, needle", [(_arch_width, "ngf=1000000, outside 1..4096"),
                                          (_load_size, "its recorded config is refused: data.load_size=10000000"),
                                          (_seed, "its recorded config is refused: run.seed=1000000000000"),
                                          (_huge_int, "hostile.pt")])
def test_predict_and_eval_refuse_out_of_bounds_checkpoints_with_one_line(tmp_path, capsys, edit, needle):
    path = _sealed_copy(tmp_path, "hostile.pt", edit)
    image = tmp_path / "in.png"
    Image.new("RGB", (48, 40), (120, 80, 40)).save(image)
    for argv in (["predict", path, str(image), "--out", str(tmp_path / "out")], ["eval", path, "--data", "embedded"]):
        assert p2p_main(argv) == 2
        err = capsys.readouterr().err
        lines = [ln for ln in err.splitlines() if ln.strip()]
        assert len(lines) == 1 and needle in lines[0] and path in lines[0] and len(lines[0]) < 400, err[-2000:]
    assert not (tmp_path / "out").exists()


def test_the_same_checkpoint_within_bounds_loads(tmp_path):
    path = _sealed_copy(tmp_path, "fine.pt", lambda p: None)
    assert load_generator(path).down[0].conv.in_channels == 1
