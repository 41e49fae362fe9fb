"""What a run asked for against what really runs, said where a user looks.

A speed-up that was asked for and is not in effect (CUDA graphs that failed to capture,
torch.compile that gave up recompiling, fused Adam missing, SyncBatchNorm without CUDA) is a
`notice`: printed when it happens (those found while the run is built are printed as it
starts) and carried in the next `metrics.jsonl` row. Every row also says what ran in its
interval (`InEffect.row`): the autocast precision, channels_last, torch.compile, CUDA graph
replays, the Adam kernel, so a benchmark read off the metrics cannot be a silent fallback.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

import torch


class Notices:
    """Things a user must see. Collected while the run is built; once `attach`ed to a printer,
    every notice is printed (the collected ones at once, later ones when they happen), and each
    one goes into the next metrics row (`take`)."""

    def __init__(self):
        self.all: list[str] = []
        self._pending: list[str] = []
        self._sink: Callable[[str], None] | None = None

    def __call__(self, text: str) -> None:
        self.all.append(text)
        self._pending.append(text)
        if self._sink is not None:
            self._sink(text)

    append = __call__  # where a list of notices was expected

    def __iadd__(self, texts):
        for text in texts:
            self(text)
        return self

    def __iter__(self):
        return iter(self.all)

    def __len__(self) -> int:
        return len(self.all)

    def attach(self, sink: Callable[[str], None]) -> None:
        self._sink = sink
        for text in self.all:
            sink(text)

    def take(self) -> list[str]:
        """The notices since the last call (for a metrics row)."""
        out, self._pending = self._pending, []
        return out


def adam_kind(opt: torch.optim.Optimizer) -> str:
    """fused, foreach, for-loop, and ", capturable" when its state and lr live on the device."""
    g = opt.param_groups[0]
    if g.get("fused"):
        return "fused"
    kind = "foreach" if g.get("foreach") else "for-loop"
    return f"{kind}, capturable" if g.get("capturable") else kind


def dynamo_counts() -> dict[str, int]:
    """Process-wide torch.compile counts: graphs compiled, graph breaks, and the times dynamo
    gave up recompiling a function (it then runs that function eagerly for new inputs)."""
    try:
        from torch._dynamo.utils import counters
    except Exception:  # no dynamo in this build: nothing was compiled
        return {"graphs": 0, "graph_breaks": 0, "gave_up": 0}
    gave_up = sum(n for msg, n in counters["unimplemented"].items()
                  if "recompile limit" in str(msg).lower() or "cache_size_limit" in str(msg).lower()
                  or "cache limit" in str(msg).lower())
    return {"graphs": int(counters["stats"]["unique_graphs"]),
            "graph_breaks": int(sum(counters["graph_break"].values())), "gave_up": int(gave_up)}


@dataclass
class InEffect:
    """The speed-ups of a run as built (not as configured), and the live state of the ones that
    can change while it runs (graph capture, compilation)."""

    precision: str
    channels_last: bool
    compile: bool  # wrapped in torch.compile
    adam: str
    sync_batchnorm: bool | None = None  # None: model.norm is not syncbatch
    step_fn: object = None
    notices: Notices = field(default_factory=Notices)
    counters: dict = field(default_factory=dict)  # network name -> its GraphCounter (p2p.train.compiled)
    device_step: object = None  # the task's fused DeviceStep, or None
    jpeg_decoder: str | None = None  # the CPU JPEG decoder of a loader that decodes with p2p.data.decode
    _replays: int = 0
    _gave_up: int = 0

    def compiled(self) -> list[str]:
        """The networks that ran compiled so far, each from its own compile: "G", "D" (their
        GraphCounters) and "device step" (the fused step's compiled function)."""
        from p2p.train.compiled import device_step_compiled

        names = [name for name, counter in self.counters.items() if counter.graphs > 0]
        return names + (["device step"] if device_step_compiled(self.device_step) else [])

    def row(self) -> dict:
        """Fields for the metrics row of the interval since the last call; takes the notices."""
        graphed = getattr(self.step_fn, "replays", None) is not None
        replays = self.step_fn.replays if graphed else 0
        out = {"precision": self.precision, "channels_last": self.channels_last, "adam": self.adam,
               "cuda_graphs": bool(graphed and self.step_fn.graph is not None and not self.step_fn.failed),
               "graph_replays": replays - self._replays, "compiled": self.compiled()}
        self._replays = replays
        if self.compile:
            counts = dynamo_counts()
            if counts["gave_up"] > self._gave_up:
                self.notices(f"torch.compile hit dynamo's recompile limit {counts['gave_up']} time(s) so far: "
                             f"new input shapes or modes of the networks now run eagerly (TORCH_LOGS=recompiles "
                             f"says why)")
                self._gave_up = counts["gave_up"]
            out["compile_graph_breaks"] = counts["graph_breaks"]
        if self.sync_batchnorm is not None:
            out["sync_batchnorm"] = self.sync_batchnorm
        if self.jpeg_decoder is not None:
            out["jpeg_decoder"] = self.jpeg_decoder
        notices = self.notices.take()
        if notices:
            out["notices"] = notices
        return out
