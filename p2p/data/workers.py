"""What became of a DataLoader worker process that died under a loader (the folder and wds
backends decode in them). The out-of-memory killer and `kill -9` end a worker with SIGKILL, and
the main process then fails in one of several ways: PyTorch's SIGCHLD handler raises
"DataLoader worker (pid N) is killed by signal" wherever the main thread is (in a step too),
its 5-second status check raises "exited unexpectedly", or a batch the worker was handing over
breaks half-way (ConnectionResetError, EOFError from the shared-memory hand-over).

`watched(loader)` iterates a DataLoader and, when anything fails while one of its workers is
dead, raises `LoaderWorkerDied` naming the worker (index, pid, signal); `worker_failure(error)`
reads PyTorch's own message for the errors raised outside the iteration. The loop turns both
into one line naming the last good checkpoint.

`quiet_handover` (every loader's worker_init_fn) keeps the surviving workers silent when the main
process leaves a tensor's hand-over half-way, which it does when it fails in the middle of one."""

from __future__ import annotations

import re
import signal
import sys
import time
from typing import Iterator

# The messages of torch/csrc/DataLoader.cpp and torch/utils/data/dataloader.py (_try_get_data)
_PATTERN = re.compile(r"DataLoader worker \(pid(?:\(s\))? ([0-9, ]+)\) (?:is killed by signal: ([^.]+)"
                      r"|exited unexpectedly(?: with exit code (-?\d+))?)")
DEATH_SETTLES_S = 2.0  # how long a failed hand-over waits for the dead worker's exit status


class LoaderWorkerDied(RuntimeError):
    """A DataLoader worker process exited abruptly; the message names it and how it ended."""


def _signal_name(description: str) -> str:
    for s in signal.Signals:
        if signal.strsignal(s) == description.strip():
            return s.name
    return description.strip()


def _ending(exitcode: int) -> str:
    if exitcode < 0:
        try:
            return f"was killed by {signal.Signals(-exitcode).name}"
        except ValueError:
            return f"was killed by signal {-exitcode}"
    return f"exited with code {exitcode}"


def dead_workers(iterator) -> list[str]:
    """'data loader worker 1 of 2 (pid 1234) was killed by SIGKILL' for each dead worker of a
    DataLoader iterator (its `_workers`, multiprocessing.Process objects; none in-process)."""
    procs = getattr(iterator, "_workers", None) or []
    return [f"data loader worker {i} of {len(procs)} (pid {p.pid}) {_ending(p.exitcode)}"
            for i, p in enumerate(procs) if p.exitcode not in (None, 0)]


def watched(loader) -> Iterator:
    """The items of a DataLoader; a failure while one of its workers is dead is LoaderWorkerDied."""
    it = iter(loader)
    while True:
        try:
            item = next(it)
        except StopIteration:
            return
        except Exception:
            deadline = time.monotonic() + DEATH_SETTLES_S
            dead = dead_workers(it)
            while not dead and time.monotonic() < deadline and getattr(it, "_workers", None):
                time.sleep(0.05)
                dead = dead_workers(it)
            if dead:
                raise LoaderWorkerDied("; ".join(dead)) from None
            raise
        yield item


def worker_failure(error: BaseException) -> str | None:
    """The dead worker an error is about, in the words of `dead_workers`, else None."""
    if isinstance(error, LoaderWorkerDied):
        return str(error)
    m = _PATTERN.search(str(error))
    if m is None:
        return None
    pids = m.group(1).strip()
    who = f"data loader worker{'s' if ',' in pids else ''} (pid {pids})"
    if m.group(2):
        return f"{who} was killed by {_signal_name(m.group(2))}"
    if m.group(3):
        return f"{who} {_ending(int(m.group(3)))}"
    return f"{who} exited unexpectedly"


# A worker sends a batch's tensors as file descriptors (PyTorch's default "file_descriptor"
# sharing strategy, torch/multiprocessing/reductions.py: reduce_storage -> DupFd): Python's
# multiprocessing.resource_sharer serves each one from a thread of the worker, and that thread
# hands any error to sys.excepthook (resource_sharer._serve, CPython 3.11). When the main process
# fails while it receives a batch (PyTorch's SIGCHLD handler raising because another worker died,
# Ctrl-C), the worker's thread finds the connection closed and prints a traceback under the main
# process's one-line error. The failure is the receiver's, and the receiver reports it.
_HANDOVER_ERRORS = (EOFError, ConnectionError)


def _in_handover(tb) -> bool:
    code = tb.tb_frame.f_code if tb is not None else None
    return code is not None and code.co_name == "_serve" and code.co_filename.endswith("resource_sharer.py")


def quiet_handover(worker_id: int) -> None:
    """DataLoader worker_init_fn: a hand-over the main process broke off prints nothing in the
    worker; every other uncaught error still reaches the hook it reached before."""
    previous = sys.excepthook

    def hook(kind, value, tb):
        if not (issubclass(kind, _HANDOVER_ERRORS) and _in_handover(tb)):
            previous(kind, value, tb)

    sys.excepthook = hook
