"""Experiment trackers as the convenience they are: a full disk or an I/O error in a tracker's
writer never stops a run or prints a traceback. TensorBoard (through Accelerate's tracker, a
torch SummaryWriter) writes from a thread of its own; on a failed write that thread dies with
the OSError (threading prints it as a traceback) and the writer raises it again at the next call
in the training thread. `Guarded` turns that into one notice and no more calls; the thread's own
report is silenced, since the training thread reports it."""

from __future__ import annotations

import threading
from typing import Callable

_WRITER_THREAD = "_AsyncWriterThread"  # tensorboard/summary/writer/event_file_writer.py
_previous_hook = None


def _silence_writer_thread_errors() -> None:
    global _previous_hook
    if _previous_hook is not None:
        return
    _previous_hook = threading.excepthook

    def hook(args):
        if type(args.thread).__name__ == _WRITER_THREAD and isinstance(args.exc_value, OSError):
            return  # raised again in the training thread at the next call, reported there once
        _previous_hook(args)

    threading.excepthook = hook


class Guarded:
    """`target`'s methods, whose OSErrors become one notice; after one, nothing more is called."""

    def __init__(self, target, what: str, notice: Callable[[str], None]):
        self._target, self._what, self._notice = target, what, notice
        _silence_writer_thread_errors()

    def __getattr__(self, method: str):
        def call(*args, **kwargs):
            if self._target is None:
                return None
            try:
                return getattr(self._target, method)(*args, **kwargs)
            except OSError as e:
                self._target = None
                self._notice(f"[yellow]notice:[/] {self._what} stopped (the run goes on without them): {e}")
                return None
        return call
