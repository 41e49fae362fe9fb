"""The whole G+D training step captured in one CUDA graph and replayed: one launch per step
instead of hundreds, which is what small-image GAN steps are bound by on fast GPUs.

Requirements, all met by the rest of the trainer: static shapes (fixed batch and image size),
no host syncs in the step (losses stay on the device), Adam with `capturable=True` and its lr
as a device tensor (p2p.train.wrap.make_optimizer) that `set_lr` fills before each replay,
no GradScaler host reads (so fp16 and `on_nonfinite=skip`, whose scalers read `found_inf` on
the host, run eager instead), and one process (p2p.train.run.use_cuda_graphs). Dropout stays
random across replays: PyTorch registers its CUDA generator with the graph and advances the
Philox offset on each replay.

Every call copies its inputs into static buffers made once with the strides of the first
inputs (colorization's L and ab are strided channel views of one Lab tensor), and the warm-up
steps run on those same buffers: a torch.compile'd network then sees identical tensors in
warm-up and capture, so its guards hold and nothing recompiles inside the capture (a clone
would be contiguous, fail the stride guard and recompile there, which cannot be captured).

The first `warmup` calls run eagerly on a side stream (cuDNN/cuBLAS pick their algorithms,
optimizer state is allocated, torch.compile compiles); each of them is a real training step.
The next call captures the step and replays it, so every call is exactly one step. Capture
uses `capture_error_mode="thread_local"`: in the default "global" mode a CUDA call from any
other thread (the DataLoader's pin-memory thread allocating pinned memory, DALI's prefetch)
invalidates the capture (PyTorch's torch.cuda.graph docs; pytorch/pytorch#175425).
"""

from __future__ import annotations

import torch


WARMUP_STEPS = 3  # eager steps before the capture


def static_like(x: torch.Tensor) -> torch.Tensor:
    """An uninitialised buffer with x's shape, strides, dtype and device (torch.empty_like and
    clone give non-dense views such as lab[:, :1] contiguous strides instead)."""
    return torch.empty_strided(x.size(), x.stride(), dtype=x.dtype, device=x.device)


class GraphedStep:
    def __init__(self, step, warmup: int = WARMUP_STEPS, notice=None):
        self.step = step
        self.warmup = warmup
        self.notice = notice or (lambda text: None)
        self.calls = 0
        self.replays = 0
        self.graph: torch.cuda.CUDAGraph | None = None
        self.failed = False
        self.stream = torch.cuda.Stream()
        self.static_inp: torch.Tensor | None = None
        self.static_target: torch.Tensor | None = None

    def __call__(self, inp: torch.Tensor, target: torch.Tensor) -> dict[str, torch.Tensor]:
        self.calls += 1
        if self.static_inp is None:
            self.static_inp, self.static_target = static_like(inp), static_like(target)
        self.static_inp.copy_(inp, non_blocking=True)
        self.static_target.copy_(target, non_blocking=True)
        if self.failed:  # eager on the same buffers: a compiled network's guards still hold
            return self.step(self.static_inp, self.static_target)
        if self.calls <= self.warmup:
            self.stream.wait_stream(torch.cuda.current_stream())
            with torch.cuda.stream(self.stream):
                out = self.step(self.static_inp, self.static_target)
            torch.cuda.current_stream().wait_stream(self.stream)
            return out
        if self.graph is None:
            caller = torch.cuda.current_stream()
            try:
                self._capture()
            except RuntimeError as e:  # e.g. an op that cannot be captured: stay correct, run eager
                # torch.cuda.graph's __exit__ leaves the capture stream current when capture_end
                # raises (it restores the stream only after a successful end): go back first.
                torch.cuda.set_stream(caller)
                self.failed, self.graph = True, None
                torch.cuda.synchronize()
                self.notice(f"CUDA graph capture failed at step call {self.calls} ({str(e).splitlines()[0]}); "
                            f"running eager steps from here on")
                return self.step(self.static_inp, self.static_target)
        self.graph.replay()
        self.replays += 1
        return self.static_out

    def _capture(self) -> None:
        torch.cuda.synchronize()
        graph = torch.cuda.CUDAGraph()
        # Gradients are set to None inside the step, so backward allocates them from the graph's
        # private pool and every replay reuses the same memory.
        with torch.cuda.graph(graph, capture_error_mode="thread_local"):
            self.static_out = self.step(self.static_inp, self.static_target)
        self.graph = graph
