"""Model FLOPs per training image, for MFU and the step benchmark. Counted once on the meta
device (no memory, no compute) with PyTorch's FlopCounterMode; 1 multiply-add = 2 FLOPs.

One step per image = G forward + G backward (2x forward) + three D forwards (fake, real, and the
G update's pass) + D backward with weight and input gradients for the two D-update passes
(2 x 2x) + input gradients only for the G-update pass (1x): 3 G + 8 D. A multi-scale D is
counted whole (every scale). A loss term adds what its spec's `flops` says (p2p.specs.losses):
feature matching one D forward (the real pair under the frozen D, no backward), the VGG19
perceptual loss three VGG forwards (the fake image forward and its input-gradient backward, and
the real image forward); elementwise terms (L1, Charbonnier) and the gradient penalty are not
counted.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import torch

from p2p.models import DiscriminatorArch, GeneratorArch, build_discriminator, build_generator
from p2p.specs import load
from p2p.specs.losses import LOSSES

# Dense (no sparsity) peaks in FLOP/s from NVIDIA's datasheets, per (model, form factor):
# (bf16/fp16 tensor cores, TF32 tensor cores, plain fp32). Keyed by the exact model, so an
# "L40" is never rated as an "L4" nor an "H100 NVL" as an SXM H100; a GPU not listed (or a MIG
# slice, which has a fraction of the chip) gets no MFU rather than a wrong one.
PEAKS = {
    ("H100", ""): (989.4e12, 494.7e12, 66.9e12),  # SXM5 ("NVIDIA H100 80GB HBM3")
    ("H100", "PCIe"): (756.5e12, 378.0e12, 51.2e12),
    ("H100", "NVL"): (835.5e12, 417.5e12, 60.0e12),
    ("H200", ""): (989.4e12, 494.7e12, 66.9e12),  # SXM
    ("H200", "NVL"): (835.5e12, 417.5e12, 60.0e12),
    ("GH200", ""): (989.4e12, 494.7e12, 66.9e12),
    ("A100", ""): (312e12, 156e12, 19.5e12),  # SXM4, 40 and 80 GB
    ("A100", "PCIe"): (312e12, 156e12, 19.5e12),
    ("L40S", ""): (362.05e12, 183.0e12, 91.6e12),
    ("L40", ""): (181.05e12, 90.5e12, 90.5e12),
    ("L4", ""): (121.0e12, 60.0e12, 30.3e12),
}
# Name tokens that say nothing about the peak: memory size and type, the SXM socket.
_NEUTRAL = re.compile(r"\d+GB?|HBM\d[eE]?|SXM\d?")


def forward_flops(net: torch.nn.Module, shape: tuple[int, ...]) -> int:
    from torch.utils.flop_counter import FlopCounterMode

    with FlopCounterMode(display=False) as counter:
        net(torch.empty(shape, device="meta"))
    return counter.get_total_flops()


@dataclass(frozen=True)
class FlopCounts:
    """What a loss term's `flops` function prices its extra work in: one image's forwards."""

    image_size: int
    g_forward: int
    d_forward: int

    @staticmethod
    def forward_flops(net: torch.nn.Module, shape: tuple[int, ...]) -> int:
        return forward_flops(net, shape)


def step_flops_per_image(g: GeneratorArch, d: DiscriminatorArch, image_size: int, loss=None) -> float:
    """FLOPs of one training step per image; `loss` (the config's loss section) adds the terms
    it switches on."""
    with torch.device("meta"):
        G, D = build_generator(g), build_discriminator(d)
    gf = forward_flops(G, (1, g.in_channels, image_size, image_size))
    df = forward_flops(D, (1, d.in_channels, image_size, image_size))
    total = 3 * gf + 8 * df
    counts = FlopCounts(image_size, gf, df)
    for spec in LOSSES:
        if loss is not None and spec.flops and spec.on(loss):
            total += load(spec.flops)(counts)
    return float(total)


def gpu_model(name: str) -> tuple[str, str] | None:
    """(model, form factor) of a CUDA device name such as "NVIDIA H100 80GB HBM3" -> ("H100", ""),
    "NVIDIA H100 NVL" -> ("H100", "NVL"), "NVIDIA A100-PCIE-40GB" -> ("A100", "PCIe"); None when
    the name has any other token (a MIG slice, a variant this table does not know)."""
    tokens = [t for t in re.split(r"[\s-]+", name.strip()) if t and t not in ("NVIDIA", "Tesla")]
    if not tokens:
        return None
    model, form = tokens[0], ""
    for t in tokens[1:]:
        if t.upper() == "PCIE" and not form:
            form = "PCIe"
        elif t == "NVL" and not form:
            form = "NVL"
        elif not _NEUTRAL.fullmatch(t):
            return None
    return model, form


def peak_for(name: str, precision: str, tf32: bool) -> float | None:
    """The dense peak of GPU `name` for what ran: bf16/fp16 autocast -> the 16-bit tensor-core
    peak; fp32 -> the TF32 tensor-core peak when cuDNN may use TF32 (the convolutions are nearly
    all the FLOPs), else plain fp32. None for a GPU not in PEAKS."""
    peaks = PEAKS.get(gpu_model(name) or ("", ""))
    if peaks is None:
        return None
    return peaks[0] if precision in ("bf16", "fp16") else peaks[1] if tf32 else peaks[2]


def peak_flops(device: torch.device, precision: str = "bf16") -> float | None:
    """The peak that MFU is measured against on `device` for `precision` (see peak_for), or None
    (CPU, a GPU not in the table): MFU is then left out."""
    if device.type != "cuda":
        return None
    return peak_for(torch.cuda.get_device_name(device), precision, torch.backends.cudnn.allow_tf32)
