"""Shared test helpers. Tests are tiered: unit tests run in-process in seconds; integration tests
(marked `slow`) start real processes (p2p train, torchrun, DALI, Slurm); `gpu` tests skip
without CUDA and run on the device machine."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]

# A model and data small enough for a step in well under a second on one CPU core.
TINY = [
    "data.image_size=32", "data.load_size=40", "model.num_downs=5", "model.ngf=8", "model.ndf=8",
    "train.batch_size=4", "data.epoch_size=32", "data.val_images=4", "data.workers=0",
    "train.log_every=2", "train.sample_every=0", "train.eval_every=0", "train.ckpt_every=0",
]


def p2p_env(**extra) -> dict:
    env = dict(os.environ)
    env.update(PYTHONPATH=str(ROOT), OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1")
    env.pop("RANK", None)
    env.pop("WORLD_SIZE", None)
    env.update(extra)
    return env


def run_p2p(*args, timeout: float = 300, check: bool = True, **env) -> subprocess.CompletedProcess:
    """`python -m p2p ARGS` in a fresh process; output captured as text."""
    proc = subprocess.run([sys.executable, "-m", "p2p", *map(str, args)], capture_output=True, text=True,
                          timeout=timeout, env=p2p_env(**env), cwd=ROOT)
    if check and proc.returncode != 0:
        raise AssertionError(f"p2p {' '.join(map(str, args))} exited {proc.returncode}:\n{proc.stderr[-3000:]}")
    return proc


def load_ckpt(path) -> dict:
    return torch.load(path, map_location="cpu", weights_only=True)


@pytest.fixture(autouse=True)
def _restore_torch_globals():
    """In-process trainings may switch on deterministic algorithms; undo it for the next test."""
    yield
    torch.use_deterministic_algorithms(False)


def pytest_collection_modifyitems(config, items):
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA GPU (run on the device machine)")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)
