"""Checkpoints that survive anything: written to a temporary file, fsynced, renamed over the
old one (so `kill -9` at any moment leaves the previous complete file), loaded with
`weights_only=True` (plain tensors and containers; no pickled code runs).

Layout in <run>/checkpoints/: `last.pt` (always the newest), `step-<N>.pt` (the last
`keep_last` of them, hard links to the same bytes where the filesystem allows) and `best.pt`.
"""

from __future__ import annotations

import os
import random
import shutil
from pathlib import Path

import numpy as np
import torch

from p2p.atomic import TMP_SUFFIX, fsync_dir, replace_with

FORMAT_VERSION = 1


def save_atomic(obj, path: Path) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    replace_with(path, lambda f: torch.save(obj, f))


def _link_atomic(src: Path, dst: Path) -> None:
    """dst becomes the same file as src: a hard link renamed into place (a copy if links fail)."""
    tmp = dst.with_name(dst.name + TMP_SUFFIX)
    if tmp.exists():
        tmp.unlink()
    try:
        os.link(src, tmp)
    except OSError:
        shutil.copyfile(src, tmp)
    os.replace(tmp, dst)


class Checkpoints:
    def __init__(self, run_dir: Path, keep_last: int = 3):
        self.dir = Path(run_dir) / "checkpoints"
        self.keep_last = keep_last

    @property
    def last(self) -> Path:
        return self.dir / "last.pt"

    @property
    def best(self) -> Path:
        return self.dir / "best.pt"

    def save(self, payload: dict, step: int, is_best: bool = False) -> Path:
        save_atomic(payload, self.last)
        if self.keep_last > 0:
            _link_atomic(self.last, self.dir / f"step-{step:08d}.pt")
            for old in sorted(self.dir.glob("step-*.pt"))[: -self.keep_last]:
                old.unlink(missing_ok=True)
        if is_best:
            _link_atomic(self.last, self.best)
        fsync_dir(self.dir)
        return self.last

    def load_last(self) -> dict | None:
        if not self.last.is_file():
            return None
        return torch.load(self.last, map_location="cpu", weights_only=True)


# --------------------------------------------------------------------------- RNG state


def capture_rng() -> dict:
    """Every RNG a step can touch, as tensors and plain numbers (weights_only-loadable)."""
    version, mt, gauss = random.getstate()
    _, np_keys, np_pos, np_has_gauss, np_gauss = np.random.get_state()
    state = {
        "python": {"version": version, "state": torch.tensor(mt, dtype=torch.int64), "gauss": gauss},
        "numpy": {"keys": torch.from_numpy(np_keys.astype(np.int64)), "pos": int(np_pos),
                  "has_gauss": int(np_has_gauss), "gauss": float(np_gauss)},
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore_rng(state: dict) -> None:
    py = state["python"]
    random.setstate((py["version"], tuple(py["state"].tolist()), py["gauss"]))
    n = state["numpy"]
    np.random.set_state(("MT19937", n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"], n["gauss"]))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available() and len(state["cuda"]) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all(state["cuda"])
