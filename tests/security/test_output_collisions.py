"""Fault: results written over other results, inputs or files. `p2p predict` on a folder with
good.jpg and good.png wrote both to good.png and reported "wrote 2" (one lost); `p2p export`
replaced an existing file silently; `--out` an existing file or a folder that cannot be written
was a traceback. Now inputs sharing a stem keep their extension in the output name, clashes
that cannot be told apart and outputs over inputs are refused before any work, an export never
replaces a file without --force, and every refusal is one line with exit 2."""

from __future__ import annotations

import contextlib
import subprocess
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from helpers.runs import TINY, run_p2p
from helpers.requirements import require_tmpfs

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory):
    root = tmp_path_factory.mktemp("outputs")
    run_p2p("train", f"run.out_dir={root}", "run.name=t", *TINY, "train.max_steps=2")
    return root / "t" / "checkpoints" / "last.pt"


def _image(path: Path, h: int, w: int, seed: int) -> None:
    pixels = np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)
    Image.fromarray(pixels).save(path)


def _one_line_exit_2(proc) -> str:
    assert proc.returncode == 2, proc.stdout + proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in proc.stderr, proc.stderr
    return lines[0]


@contextlib.contextmanager
def read_only_folder(path: Path):
    """A folder no one can write, root included: a read-only tmpfs."""
    require_tmpfs()
    path.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "ro,size=1m", "tmpfs", str(path)], check=True, timeout=30)
    try:
        yield path
    finally:
        subprocess.run(["umount", str(path)], capture_output=True, timeout=60)


def test_inputs_sharing_a_stem_each_get_their_own_output(ckpt, tmp_path):
    src, out = tmp_path / "in", tmp_path / "out"
    src.mkdir()
    _image(src / "good.jpg", 40, 48, 1)
    _image(src / "good.png", 56, 40, 2)
    _image(src / "other.png", 40, 40, 3)
    proc = run_p2p("predict", ckpt, src, "--out", out)
    assert "wrote 3 image(s)" in proc.stdout
    assert sorted(p.name for p in out.iterdir()) == ["good.jpg.png", "good.png.png", "other.png"]
    assert Image.open(out / "good.jpg.png").size == (48, 40)  # each output is its own input's
    assert Image.open(out / "good.png.png").size == (40, 56)


def test_same_file_names_from_two_folders_are_refused_before_any_work(ckpt, tmp_path):
    for d in ("a", "b"):
        (tmp_path / d).mkdir()
        _image(tmp_path / d / "x.png", 40, 40, 4)
    line = _one_line_exit_2(run_p2p("predict", ckpt, tmp_path / "a", tmp_path / "b", "--out", tmp_path / "out",
                                    check=False))
    assert "would both be written to" in line and not (tmp_path / "out").exists()


def test_predicting_into_the_input_folder_never_overwrites_an_input(ckpt, tmp_path):
    _image(tmp_path / "x.png", 40, 40, 5)
    before = (tmp_path / "x.png").read_bytes()
    line = _one_line_exit_2(run_p2p("predict", ckpt, tmp_path, "--out", tmp_path, check=False))
    assert "would overwrite the input" in line
    assert (tmp_path / "x.png").read_bytes() == before
    # other inputs are fine there: x.jpg's output is x.png's name only when x.png is not an input
    _image(tmp_path / "y.jpg", 40, 40, 6)
    run_p2p("predict", ckpt, tmp_path / "y.jpg", "--out", tmp_path)
    assert (tmp_path / "y.png").is_file()


def test_predict_out_that_is_a_file_or_unwritable_is_one_line(ckpt, tmp_path):
    _image(tmp_path / "x.png", 40, 40, 7)
    (tmp_path / "taken").write_text("keep")
    line = _one_line_exit_2(run_p2p("predict", ckpt, tmp_path / "x.png", "--out", tmp_path / "taken", check=False))
    assert "is a file, not a folder" in line and (tmp_path / "taken").read_text() == "keep"
    line = _one_line_exit_2(run_p2p("predict", ckpt, tmp_path / "x.png", "--out", tmp_path / "taken" / "sub",
                                    check=False))
    assert "cannot create the folder" in line
    with read_only_folder(tmp_path / "ro") as ro:
        for out in (ro, ro / "new"):
            line = _one_line_exit_2(run_p2p("predict", ckpt, tmp_path / "x.png", "--out", out, check=False))
            assert "not writable" in line or "cannot create the folder" in line, line


@pytest.mark.parametrize("fmt", ["official", "torchscript", "onnx"])
def test_export_never_replaces_a_file_without_force(ckpt, tmp_path, fmt):
    out = tmp_path / "G.out"
    out.write_bytes(b"the only copy")
    line = _one_line_exit_2(run_p2p("export", ckpt, "--format", fmt, "--out", out, check=False))
    assert "exists" in line and "--force" in line and out.read_bytes() == b"the only copy"
    run_p2p("export", ckpt, "--format", fmt, "--out", out, "--force")
    assert out.read_bytes() != b"the only copy"


def test_export_out_unwritable_is_one_line(ckpt, tmp_path):
    with read_only_folder(tmp_path / "ro") as ro:
        line = _one_line_exit_2(run_p2p("export", ckpt, "--format", "official", "--out", ro / "G.pth", check=False))
    assert "not writable" in line
