"""Running a generator over an image in overlapping tiles, for images whose activations do not
fit in memory at once (a 4K photo at full resolution through U-Net-256).

The model input (already at the scale the model sees, padded to the stride) is cut into tiles of
`size` x `size` (a multiple of the stride) that overlap by at least `overlap` pixels; the last
tile of a row or column is moved back to end at the image's edge. Each tile's output is weighted
by a window that is 1 inside and falls as sin² over the `overlap` pixels of each side that
meets another tile (never at the image's border), and the weighted outputs are summed and
divided by the summed weights. Two neighbours' ramps add up to exactly 1 where they overlap by
`overlap`, so a network whose output at a pixel does not depend on pixels farther than the
overlap gives the untiled result; the U-Net's deepest levels see the whole input, so real
outputs differ by how much that distant context matters (README gives measured figures).
Where one tile covers the image, the result is the untiled one.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from p2p.errors import UsageError


@dataclass(frozen=True)
class Tiling:
    size: int  # tile side at the model's scale, a multiple of the stride
    overlap: int  # pixels shared by neighbouring tiles

    def check(self, stride: int, min_side: int = 0) -> None:
        if self.size < stride or self.size % stride:
            raise UsageError(f"--tile {self.size} must be a positive multiple of the network's stride {stride}")
        if self.size < min_side:
            raise UsageError(f"--tile {self.size} must be at least {min_side} for this network (2 px at its coarsest "
                             f"scale)")
        if not 0 <= self.overlap < self.size:
            raise UsageError(f"--overlap {self.overlap} must be in [0, --tile {self.size})")


def tile_starts(length: int, size: int, overlap: int) -> list[int]:
    """Start offsets covering [0, length) with tiles of `size` overlapping by >= `overlap`."""
    if length <= size:
        return [0]
    step = size - overlap
    count = math.ceil((length - size) / step) + 1
    return [min(i * step, length - size) for i in range(count)]


def _ramp(length: int, overlap: int, rise: bool, fall: bool, device) -> torch.Tensor:
    w = torch.ones(length, dtype=torch.float64, device=device)
    if overlap:
        # sin² at the rising side and cos² at the falling side of a neighbour sum to one
        t = torch.sin(0.5 * math.pi * (torch.arange(overlap, dtype=torch.float64, device=device) + 0.5) / overlap) ** 2
        if rise:
            w[:overlap] = torch.minimum(w[:overlap], t)
        if fall:
            w[-overlap:] = torch.minimum(w[-overlap:], t.flip(0))
    return w


def run_tiled(G, x: torch.Tensor, tiling: Tiling, forward=None) -> torch.Tensor:
    """G over `x` (N x C x H x W, H and W multiples of the stride) in tiles; `forward(G, tile)`
    runs one tile (default `G(tile)`). Returns N x C_out x H x W in float32."""
    forward = forward or (lambda net, t: net(t))
    n, _, h, w = x.shape
    th, tw = min(tiling.size, h), min(tiling.size, w)
    ys, xs = tile_starts(h, th, tiling.overlap), tile_starts(w, tw, tiling.overlap)
    if len(ys) == 1 and len(xs) == 1:
        return forward(G, x).float()
    out = weight = None
    for y in ys:
        wy = _ramp(th, tiling.overlap, y > 0, y + th < h, x.device)
        for x0 in xs:
            wx = _ramp(tw, tiling.overlap, x0 > 0, x0 + tw < w, x.device)
            tile = forward(G, x[..., y:y + th, x0:x0 + tw]).double()
            if out is None:
                out = torch.zeros(n, tile.shape[1], h, w, dtype=torch.float64, device=x.device)
                weight = torch.zeros(1, 1, h, w, dtype=torch.float64, device=x.device)
            win = wy[:, None] * wx[None, :]
            out[..., y:y + th, x0:x0 + tw] += tile * win
            weight[..., y:y + th, x0:x0 + tw] += win
    return (out / weight).float()
