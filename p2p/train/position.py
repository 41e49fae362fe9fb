"""Where in the data a resumed run goes on, when it resumes with another world size or batch
size than the checkpoint was saved with: the position is the images read so far in the epoch
(p2p.data.plan.continued_plan), so no image of the epoch is read twice or skipped, and the step
count (and with it the lr schedule, a function of the step) is unchanged.

A checkpoint stores `epoch`, `batch_in_epoch` (batches per rank since the epoch's last change of
world or batch size), `epoch_history` (the parts of the epoch before that change, each
(world, batch size, batches per rank)), `world_size` and the config's batch size. Resuming with
the same world and batch size continues the same part; with others, the saved part joins the
history and the loader reads the rest of the epoch split over the new ranks. Loaders that
cannot (data.backend=dali; p2p.data.dali says why) refuse with one line.
"""

from __future__ import annotations

from p2p.data.plan import images_read
from p2p.errors import UsageError


def saved_shape(payload: dict) -> tuple[int, int]:
    """(world size, batch size per rank) the checkpoint's current part of the epoch ran with."""
    return int(payload.get("world_size", 1)), int(payload["config"]["train"]["batch_size"])


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


def continue_loader(loader, state, backend: str) -> None:
    """Give the loader the epoch's history, so that it serves what is left of the epoch."""
    if not state.epoch_history:
        return
    continue_epoch = getattr(loader, "continue_epoch", None)
    if continue_epoch is None:
        raise UsageError(f"data.backend={backend} cannot continue epoch {state.epoch} with another world or "
                         f"batch size; resume with the checkpoint's and change it at the epoch boundary")
    continue_epoch(state.epoch, [tuple(h) for h in state.epoch_history])


def epoch_batches(loader, epoch: int) -> int:
    """Batches per rank in `epoch`: fewer in an epoch continued with another world size."""
    count = getattr(loader, "epoch_batches", None)
    return count(epoch) if count is not None else loader.batches_per_epoch
