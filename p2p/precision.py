"""Autocast for the model forwards, and the gradient scalers that go with it (`train.precision`):
what training, `p2p eval`, the Python API and the benchmarks share."""

from __future__ import annotations

import contextlib

import torch


class Precision:
    """Autocast for the model forwards; losses, Lab and the optimizers stay float32."""

    DTYPES = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}

    def __init__(self, precision: str, device: torch.device):
        self.name = precision
        self.dtype = self.DTYPES[precision]
        self.device_type = device.type

    def autocast(self):
        if self.dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(self.device_type, dtype=self.dtype)

    def make_scaler(self, skip_nonfinite: bool) -> torch.amp.GradScaler:
        """fp16: dynamic loss scaling, one scaler per network (their losses differ by orders of
        magnitude, so one shared scale would be wrong for one of them).
        `skip_nonfinite` in fp32/bf16: a scaler fixed at 1.0 whose only job is to skip updates
        with non-finite gradients; it can only shrink by powers of two, which is exact."""
        if self.name == "fp16":
            return torch.amp.GradScaler(self.device_type)
        if skip_nonfinite:
            return torch.amp.GradScaler(self.device_type, init_scale=1.0, growth_interval=2**30)
        return torch.amp.GradScaler(self.device_type, enabled=False)
