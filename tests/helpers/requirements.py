"""Components a test needs. Missing, the test is skipped with the reason, unless CI declared the
component required (P2P_REQUIRE_SLURM=1 for the local Slurm cluster and the packages its tests
use, P2P_REQUIRE_DALI=1 for DALI, P2P_REQUIRE_TMPFS=1 for mounting a small real filesystem,
P2P_REQUIRE_CC=1 for the C compiler p2p.fused builds its CPU kernel with): then it fails, so a
broken install never passes as skipped."""

from __future__ import annotations

import functools
import importlib
import os
import shutil
import subprocess

import pytest

SLURM_REQUIRE_ENV = "P2P_REQUIRE_SLURM"
DALI_REQUIRE_ENV = "P2P_REQUIRE_DALI"
TMPFS_REQUIRE_ENV = "P2P_REQUIRE_TMPFS"
CC_REQUIRE_ENV = "P2P_REQUIRE_CC"


def _require(problem: str | None, required_by: str) -> None:
    if problem is None:
        return
    if os.environ.get(required_by) == "1":
        pytest.fail(f"{required_by}=1 but {problem}", pytrace=False)
    pytest.skip(problem)


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
        return (f"Slurm cluster is not up (`sinfo -h` failed: {err[-1] if err else proc.returncode}); "
                f"run: sudo slurm/local-cluster up")
    return None


@functools.lru_cache(maxsize=1)
def dali_problem() -> str | None:
    """Why DALI cannot be used, or None when `import nvidia.dali` works."""
    try:
        import nvidia.dali  # noqa: F401
    except ImportError as e:
        return f"nvidia-dali is not importable ({e}); pip install -e '.[dali]'"
    return None


def require_slurm() -> None:
    _require(slurm_problem(), SLURM_REQUIRE_ENV)


def require_dali() -> None:
    _require(dali_problem(), DALI_REQUIRE_ENV)


def require_c_compiler() -> None:
    """For tests of the compiled CPU kernel itself (without a compiler p2p runs the eager step)."""
    from p2p.fused.build import KernelUnavailable, find_compiler

    try:
        find_compiler()
        problem = None
    except KernelUnavailable as e:
        problem = f"{e}: the fused CPU kernel cannot be built here"
    _require(problem, CC_REQUIRE_ENV)


def require_module(name: str, required_by: str = SLURM_REQUIRE_ENV):
    """Import a package a test needs (e.g. submitit for the Slurm tests), under the same rule."""
    try:
        return importlib.import_module(name)
    except ImportError as e:
        _require(f"{name} is not importable ({e}); pip install -e '.[dev]'", required_by)


@functools.lru_cache(maxsize=1)
def tmpfs_problem() -> str | None:
    """Why a size-limited tmpfs cannot be mounted here (the full-disk tests need one), or None."""
    if not hasattr(os, "geteuid") or os.geteuid() != 0:
        return "mounting a small tmpfs (the full-disk tests) needs root; run the tests as root, as CI does"
    if shutil.which("mount") is None or shutil.which("umount") is None:
        return "no mount/umount on PATH (util-linux)"
    import tempfile

    probe = tempfile.mkdtemp(prefix="p2p-tmpfs-probe-")
    try:
        proc = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", probe], capture_output=True,
                              text=True, timeout=20)
        if proc.returncode != 0:
            return f"cannot mount a tmpfs ({(proc.stderr or proc.stdout).strip()}); a container without CAP_SYS_ADMIN?"
        subprocess.run(["umount", probe], capture_output=True, timeout=20, check=False)
        return None
    finally:
        os.rmdir(probe)


def require_tmpfs() -> None:
    _require(tmpfs_problem(), TMPFS_REQUIRE_ENV)


def hide_dali(monkeypatch) -> None:
    """Make `import nvidia.dali` fail for the rest of a test, as on a machine without the extra."""
    import builtins

    real_import = builtins.__import__

    def no_dali(name, *a, **kw):
        if name.startswith("nvidia.dali") or name == "nvidia":
            raise ImportError("No module named 'nvidia.dali'")
        return real_import(name, *a, **kw)

    monkeypatch.setattr(builtins, "__import__", no_dali)
