"""Which networks torch.compile really compiled, read off each network's own compile.

Dynamo's counters are process-wide: the fused device step's own `torch.compile` (p2p.fused)
makes them non-zero in every GPU run, whether or not G and D compiled. So each network is
compiled with its own `GraphCounter` as the backend: it hands every graph dynamo captured for
that network to the real backend (inductor) and counts the ones it compiled. A metrics row's
`compiled` lists the networks whose counter is above zero (p2p.train.in_effect).
"""

from __future__ import annotations


class GraphCounter:
    """A torch.compile backend for one network: `backend` (a name dynamo knows, "inductor" by
    default) compiles each graph; `graphs` counts those it compiled without raising."""

    def __init__(self, name: str, backend: str = "inductor"):
        self.name, self.backend, self.graphs = name, backend, 0

    def __call__(self, gm, example_inputs):
        from torch._dynamo import lookup_backend

        compiled = lookup_backend(self.backend)(gm, example_inputs)
        self.graphs += 1
        return compiled


def device_step_compiled(device_step) -> bool:
    """Whether the fused device step ran as its torch.compile'd function (p2p.fused.DeviceStep:
    `compile_s` holds a task's name once its compiled function ran; "cpu" is the C kernel)."""
    if device_step is None:
        return False
    return "cuda" not in device_step.unavailable and any(k != "cpu" for k in device_step.compile_s)
