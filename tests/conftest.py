"""pytest hooks and fixtures (helpers live in tests/helpers/). Tests are tiered: unit tests run
in-process in seconds; integration tests (marked `slow`) start real processes (p2p train,
torchrun, DALI, Slurm); `gpu` tests skip without CUDA and run on the device machine."""

from __future__ import annotations

import pytest
import torch

from helpers.requirements import require_slurm


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
        if item.get_closest_marker("gpu") is not None:  # not `in keywords`: folder names are keywords too
            item.add_marker(skip)


@pytest.fixture
def slurm_cluster() -> None:
    """Use in a test (or autouse in a module) that needs the local Slurm cluster."""
    require_slurm()
