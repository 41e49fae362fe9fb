"""An exponential moving average of the generator's weights (`train.ema_decay`), as StyleGAN,
imaginaire and BasicSR keep one: after every G update, ema <- decay * ema + (1 - decay) * G for
each parameter, on the device in one multi-tensor op (no host sync, so it runs inside the
step and inside its CUDA graph); BatchNorm running statistics are copied from G as they are
(averaging statistics of different weights would describe neither).

The average starts as a copy of G's initial weights. It is saved in checkpoints as
`generator_ema` and, whenever present, it is what validation, best.pt selection, `p2p predict`,
`p2p eval` and export use (`p2p.models.load_generator(weights=...)` chooses). On resume its
parameters come back from the checkpoint and its buffers from this rank's G, which they equalled
when it was saved, so a resumed run continues bit-exactly.
"""

from __future__ import annotations

import copy

import torch
from torch import nn

from p2p.train.wrap import unwrap


class GeneratorEMA:
    def __init__(self, G: nn.Module, decay: float):
        self.decay = decay
        source = unwrap(G)
        self.module = copy.deepcopy(source).eval().requires_grad_(False)
        self._source_params = list(source.parameters())
        self._params = list(self.module.parameters())
        self._source_buffers = list(source.buffers())
        self._buffers = list(self.module.buffers())

    @torch.no_grad()
    def update(self) -> None:
        torch._foreach_lerp_(self._params, self._source_params, 1.0 - self.decay)
        self.copy_buffers()

    @torch.no_grad()
    def copy_buffers(self) -> None:
        for mine, theirs in zip(self._buffers, self._source_buffers):
            mine.copy_(theirs)

    def state_dict(self) -> dict[str, torch.Tensor]:
        return self.module.state_dict()

    @torch.no_grad()
    def restore(self, payload: dict) -> str | None:
        """Parameters from a checkpoint, buffers from G (already restored for this rank).
        Returns a notice when the checkpoint has no average to continue."""
        saved = payload.get("generator_ema")
        if saved is None:
            for mine, theirs in zip(self._params, self._source_params):
                mine.copy_(theirs)
            self.copy_buffers()
            return "train.ema_decay is on but the checkpoint holds no EMA generator: the average starts " \
                   "from the resumed weights"
        self.module.load_state_dict(saved)
        self.copy_buffers()
        return None
