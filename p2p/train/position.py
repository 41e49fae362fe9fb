"""Where in the data a resumed run goes on, when it resumes with another world size or batch
size than the checkpoint was saved with: the position is the images read so far in the epoch
(p2p.data.plan.continued_plan), so no image of the epoch is read twice or skipped, and the step
count (and with it the lr schedule, a function of the step) is unchanged.

A checkpoint stores `epoch`, `batch_in_epoch` (batches per rank since the epoch's last change of
world or batch size), `epoch_history` (the parts of the epoch before that change, each
(world, batch size, batches per rank)), and the current part's `world_size` and `batch_size`.
Resuming with the same world and batch size continues the same part; with others, the saved
part joins the history and the loader reads the rest of the epoch split over the new ranks. A
backend whose spec says it cannot (`continues_other_world`: dali) is refused with one line.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, cast

from p2p.data.plan import batches_per_epoch, images_read
from p2p.errors import UsageError

if TYPE_CHECKING:
    from p2p.data import Backend, ContinuingLoader, Loader


def saved_shape(payload: dict) -> tuple[int, int]:
    """(world size, batch size per rank) the checkpoint's current part of the epoch ran with: its
    own fields (p2p.train.checkpoint), not the saved config's."""
    return int(payload.get("world_size", 1)), int(payload["batch_size"])


def continue_position(state, payload: dict, world: int, batch_size: int) -> str | None:
    """Turn the saved position into this run's (in place); a notice when the shape changed."""
    saved_world, saved_batch = saved_shape(payload)
    if (saved_world, saved_batch) == (world, batch_size):
        return None
    shape = f"{world} process(es) of batch {batch_size} (the checkpoint: {saved_world} of batch {saved_batch})"
    if state.batch_in_epoch == 0 and not state.epoch_history:
        return f"resumed with {shape} at the start of epoch {state.epoch}: its plain plan for {world} process(es)"
    if state.batch_in_epoch:
        state.epoch_history = [*state.epoch_history, (saved_world, saved_batch, state.batch_in_epoch)]
        state.batch_in_epoch = 0
    seen = images_read(state.epoch_history, world, batch_size, 0)
    return (f"resumed with {shape} in epoch {state.epoch} after the {seen} image(s) read in it: the rest of the "
            f"epoch is split over the {world} process(es), no image read twice (a remainder too small for a "
            f"batch on every process waits for the next epoch); the lr schedule follows the step ({state.step}), "
            f"unchanged")


def continue_loader(loader: Loader, state, backend: Backend) -> None:
    """Give the loader the epoch's history, so that it serves what is left of the epoch; a
    backend whose spec cannot continue an epoch on another world or batch size refuses."""
    if not state.epoch_history:
        return
    history = [tuple(h) for h in state.epoch_history]
    if not backend.spec.continues_other_world:
        w0, b0, k0 = history[-1]
        left = batches_per_epoch(loader.sample_count, b0, w0) - k0
        raise UsageError(
            f"{backend.setting} cannot continue epoch {state.epoch} with {loader.world} process(es) of batch "
            f"{loader.batch_size}: the checkpoint's {w0} process(es) of batch {b0} read {k0} batches each, and "
            f"{backend.spec.cannot_continue}; resume "
            f"with {w0} process(es) and train.batch_size={b0} for the {left} batch(es) left of the epoch "
            f"(train.stop_after={left}), then change the world or batch size at the epoch boundary")
    cast("ContinuingLoader", loader).continue_epoch(state.epoch, history)  # the spec says it is one
