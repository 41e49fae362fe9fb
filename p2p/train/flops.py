"""Model FLOPs per training image, for MFU and the step benchmark. Counted once on the meta
device (no memory, no compute) with PyTorch's FlopCounterMode; 1 multiply-add = 2 FLOPs.

One step per image = G forward + G backward (2x forward) + three D forwards (fake, real, and the
G update's pass) + D backward with weight and input gradients for the two D-update passes
(2 x 2x) + input gradients only for the G-update pass (1x): 3 G + 8 D. A multi-scale D is
counted whole (every scale). Feature matching adds one D forward (the real pair under the frozen
D, no backward); the VGG19 perceptual loss three VGG forwards (the fake image forward and
its input-gradient backward, and the real image forward).
"""

from __future__ import annotations

import torch

from p2p.models import DiscriminatorArch, GeneratorArch, build_discriminator, build_generator

# Dense bf16/fp16 tensor-core peaks (FLOP/s), by substring of torch.cuda.get_device_name().
PEAK_FLOPS = (
    ("H200", 989e12), ("H100 PCIe", 756e12), ("H100", 989e12), ("A100", 312e12),
    ("L40S", 362e12), ("A10G", 70e12), ("L4", 121e12), ("V100", 125e12),
)


def forward_flops(net: torch.nn.Module, shape: tuple[int, ...]) -> int:
    from torch.utils.flop_counter import FlopCounterMode

    with FlopCounterMode(display=False) as counter:
        net(torch.empty(shape, device="meta"))
    return counter.get_total_flops()


def step_flops_per_image(g: GeneratorArch, d: DiscriminatorArch, image_size: int, loss=None) -> float:
    """FLOPs of one training step per image; `loss` (the config's loss section) adds the terms
    it switches on."""
    with torch.device("meta"):
        G, D = build_generator(g), build_discriminator(d)
    gf = forward_flops(G, (1, g.in_channels, image_size, image_size))
    df = forward_flops(D, (1, d.in_channels, image_size, image_size))
    total = 3 * gf + 8 * df
    if loss is not None and loss.lambda_feat > 0:
        total += df
    if loss is not None and loss.lambda_vgg > 0:
        from p2p.perceptual import vgg19_features

        with torch.device("meta"):
            vgg = vgg19_features()
        total += 3 * forward_flops(vgg, (1, 3, image_size, image_size))
    return float(total)


def peak_flops(device: torch.device) -> float | None:
    """The GPU's dense bf16 peak, or None (CPU, unknown GPU): MFU is then left out."""
    if device.type != "cuda":
        return None
    name = torch.cuda.get_device_name(device)
    return next((peak for key, peak in PEAK_FLOPS if key in name), None)
