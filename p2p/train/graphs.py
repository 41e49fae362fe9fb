"""The whole G+D training step captured in one CUDA graph and replayed: one launch per step
instead of hundreds, which is what small-image GAN steps are bound by on fast GPUs.

Requirements, all met by the rest of the trainer: static shapes (fixed batch and image size),
no host syncs in the step (losses stay on the device), Adam with `capturable=True` and its lr
as a device tensor (p2p.train.wrap.make_optimizer), and no GradScaler host reads (so fp16 and
`on_nonfinite=skip`, whose scalers read `found_inf` on the host, run eager instead). Dropout
stays random across replays: PyTorch registers its CUDA generator with the graph and advances
the Philox offset on each replay.

The first `warmup` calls run eagerly on a side stream (cuDNN/cuBLAS pick their algorithms and
optimizer state is allocated); each of them is a real training step. The next call captures
the step and replays it, so every call is exactly one step.
"""

from __future__ import annotations

import torch


class GraphedStep:
    def __init__(self, step, warmup: int = 3, notice=None):
        self.step = step
        self.warmup = warmup
        self.notice = notice or (lambda text: None)
        self.calls = 0
        self.graph: torch.cuda.CUDAGraph | None = None
        self.failed = False
        self.stream = torch.cuda.Stream()

    def __call__(self, inp: torch.Tensor, target: torch.Tensor) -> dict[str, torch.Tensor]:
        self.calls += 1
        if self.failed:
            return self.step(inp, target)
        if self.calls <= self.warmup:
            self.stream.wait_stream(torch.cuda.current_stream())
            with torch.cuda.stream(self.stream):
                out = self.step(inp, target)
            torch.cuda.current_stream().wait_stream(self.stream)
            return out
        if self.graph is None:
            try:
                self._capture(inp, target)
            except RuntimeError as e:  # e.g. an op that cannot be captured: stay correct, run eager
                self.failed, self.graph = True, None
                torch.cuda.synchronize()
                self.notice(f"CUDA graph capture failed ({str(e).splitlines()[0]}); running eager steps")
                return self.step(inp, target)
        self.static_inp.copy_(inp, non_blocking=True)
        self.static_target.copy_(target, non_blocking=True)
        self.graph.replay()
        return self.static_out

    def _capture(self, inp: torch.Tensor, target: torch.Tensor) -> None:
        self.static_inp = inp.clone()
        self.static_target = target.clone()
        torch.cuda.synchronize()
        graph = torch.cuda.CUDAGraph()
        # Gradients are set to None inside the step, so backward allocates them from the graph's
        # private pool and every replay reuses the same memory.
        with torch.cuda.graph(graph):
            self.static_out = self.step(self.static_inp, self.static_target)
        self.graph = graph
