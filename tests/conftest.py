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


# --------------------------------------------------------------------------------------
# Slurm: tests marked `slurm` run against the local cluster (`slurm/local-cluster up`).
# Without one they are skipped, unless P2P_REQUIRE_SLURM=1 (as in CI): then they fail.

import functools  # noqa: E402
import shutil  # noqa: E402

SLURM_REQUIRE_ENV = "P2P_REQUIRE_SLURM"


@functools.lru_cache(maxsize=1)
def slurm_problem() -> str | None:
    """Why the local cluster cannot be used, or None when `sinfo -h` works."""
    if shutil.which("sinfo") is None:
        return "Slurm is not installed (no sinfo on PATH); run: sudo slurm/local-cluster up"
    try:
        proc = subprocess.run(["sinfo", "-h"], capture_output=True, text=True, timeout=20)
    except subprocess.TimeoutExpired:
        return "`sinfo -h` did not answer within 20 s; is slurmctld up? (slurm/local-cluster status)"
    if proc.returncode != 0:
        err = (proc.stderr or proc.stdout).strip().splitlines()
        return f"Slurm cluster is not up (`sinfo -h` failed: {err[-1] if err else proc.returncode}); run: sudo slurm/local-cluster up"
    return None


def require_slurm() -> None:
    """Skip the calling test when no cluster is up; fail instead when P2P_REQUIRE_SLURM=1."""
    problem = slurm_problem()
    if problem is None:
        return
    if os.environ.get(SLURM_REQUIRE_ENV) == "1":
        pytest.fail(f"{SLURM_REQUIRE_ENV}=1 but {problem}", pytrace=False)
    pytest.skip(problem)


@pytest.fixture
def slurm_cluster() -> None:
    """Use in a test (or autouse in a module) that needs the local Slurm cluster."""
    require_slurm()
