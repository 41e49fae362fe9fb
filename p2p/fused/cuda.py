"""The fused device step on a GPU: one function per task written so that `torch.compile`
(Inductor -> Triton) turns it into a single kernel per output, each thread reading its window
pixel through the crop and mirror indices, the table and the arithmetic in registers, writing
float32 once. Eager PyTorch would run it as a chain of full-size passes (each a trip through
GPU memory), which is what makes the unfused step memory-bound.

Written for fusion: the crop is an index computation (no per-sample Python loop, no
`.tolist()` host sync), the cube root is `torch.pow(t, 1/3)` under a `where` (Triton's pow; both
branches are cheap in registers), and every constant is a Python float. The functions are
plain PyTorch and run uncompiled on any device: `tests/test_fused.py` checks them against the
eager path on the CPU, `tests/test_gpu.py` compiled on CUDA.

Compilation is once per process and input shape (torch.compile's own cache; Inductor's FX
graph and Triton caches make later processes on the same machine faster); a failure falls
back to eager with one warning (p2p.fused.DeviceStep).
"""

from __future__ import annotations

import torch

from p2p import color

_L_SCALE, _AB_A, _AB_B = 1 / 50, 500 / 110, 200 / 110


def window_indices(top: torch.Tensor, left: torch.Tensor, mirror: torch.Tensor, size: int,
                   device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """Row and column indices of every window (N x size each), mirrored columns reversed."""
    offs = torch.arange(size)
    rows = top[:, None] + offs
    cols = torch.where(mirror[:, None], left[:, None] + (size - 1) - offs, left[:, None] + offs)
    return rows.to(device, non_blocking=True), cols.to(device, non_blocking=True)


def _pixels(images: torch.Tensor, rows: torch.Tensor, cols: torch.Tensor) -> torch.Tensor:
    """The windows' pixels, N x 3 x S x S, as one gather (Inductor folds it into the consumer)."""
    batch = torch.arange(images.shape[0], device=images.device)[:, None, None, None]
    channel = torch.arange(3, device=images.device)[None, :, None, None]
    return images[batch, channel, rows[:, None, :, None], cols[:, None, None, :]]


def _lab_f(t: torch.Tensor) -> torch.Tensor:
    return torch.where(t > color._LAB_KNEE, torch.pow(t, 1 / 3), color._LAB_SLOPE * t + color._LAB_OFFSET)


def colorize(images: torch.Tensor, rows: torch.Tensor, cols: torch.Tensor,
             table: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """uint8 N x 3 x H x W -> (L/50 - 1, ab/110) of the windows, float32."""
    linear = table[_pixels(images, rows, cols).long()]
    r, g, b = linear.unbind(1)
    m = color._WHITE_XYZ_FROM_RGB
    fx = _lab_f(m[0][0] * r + m[0][1] * g + m[0][2] * b)
    fy = _lab_f(m[1][0] * r + m[1][1] * g + m[1][2] * b)
    fz = _lab_f(m[2][0] * r + m[2][1] * g + m[2][2] * b)
    l_norm = ((116.0 * fy - 16.0) * _L_SCALE - 1.0).unsqueeze(1)
    ab_norm = torch.stack([(fx - fy) * _AB_A, (fy - fz) * _AB_B], 1)
    return l_norm, ab_norm


def gray2rgb(images: torch.Tensor, rows: torch.Tensor, cols: torch.Tensor,
             table: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """uint8 N x 3 x H x W -> (luma, RGB) of the windows in [-1, 1], float32; `table` = code / 255."""
    rgb01 = table[_pixels(images, rows, cols).long()]
    r, g, b = rgb01.unbind(1)
    gray = (0.299 * r + 0.587 * g + 0.114 * b) * 2.0 - 1.0
    return gray.unsqueeze(1), rgb01 * 2.0 - 1.0
