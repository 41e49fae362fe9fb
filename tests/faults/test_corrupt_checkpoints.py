"""Faults: checkpoints that cannot be read. A byte flipped on disk (silent corruption: caught
by the payload checksum), a copy that stopped half-way (truncated), a file that is no
checkpoint at all (text, a pickled class, someone else's tensors). Training resumes from the
newest readable checkpoint and moves the bad files aside, with one notice naming both; with
none readable it exits 2 with one line and changes nothing. `predict`, `eval` and the API
(`load_generator`, `read_checkpoint`) answer with one line / one CheckpointError."""

from __future__ import annotations

import os
import re

import pytest
import torch

from helpers.faults import flip_byte, truncate_copy
from helpers.payloads import tiny_payload
from helpers.runs import TINY, load_ckpt, run_p2p
from p2p.checkpoint_file import sealed
from p2p.cli import main as p2p_main
from p2p.errors import CheckpointError
from p2p.models import load_discriminator, load_generator, read_checkpoint
from p2p.train.checkpoint import Checkpoints

CKPT = [*TINY, "train.ckpt_every=2", "train.keep_last=3"]


def _train(tmp_path, name, steps, check=True):
    return run_p2p("train", f"run.out_dir={tmp_path}", f"run.name={name}", *CKPT, f"train.max_steps={steps}",
                   check=check)


def _errors(text: str) -> list[str]:
    return [ln for ln in text.splitlines() if "error:" in ln]


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A run folder at step 6: last.pt (= step-00000006.pt, hard links) and step 2 and 4."""
    root = tmp_path_factory.mktemp("corrupt")
    _train(root, "base", 6)
    return root / "base"


def _copy_run(trained, tmp_path, name):
    import shutil

    dst = tmp_path / name
    shutil.copytree(trained, dst)  # copies: the hard links become separate files
    return dst


@pytest.mark.slow
def test_flipped_byte_in_last_pt_resumes_from_the_newest_readable_and_moves_it_aside(trained, tmp_path):
    run = _copy_run(trained, tmp_path, "flip")
    ck = run / "checkpoints"
    flip_byte(ck / "last.pt")  # loads fine with torch.load; only the checksum can tell
    torch.load(ck / "last.pt", map_location="cpu", weights_only=True)
    proc = _train(tmp_path, "flip", 8)
    notices = [ln for ln in proc.stderr.splitlines() if "notice:" in ln and "unreadable" in ln]
    assert len(notices) == 1, proc.stderr[-3000:]
    assert re.search(r"last\.pt is corrupt: its checksum does not match.*moved to last\.pt\.unreadable; "
                     r"resumed from step-00000006\.pt \(step 6\)", notices[0]), notices[0]
    assert "step 6 -> 8" in proc.stderr
    assert (ck / "last.pt.unreadable").is_file(), "the bad file is kept"
    assert load_ckpt(ck / "last.pt")["step"] == 8


@pytest.mark.slow
@pytest.mark.parametrize("fault", ["truncated", "text", "weights_only"])
def test_unusable_last_pt_and_newest_step_file_fall_back_one_further(trained, tmp_path, fault):
    run = _copy_run(trained, tmp_path, fault)
    ck = run / "checkpoints"
    for name in ("last.pt", "step-00000006.pt"):  # both copies of step 6 are gone bad
        if fault == "truncated":
            truncate_copy(ck / name)
        elif fault == "text":
            (ck / name).write_text("not a checkpoint\n")
        else:  # a sound p2p file with the networks only (an export): no optimizer state or position
            full = load_ckpt(trained / "checkpoints" / "last.pt")
            torch.save(sealed({k: full[k] for k in ("format", "version", "arch", "generator", "discriminator")}),
                       ck / name)
    proc = _train(tmp_path, fault, 8)
    notice = next(ln for ln in proc.stderr.splitlines() if "unreadable" in ln)
    assert "last.pt" in notice and "step-00000006.pt" in notice and "resumed from step-00000004.pt (step 4)" in notice
    assert sorted(p.name for p in ck.glob("*.unreadable")) == ["last.pt.unreadable", "step-00000006.pt.unreadable"]
    assert "step 4 -> 8" in proc.stderr and load_ckpt(ck / "last.pt")["step"] == 8


@pytest.mark.slow
def test_no_readable_checkpoint_exits_2_with_one_line_and_changes_nothing(trained, tmp_path):
    run = _copy_run(trained, tmp_path, "none")
    ck = run / "checkpoints"
    for p in ck.iterdir():
        flip_byte(p)
    before = {p.name: p.read_bytes() for p in ck.iterdir()}
    proc = _train(tmp_path, "none", 8, check=False)
    assert proc.returncode == 2, proc.stderr[-3000:]
    errors = _errors(proc.stderr)
    assert len(errors) == 1 and "Traceback" not in proc.stderr, proc.stderr[-3000:]
    assert f"no readable checkpoint in {ck}" in errors[0] and "start over under another run.name" in errors[0]
    assert {p.name: p.read_bytes() for p in ck.iterdir()} == before, "nothing may be moved or overwritten"


# ---------------------------------------------------------------------------------------------
# which file resumes: in-process, real files, no training


def _payload(step: int) -> dict:
    return tiny_payload(step)  # a resume checks every field against its arch: a real one (weights: a flip lands in them)


def test_best_pt_resumes_only_when_it_is_the_newest_readable(tmp_path):
    ck = Checkpoints(tmp_path, keep_last=0)  # no step files: last.pt and best.pt
    ck.save(_payload(4), 4, is_best=True)
    ck.save(_payload(6), 6)
    flip_byte(ck.last)
    found = ck.find_resumable()
    assert found.path == ck.best and found.payload["step"] == 4
    ck2 = Checkpoints(tmp_path / "b", keep_last=2)
    ck2.save(_payload(2), 2, is_best=True)
    ck2.save(_payload(4), 4)
    ck2.save(_payload(6), 6)
    flip_byte(ck2.last)  # also step-6: the same file
    found = ck2.find_resumable()
    assert found.path.name == "step-00000004.pt" and found.payload["step"] == 4, "best.pt (step 2) is older"
    assert [p.name for p, _ in found.unreadable] == ["last.pt", "step-00000006.pt"]
    moved = ck2.set_aside(found)
    assert [(a.name, b.name) for a, b in moved] == [("last.pt", "last.pt.unreadable"),
                                                    ("step-00000006.pt", "step-00000006.pt.unreadable")]
    assert all(b.is_file() for _, b in moved) and not (ck2.dir / "step-00000006.pt").exists(), "moved, not deleted"
    assert read_checkpoint(ck2.last)["step"] == 4, "last.pt is the checkpoint resumed from again"


def test_payload_checksum_is_written_and_verified(tmp_path):
    ck = Checkpoints(tmp_path)
    ck.save(_payload(3), 3)
    raw = torch.load(ck.last, map_location="cpu", weights_only=True)
    assert raw["checksum"].startswith("sha256:") and read_checkpoint(ck.last)["step"] == 3
    raw["step"] = 4  # a change of a plain value, not only of tensor bytes, is caught
    torch.save(raw, tmp_path / "edited.pt")
    with pytest.raises(CheckpointError, match="checksum does not match"):
        read_checkpoint(tmp_path / "edited.pt")
    del raw["checksum"]
    torch.save(raw, tmp_path / "stripped.pt")
    with pytest.raises(CheckpointError, match="without its checksum"):
        read_checkpoint(tmp_path / "stripped.pt")
    for old in ({**raw, "version": 1}, {k: v for k, v in raw.items() if k != "version"}):
        torch.save(old, tmp_path / "old.pt")  # no pre-checksum p2p was released: none loads unverified
        with pytest.raises(CheckpointError, match="without its checksum"):
            read_checkpoint(tmp_path / "old.pt")


# ---------------------------------------------------------------------------------------------
# predict, eval and the API on bad files


class Unsafe:  # a class: weights_only loading refuses to unpickle it
    pass


def _bad_files(tmp_path, good) -> dict:
    files = {}
    files["flipped"] = tmp_path / "flipped.pt"
    files["flipped"].write_bytes(good.read_bytes())
    flip_byte(files["flipped"])
    files["truncated"] = tmp_path / "truncated.pt"
    files["truncated"].write_bytes(good.read_bytes()[: os.path.getsize(good) // 3])
    files["empty"] = tmp_path / "empty.pt"
    files["empty"].write_bytes(b"")
    files["text"] = tmp_path / "notes.pt"
    files["text"].write_text("these are not weights\n")
    files["pickled_class"] = tmp_path / "class.pt"
    torch.save({"model": Unsafe()}, files["pickled_class"])
    files["foreign_tensors"] = tmp_path / "other.pt"
    torch.save({"encoder.weight": torch.zeros(4, 4)}, files["foreign_tensors"])
    files["missing"] = tmp_path / "missing.pt"
    return files


@pytest.fixture(scope="module")
def bad_files(tmp_path_factory):
    """Bad versions of a real p2p checkpoint (a small generator and discriminator, sealed)."""
    from p2p.models import DiscriminatorArch, GeneratorArch, arch_dict, build_discriminator, build_generator

    root = tmp_path_factory.mktemp("bad")
    g, d = GeneratorArch(1, 2, 5, 8), DiscriminatorArch(3, 8)
    payload = {**_payload(5), "arch": arch_dict(g, d), "generator": build_generator(g).state_dict(),
               "discriminator": build_discriminator(d).state_dict()}
    Checkpoints(root / "good").save(payload, 5)
    good = root / "good" / "checkpoints" / "last.pt"
    assert load_generator(good).down[0].conv.in_channels == 1
    return _bad_files(root, good)


@pytest.mark.parametrize("kind", ["flipped", "truncated", "empty", "text", "pickled_class", "foreign_tensors",
                                  "missing"])
def test_api_raises_one_checkpoint_error_naming_the_file(bad_files, kind):
    path = bad_files[kind]
    for load in (load_generator, load_discriminator):
        with pytest.raises(CheckpointError) as info:
            load(path)
        assert str(path) in str(info.value) and "\n" not in str(info.value)
        assert info.value.path == str(path)


@pytest.mark.parametrize("kind", ["flipped", "truncated", "text", "pickled_class", "foreign_tensors"])
def test_predict_and_eval_exit_2_with_one_line(bad_files, kind, tmp_path, capsys):
    from PIL import Image

    image = tmp_path / "in.png"
    Image.new("RGB", (64, 48), (120, 80, 40)).save(image)
    path = bad_files[kind]
    for argv in (["predict", str(path), str(image), "--out", str(tmp_path / "out")],
                 ["eval", str(path), "--data", "embedded"]):
        assert p2p_main(argv) == 2
        err = capsys.readouterr().err
        lines = [ln for ln in err.splitlines() if ln.strip()]
        assert len(lines) == 1 and lines[0].startswith(f"p2p {argv[0]}: error: ") and str(path) in lines[0], err
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").iterdir())


class RunsCodeWhenUnpickled:
    """A file that runs code when unpickled: here os.mkdir(marker), harmless but visible."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (os.mkdir, (self.marker,))


def test_a_checkpoint_that_would_run_code_is_refused_unrun(tmp_path):
    marker = tmp_path / "code-ran"
    path = tmp_path / "trojan.pt"
    torch.save({"format": "p2p", "generator": RunsCodeWhenUnpickled(marker)}, path)
    for load in (read_checkpoint, load_generator):
        with pytest.raises(CheckpointError, match="holds pickled Python objects"):
            load(path)
    assert not marker.exists(), "unpickling ran the file's code"
