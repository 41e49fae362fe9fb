"""The data position a resume goes on from (p2p.train.position): the saved part's shape comes
from the checkpoint's own fields, and a payload without them is refused in one line."""

from __future__ import annotations

import pytest

from helpers.payloads import tiny_payload
from p2p.errors import CheckpointError
from p2p.train.checkpoint import TrainState
from p2p.train.payload_check import check_training_payload
from p2p.train.position import continue_position


def test_the_saved_shape_is_the_checkpoints_own_batch_size_not_its_config():
    # the config inside a payload is what the run was started with; the batch its last part ran with is its own field
    payload = {"world_size": 2, "batch_size": 4, "config": {"train": {"batch_size": 16}}}
    state = TrainState(step=6, epoch=1, batch_in_epoch=3)
    assert continue_position(state, payload, 2, 4) is None  # the same shape: nothing to change
    notice = continue_position(state, payload, 1, 4)
    assert state.epoch_history == [(2, 4, 3)] and state.batch_in_epoch == 0
    assert "after the 24 image(s) read" in notice


def test_a_payload_without_its_batch_size_is_unusable_in_one_line():
    payload = tiny_payload(3)
    check_training_payload(payload, "last.pt")
    del payload["batch_size"]
    with pytest.raises(CheckpointError) as e:
        check_training_payload(payload, "last.pt")
    assert "batch_size" in str(e.value) and "\n" not in str(e.value)
