"""SIGTERM / SIGUSR2 as a request to stop at the next step boundary (Slurm sends USR2 before a
time limit or preemption, and TERM when it cancels or requeues; torchrun forwards TERM).

The handler only sets a flag. Ranks agree on stopping with a max-all-reduce every few steps, so
all of them save the same step even when only some received the signal.

One exception: a single-process run that is signalled before its first step of this invocation
has finished (building, loading, compiling: a cold torch.compile of the full networks takes
minutes) has nothing new to save, so the handler raises `StoppedBeforeFirstStep` and the run
ends at once instead of after that step (a time limit's grace would otherwise run out in the
compile, and a SIGKILL follow).
"""

from __future__ import annotations

import signal

import torch

SIGNALS = (signal.SIGTERM, signal.SIGUSR2)


class StoppedBeforeFirstStep(Exception):
    """A stop signal arrived before this invocation's first step finished: nothing to save."""


class StopSignals:
    def __init__(self, at_once: bool = False):
        self.name: str | None = None
        self.at_once = at_once  # raise StoppedBeforeFirstStep from the handler (until `stepped`)
        self._previous: dict = {}

    def _handle(self, signum, frame):
        self.name = signal.Signals(signum).name
        if self.at_once:
            self.at_once = False
            raise StoppedBeforeFirstStep(self.name)

    def stepped(self) -> None:
        """A step finished: from now on a signal stops at the next step boundary, with a checkpoint."""
        self.at_once = False

    def __enter__(self):
        for s in SIGNALS:
            self._previous[s] = signal.getsignal(s)
            signal.signal(s, self._handle)
        return self

    def __exit__(self, *exc):
        for s, h in self._previous.items():
            signal.signal(s, h)
        return False

    def agreed(self, accel, every: int, step: int) -> bool:
        """True on every rank once any rank got a signal (checked every `every` steps)."""
        if accel.num_processes == 1:
            return self.name is not None
        if step % every:
            return False
        flag = torch.tensor([1.0 if self.name else 0.0], device=accel.device)
        torch.distributed.all_reduce(flag, op=torch.distributed.ReduceOp.MAX)
        if flag.item() and self.name is None:  # note: host sync, once every `every` steps
            self.name = "peer signal"
        return self.name is not None
