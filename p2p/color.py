"""sRGB <-> CIELAB on batched torch tensors, matching scikit-image, on any device.

`rgb_to_lab` and `lab_to_rgb` reproduce `skimage.color.rgb2lab` / `lab2rgb` (illuminant D65,
2-degree observer) in float32 on N x 3 x H x W (or 3 x H x W) tensors, so a data pipeline or an
evaluation can convert a whole batch on the GPU instead of image by image in NumPy. The
constants are skimage's (`skimage/color/colorconv.py`): the sRGB -> XYZ matrix `xyz_from_rgb`
of the sRGB specification, its exact inverse, the D65 white (0.95047, 1, 1.08883) and the CIE
piecewise constants (0.008856, 7.787, 16/116; sRGB 0.04045, 12.92, 2.4, 0.055). Out-of-gamut
Lab (a colourising network's output) is treated as skimage treats it: a negative z is set to 0,
then RGB is clipped to [0, 1].

uint8 input takes a faster path: its 256 possible values go through the sRGB gamma once, in a
256-entry table cached per device, and each pixel only gathers its entry. The gamma is a power
function, and with the cube root of the Lab transfer function it dominates the cost.

Everything is elementwise float32 arithmetic with Python-float coefficients, the 3 x 3 colour
matrices included: a matmul would make the results depend on TF32 and
`torch.set_float32_matmul_precision` (1e-3 relative: 0.1 in a and b), and is not faster here.
Autocast is switched off inside, so an autocast region around a call changes nothing.

The colourisation model (as in the official pix2pix colorization model) sees L/50 - 1 and
ab/110; `lab_to_model` and `model_to_rgb` go to and from that form.
"""

from __future__ import annotations

import numpy as np
import torch
from collections.abc import Callable

from torch import Tensor

__all__ = [
    "rgb_to_lab",
    "rgb_to_lightness",
    "lab_to_rgb",
    "normalize_l",
    "normalize_ab",
    "denormalize_l",
    "denormalize_ab",
    "lab_to_model",
    "model_to_rgb",
    "lab_to_rgb_autograd",
]

# skimage.color.colorconv.xyz_from_rgb (sRGB specification) and the D65 / 2-degree white.
_XYZ_FROM_RGB = np.array(
    [
        [0.412453, 0.357580, 0.180423],
        [0.212671, 0.715160, 0.072169],
        [0.019334, 0.119193, 0.950227],
    ]
)
_D65_WHITE = np.array([0.95047, 1.0, 1.08883])

# Rows: X/Xn, Y/Yn, Z/Zn from linear RGB; columns: linear RGB from X, Y, Z (skimage inverts
# the same matrix, in float64, and scales by the white after lab2xyz: folded in here).
_WHITE_XYZ_FROM_RGB = (_XYZ_FROM_RGB / _D65_WHITE[:, None]).tolist()
_RGB_FROM_WHITE_XYZ = (np.linalg.inv(_XYZ_FROM_RGB) * _D65_WHITE[None, :]).tolist()

# The piecewise transfer functions, as skimage writes them: a power curve above the knee, a
# line (slope, intercept) below it.
# sRGB -> linear: ((c + 0.055) / 1.055) ** 2.4 above 0.04045, c / 12.92 below.
_SRGB_KNEE = 0.04045
# linear -> sRGB: 1.055 * v ** (1 / 2.4) - 0.055 above 0.0031308, 12.92 v below.
_LINEAR_KNEE = 0.0031308
# CIE f(t) = cbrt(t) above 0.008856, 7.787 t + 16/116 below, and its inverse, which switches at
# f = 0.2068966 (skimage's rounded constants, not the exact 6/29 ones).
_LAB_KNEE = 0.008856
_LAB_SLOPE = 7.787
_LAB_OFFSET = 16.0 / 116.0
_LAB_F_KNEE = 0.2068966

_GAMMA_TABLES: dict[torch.device, Tensor] = {}


def _pow_(t: Tensor, exponent: float) -> Tensor:
    """t ** exponent in place, for t > 0. On CPU exp2(log2) takes 2/3 of torch.pow's time (exp2
    is much cheaper than exp), at the same float32 accuracy (2e-7 relative)."""
    return t.log2_().mul_(exponent).exp2_()


def _piecewise(x: Tensor, knee: float, curve_: Callable[[Tensor], Tensor], curve_at_knee: float,
               slope: float, intercept: float, out: Tensor | None = None,
               scratch: Tensor | None = None) -> Tensor:
    """curve(x) above `knee`, slope * x + intercept below, without masks.

    The result is curve(max(x, knee)) + slope * (min(x, x0) - x0), x0 being where the line
    reaches curve(knee): the second term is 0 above x0 and, below the knee, turns the frozen
    curve(knee) into the line. Both segments are computed once per element, with no mask and
    no second full-size evaluation as torch.where would need. skimage's segments meet at the
    knee only to within 3e-7, so x0 is not quite the knee: between the two (a sliver of width
    below 5e-8) the result is off by at most that 3e-7 gap.

    `curve_` works in place; `out` (may be `x`) and `scratch` are optional preallocated buffers
    shaped like `x`, so that a chain of these does not fault in fresh pages every call.
    """
    x0 = (curve_at_knee - intercept) / slope
    line_below = torch.clamp(x, max=x0, out=scratch).sub_(x0)  # before `out` may overwrite x
    return curve_(torch.clamp(x, min=knee, out=out)).add_(line_below, alpha=slope)


def _srgb_curve_(c: Tensor) -> Tensor:
    return _pow_(c.add_(0.055).mul_(1 / 1.055), 2.4)


def _linear_curve_(v: Tensor) -> Tensor:
    return _pow_(v, 1 / 2.4).mul_(1.055).sub_(0.055)


def _cube_root_(t: Tensor) -> Tensor:
    return _pow_(t, 1 / 3)


def _cube_(f: Tensor) -> Tensor:
    return f.pow_(3)


def _srgb_to_linear(rgb: Tensor) -> Tensor:
    """A new tensor; `rgb` is left as it is."""
    knee_value = ((_SRGB_KNEE + 0.055) / 1.055) ** 2.4
    return _piecewise(rgb, _SRGB_KNEE, _srgb_curve_, knee_value, 1 / 12.92, 0.0)


def _linear_to_srgb_(linear: Tensor, scratch: Tensor | None = None) -> Tensor:
    """In place, ending with skimage's clip to [0, 1]."""
    knee_value = 1.055 * _LINEAR_KNEE ** (1 / 2.4) - 0.055
    srgb = _piecewise(linear, _LINEAR_KNEE, _linear_curve_, knee_value, 12.92, 0.0, linear, scratch)
    return srgb.clamp_(0.0, 1.0)


def _lab_f_(t: Tensor, scratch: Tensor | None = None) -> Tensor:
    """CIE f(t) in place."""
    knee_value = _LAB_KNEE ** (1 / 3)
    return _piecewise(t, _LAB_KNEE, _cube_root_, knee_value, _LAB_SLOPE, _LAB_OFFSET, t, scratch)


def _lab_f_inverse_(f: Tensor, scratch: Tensor | None = None) -> Tensor:
    """Inverse of f in place."""
    knee_value = _LAB_F_KNEE**3
    slope, intercept = 1 / _LAB_SLOPE, -_LAB_OFFSET / _LAB_SLOPE
    return _piecewise(f, _LAB_F_KNEE, _cube_, knee_value, slope, intercept, f, scratch)


def _mix_channels(x: Tensor, matrix: list[list[float]]) -> Tensor:
    """matrix @ x over dim 1 of N x 3 x H x W, as multiply-adds (see the module docstring)."""
    out = torch.empty_like(x)
    c0, c1, c2 = x.unbind(1)
    for row, channel in zip(matrix, out.unbind(1)):
        torch.mul(c0, row[0], out=channel).add_(c1, alpha=row[1]).add_(c2, alpha=row[2])
    return out


def _gamma_table(device: torch.device) -> Tensor:
    """Linear value of each 8-bit sRGB code, computed in float64 like skimage, kept per device."""
    table = _GAMMA_TABLES.get(device)
    if table is None:
        codes = torch.arange(256, dtype=torch.float64) / 255
        table = torch.where(codes > _SRGB_KNEE, ((codes + 0.055) / 1.055) ** 2.4, codes / 12.92)
        table = _GAMMA_TABLES[device] = table.to(device=device, dtype=torch.float32)
    return table


def _as_batch(x: Tensor, what: str) -> tuple[Tensor, bool]:
    if x.dim() not in (3, 4) or x.shape[-3] != 3:
        raise ValueError(f"{what} must be 3 x H x W or N x 3 x H x W, got shape {tuple(x.shape)}")
    return (x.unsqueeze(0), True) if x.dim() == 3 else (x, False)


def rgb_to_lab(rgb: Tensor) -> Tensor:
    """sRGB (float in [0, 1], or uint8 0..255) -> float32 CIELAB (L in [0, 100], a, b).

    Shape N x 3 x H x W or 3 x H x W, any device; equals `skimage.color.rgb2lab` to float32
    precision. The input is not modified.
    """
    batch, unbatch = _as_batch(rgb, "rgb")
    with torch.autocast(device_type=batch.device.type, enabled=False):
        if batch.dtype == torch.uint8:
            codes = batch.reshape(-1).to(torch.int32)
            linear = _gamma_table(batch.device).index_select(0, codes).view(batch.shape)
            del codes  # its memory can take the next buffer
        elif batch.is_floating_point():
            linear = _srgb_to_linear(batch.float())
        else:
            raise TypeError(f"rgb must be uint8 or floating point, got {batch.dtype}")
        # Channels in the order Y, X, Z so that L, a, b can then be written over f(Y), f(X),
        # f(Z) in place: a needs f(X) - f(Y), b needs f(Y) - f(Z), so L (from f(Y)) goes last.
        yxz = _mix_channels(linear, [_WHITE_XYZ_FROM_RGB[i] for i in (1, 0, 2)])
        lab = _lab_f_(yxz, scratch=linear)
        fy, fx, fz = lab.unbind(1)
        fx.sub_(fy).mul_(500.0)
        fz.sub_(fy).mul_(-200.0)
        fy.mul_(116.0).sub_(16.0)
    return lab.squeeze(0) if unbatch else lab


def rgb_to_lightness(rgb: Tensor) -> Tensor:
    """sRGB (float in [0, 1], or uint8) -> CIE L in [0, 100], N x 1 x H x W (or 1 x H x W):
    `rgb_to_lab(rgb)[:, :1]` for a third of the matrix and transfer-function work (only Y is
    needed), what inference computes for a colourising model's input."""
    batch, unbatch = _as_batch(rgb, "rgb")
    with torch.autocast(device_type=batch.device.type, enabled=False):
        if batch.dtype == torch.uint8:
            linear = _gamma_table(batch.device).index_select(0, batch.reshape(-1).to(torch.int32)).view(batch.shape)
        elif batch.is_floating_point():
            linear = _srgb_to_linear(batch.float())
        else:
            raise TypeError(f"rgb must be uint8 or floating point, got {batch.dtype}")
        r, g, b = linear.unbind(1)
        row = _WHITE_XYZ_FROM_RGB[1]
        y = torch.mul(r, row[0]).add_(g, alpha=row[1]).add_(b, alpha=row[2]).unsqueeze(1)
        lightness = _lab_f_(y, scratch=torch.empty_like(y)).mul_(116.0).sub_(16.0)
    return lightness.squeeze(0) if unbatch else lightness


def lab_to_rgb(lab: Tensor) -> Tensor:
    """CIELAB -> float32 sRGB in [0, 1], as `skimage.color.lab2rgb` (out-of-gamut included).

    Shape N x 3 x H x W or 3 x H x W, any device. skimage sets a negative z (very large b) to 0
    and warns; here it is set to 0 silently. The input is not modified.
    """
    batch, unbatch = _as_batch(lab, "lab")
    if not batch.is_floating_point():
        raise TypeError(f"lab must be floating point, got {batch.dtype}")
    with torch.autocast(device_type=batch.device.type, enabled=False):
        batch = batch.float()
        lightness, a, b = batch.unbind(1)
        f = torch.empty_like(batch)
        fx, fy, fz = f.unbind(1)
        torch.add(lightness, 16.0, out=fy).mul_(1 / 116)
        torch.add(fy, a, alpha=1 / 500, out=fx)
        torch.add(fy, b, alpha=-1 / 200, out=fz).clamp_(min=0.0)
        white_xyz = _lab_f_inverse_(f)
        rgb = _linear_to_srgb_(_mix_channels(white_xyz, _RGB_FROM_WHITE_XYZ), scratch=white_xyz)
    return rgb.squeeze(0) if unbatch else rgb


def normalize_l(lightness: Tensor) -> Tensor:
    """L in [0, 100] -> [-1, 1]."""
    return lightness / 50.0 - 1.0


def denormalize_l(l_norm: Tensor) -> Tensor:
    return (l_norm + 1.0) * 50.0


def normalize_ab(ab: Tensor) -> Tensor:
    """a, b -> roughly [-1, 1] (110 bounds the sRGB gamut's a and b)."""
    return ab / 110.0


def denormalize_ab(ab_norm: Tensor) -> Tensor:
    return ab_norm * 110.0


def lab_to_model(lab: Tensor) -> tuple[Tensor, Tensor]:
    """Lab, N x 3 x H x W (or 3 x H x W) -> the model's input L, N x 1 x H x W, and its target
    ab, N x 2 x H x W (or without N)."""
    return normalize_l(lab[..., :1, :, :]), normalize_ab(lab[..., 1:, :, :])


def model_to_rgb(l_norm: Tensor, ab_norm: Tensor) -> Tensor:
    """The model's normalised L and ab -> float32 sRGB in [0, 1]; colours out of gamut (ab of
    any size) end up as skimage.color.lab2rgb puts them."""
    lab = torch.cat([denormalize_l(l_norm.float()), denormalize_ab(ab_norm.float())], dim=-3)
    return lab_to_rgb(lab)


def lab_to_rgb_autograd(lab: Tensor) -> Tensor:
    """`lab_to_rgb` that autograd can differentiate (a loss on a colourised image, e.g. the
    perceptual loss), equal to it to float32 rounding. The fast version works in place and
    through `out=` buffers, which autograd does not follow. Float32, autocast off."""
    with torch.autocast(device_type=lab.device.type, enabled=False):
        lightness, a, b = lab.float().unbind(-3)
        fy = (lightness + 16.0) / 116.0
        f = torch.stack([fy + a / 500.0, fy, (fy - b / 200.0).clamp(min=0.0)], dim=-3)
        white_xyz = torch.where(f > _LAB_F_KNEE, f ** 3, (f - _LAB_OFFSET) / _LAB_SLOPE)
        x, y, z = white_xyz.unbind(-3)
        linear = torch.stack([row[0] * x + row[1] * y + row[2] * z for row in _RGB_FROM_WHITE_XYZ], dim=-3)
        # the power's argument is kept above the knee, so its gradient is finite everywhere
        curve = 1.055 * linear.clamp(min=_LINEAR_KNEE) ** (1 / 2.4) - 0.055
        return torch.where(linear > _LINEAR_KNEE, curve, 12.92 * linear).clamp(0.0, 1.0)
