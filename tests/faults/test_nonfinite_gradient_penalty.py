"""Fault: the WGAN-GP gradient penalty turns NaN while the other losses of that step are still
finite. The run must stop at that log step naming D_gp, as for any other loss; before, D_gp was
not among the checked losses and the run trained on to its end."""

from __future__ import annotations

import pytest

from p2p.config import load_config
from p2p import losses
from p2p.train.loop import TrainingError, train

from helpers.runs import TINY

pytestmark = pytest.mark.slow


def test_a_nan_gradient_penalty_stops_the_run_at_its_step(tmp_path, monkeypatch):
    real, calls = losses.gradient_penalty, [0]

    def poisoned(*args, **kwargs):  # called once per step, in step order
        calls[0] += 1
        gp = real(*args, **kwargs)
        # NaN in its value only: D's gradients stay finite, so no other loss goes bad with it
        return gp + gp.detach() * float("nan") if calls[0] >= 4 else gp

    monkeypatch.setattr(losses, "gradient_penalty", poisoned)  # what the D_gp term calls
    cfg = load_config(None, [f"run.out_dir={tmp_path}", "run.name=gp", *TINY, "train.max_steps=8",
                             "train.log_every=1", "loss.gan_mode=wgangp"])
    with pytest.raises(TrainingError, match=r"non-finite loss D_gp=nan in the steps up to 4"):
        train(cfg)
