"""TensorBoard events as the convenience they are: a full disk or an I/O error in TensorBoard's
writer never stops a run or prints a traceback. TensorBoard writes from a thread of its own; on
a failed write that thread dies with the OSError (threading prints it as a traceback) and the
writer raises it again at the next call in the training thread. `GuardedTensorBoard` turns
that into one notice and no more events; the thread's own report is silenced, since the
training thread reports it."""

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


class GuardedTensorBoard:
    """A SummaryWriter whose OSErrors become one notice; after one, it writes nothing more."""

    def __init__(self, writer, notice: Callable[[str], None]):
        self._writer, self._notice = writer, notice
        _silence_writer_thread_errors()

    def _call(self, method: str, *args, **kwargs) -> None:
        if self._writer is None:
            return
        try:
            getattr(self._writer, method)(*args, **kwargs)
        except OSError as e:
            self._writer = None
            self._notice(f"[yellow]notice:[/] TensorBoard events stopped (the run goes on without them): {e}")

    def add_scalar(self, *args, **kwargs) -> None:
        self._call("add_scalar", *args, **kwargs)

    def add_image(self, *args, **kwargs) -> None:
        self._call("add_image", *args, **kwargs)

    def close(self) -> None:
        self._call("close")
