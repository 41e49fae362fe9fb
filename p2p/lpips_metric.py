"""LPIPS (Zhang et al. 2018) through the `lpips` package: its network and the calibrated linear
layers it ships (v0.1), with the backbone's ImageNet weights from a local file instead of
torchvision's download.

The backbone file is torchvision's state dict of the classifier the linear layers were fitted
on: `alexnet-owt-7be5be79.pth` (the default LPIPS), `vgg16-397923af.pth` or
`squeezenet1_1-b8a52dc0.pth`; which one it is comes from its tensors. `lpips` keeps the
classifier's `features.<i>` layers, split into slices under their own indices, so each
`net.slice<k>.<i>.*` tensor is the file's `features.<i>.*`.

Images are compared as `p2p predict` writes them (8-bit), in float32 with TF32 off.
"""

from __future__ import annotations

import warnings

import torch
from torch import nn

from p2p.errors import UsageError
from p2p.fid import read_state_dict, full_precision, quantize

BACKBONE_FILES = "torchvision's alexnet-owt-7be5be79.pth, vgg16-397923af.pth or squeezenet1_1-b8a52dc0.pth"


def backbone_kind(state: dict) -> str:
    """alex | vgg | squeeze, from a torchvision classifier's state dict."""
    if "features.3.squeeze.weight" in state:
        return "squeeze"
    first = state.get("features.0.weight")
    if first is None:
        raise KeyError("features.0.weight")
    return "alex" if first.shape[-1] == 11 else "vgg"


class Lpips(nn.Module):
    """Per-image LPIPS distance (N values) of RGB batches in [0, 1]."""

    def __init__(self, backbone_path: str):
        super().__init__()
        import lpips

        self.weights_path = str(backbone_path)
        state = read_state_dict(backbone_path, "LPIPS backbone", BACKBONE_FILES)
        state = {k[len("module."):] if k.startswith("module.") else k: v for k, v in state.items()}
        try:
            kind = backbone_kind(state)
        except KeyError:
            raise UsageError(f"LPIPS backbone {backbone_path}: no features.0.weight; expected {BACKBONE_FILES}") from None
        # pnet_rand: torchvision builds the backbone without fetching weights; the linear layers
        # come from the package's own files.
        with warnings.catch_warnings():  # lpips passes torchvision's deprecated `pretrained=False`
            warnings.simplefilter("ignore", UserWarning)
            self.net = lpips.LPIPS(net=kind, pnet_rand=True, verbose=False)
        backbone = {}
        for key in self.net.net.state_dict():
            source = "features." + key.split(".", 1)[1]  # slice<k>.<i>.weight -> features.<i>.weight
            if source not in state or state[source].shape != self.net.net.state_dict()[key].shape:
                raise UsageError(f"LPIPS backbone {backbone_path}: {source} missing or of another shape for "
                                 f"the {kind} backbone; expected {BACKBONE_FILES}")
            backbone[key] = state[source]
        self.net.net.load_state_dict(backbone)
        self.kind = kind
        self.eval()

    @torch.no_grad()
    def forward(self, out_rgb: torch.Tensor, target_rgb: torch.Tensor) -> torch.Tensor:
        with full_precision():
            d = self.net(quantize(out_rgb), quantize(target_rgb), normalize=True)
        return d.flatten(1).mean(1).double()
