"""Where `p2p predict` puts what it makes, decided before anything runs, so
that no result replaces another, an input, or an existing file the user did not offer.

- `prediction_paths`: one PNG per input, named after it: OUT/<stem>.png. Inputs that share a
  stem (good.jpg and good.png) keep their extension instead (good.jpg.png, good.png.png), so
  neither overwrites the other. Two inputs with the same file name from different folders, and
  an output that would land on an input, are refused (UsageError, one line) before any work.
  A PNG of an earlier prediction with the same name is replaced: that is what predicting into
  the same folder again means.
- `output_folder`: --out must be a folder that exists or can be made, and can be written.

- `writable_parent`: the folder a new output file or folder goes into exists and can be written
  (p2p export's files and model folders).

(An export's --out is checked by p2p.export: an existing file is replaced only with --force.)
"""

from __future__ import annotations

import os
from collections import Counter
from pathlib import Path

from p2p.errors import UsageError


def prediction_paths(files: list[Path], out_dir: str | os.PathLike) -> dict[Path, Path]:
    """{input: its output PNG} (see the module docstring); the same input listed twice (a file
    and its folder) is one input."""
    out_dir = Path(out_dir)
    unique = list(dict.fromkeys(Path(os.path.realpath(f)) for f in files))
    stems = Counter(f.stem for f in unique)
    by_real = {real: out_dir / (f"{real.stem}.png" if stems[real.stem] == 1 else f"{real.name}.png") for real in unique}
    taken: dict[Path, Path] = {}
    for real, target in by_real.items():
        if target in taken:
            raise UsageError(f"inputs {taken[target]} and {real} would both be written to {target}: predict them "
                             f"into separate --out folders")
        taken[target] = real
    inputs = set(unique)
    for target in by_real.values():
        if Path(os.path.realpath(target)) in inputs:
            raise UsageError(f"the prediction of {target.name} would overwrite the input {target}: choose an --out "
                             f"folder apart from the inputs")
    return {f: by_real[Path(os.path.realpath(f))] for f in files}


def output_folder(path: str | os.PathLike) -> Path:
    """--out as a writable folder (created if missing), or a one-line UsageError."""
    out = Path(path)
    if out.exists() and not out.is_dir():
        raise UsageError(f"--out {out} is a file, not a folder: give a folder for the images")
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise UsageError(f"--out {out}: cannot create the folder ({e.strerror or e})") from None
    if not os.access(out, os.W_OK | os.X_OK):
        raise UsageError(f"--out {out}: the folder is not writable")
    return out



def writable_parent(out: Path) -> None:
    """The folder `out` is to be created in exists and can be written, or a one-line UsageError."""
    parent = out.parent if str(out.parent) else Path(".")
    if not parent.is_dir():
        raise UsageError(f"--out {out}: folder {parent} does not exist")
    if not os.access(parent, os.W_OK):
        raise UsageError(f"--out {out}: folder {parent} is not writable")
