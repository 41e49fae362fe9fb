"""The VGG19 perceptual loss of pix2pixHD (Wang et al. 2018; Johnson et al. 2016): L1 distances
between VGG19 activations of the generated and the real image at relu1_1, relu2_1, relu3_1,
relu4_1 and relu5_1, weighted 1/32, 1/16, 1/8, 1/4 and 1 (deep layers carry the semantics).

The network's weights come from a local file in torchvision's `vgg19` state-dict format
(`features.<i>.weight|bias`; the classifier, if present, is ignored): compute nodes have no
internet, so nothing is downloaded. Make the file once where there is internet:

    torch.save(torchvision.models.vgg19(weights="IMAGENET1K_V1").state_dict(), "vgg19.pth")

Images are compared as RGB in [0, 1] normalised with the ImageNet mean and std, the input those
weights were trained on (pix2pixHD feeds its [-1, 1] tensors unnormalised). The network is
frozen and in eval mode; the real image's features are constants. Everything is tensor work
on the device: no host syncs, so the loss lives inside the (CUDA-graph-capturable) step.
"""

from __future__ import annotations

import os

import torch
from torch import nn
from torch.nn import functional as F

from p2p.errors import UsageError

# torchvision's configuration "E" (VGG19) up to relu5_1: channels, "M" = 2x2 max pool.
_VGG19_UP_TO_RELU5_1 = (64, 64, "M", 128, 128, "M", 256, 256, 256, 256, "M", 512, 512, 512, 512, "M", 512)
# Indices in torchvision's vgg19().features right after relu1_1, relu2_1, relu3_1, relu4_1, relu5_1.
SLICE_ENDS = (2, 7, 12, 21, 30)
LAYER_WEIGHTS = (1 / 32, 1 / 16, 1 / 8, 1 / 4, 1.0)
IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


def vgg19_features() -> nn.Sequential:
    """VGG19's convolutional layers up to relu5_1, indexed as torchvision's `features`."""
    layers: list[nn.Module] = []
    ch = 3
    for v in _VGG19_UP_TO_RELU5_1:
        if v == "M":
            layers.append(nn.MaxPool2d(2, 2))
        else:
            layers += [nn.Conv2d(ch, v, 3, padding=1), nn.ReLU(inplace=False)]
            ch = v
    return nn.Sequential(*layers)


def _load(path: str):
    # mmap: only the feature tensors are read, not the 400 MB classifier
    try:
        return torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except RuntimeError as e:
        if "mmap" not in str(e):
            raise
        # the pre-1.6 format cannot be mapped; torchvision's own download (vgg19-dcbb9e9d.pth) is one
        return torch.load(path, map_location="cpu", weights_only=True)


def read_vgg19_weights(path: str) -> dict[str, torch.Tensor]:
    """The `features.*` tensors p2p needs from a torchvision vgg19 state-dict file, checked
    against the network; a missing or different file is one UsageError line."""
    key = "loss.vgg_weights"
    if not os.path.isfile(path):
        raise UsageError(f"{key}={path!r}: no such file (save torchvision's vgg19 state dict there; see "
                         f"p2p config --keys)")
    try:
        state = _load(path)
    except Exception as e:  # noqa: BLE001 - any unreadable file is the same user error
        raise UsageError(f"{key}={path!r}: not a state dict torch.load can read ({type(e).__name__})") from None
    if not isinstance(state, dict):
        raise UsageError(f"{key}={path!r}: holds a {type(state).__name__}, not a state dict")
    state = {k[len("module."):] if k.startswith("module.") else k: v for k, v in state.items()}
    if "features.1.running_mean" in state:
        raise UsageError(f"{key}={path!r}: a VGG with batch norm (vgg19_bn?); the perceptual loss uses plain vgg19")
    expected = vgg19_features().state_dict()
    out = {}
    for name, want in expected.items():
        got = state.get(f"features.{name}")
        if not isinstance(got, torch.Tensor):
            found = ", ".join(list(state)[:3])
            raise UsageError(f"{key}={path!r}: not torchvision's vgg19 state dict: no features.{name} "
                             f"(found {len(state)} entries, e.g. {found})")
        if got.shape != want.shape:
            raise UsageError(f"{key}={path!r}: not torchvision's vgg19 state dict: features.{name} has shape "
                             f"{tuple(got.shape)}, vgg19's is {tuple(want.shape)} (vgg16 or vgg19_bn?)")
        out[name] = got.float()
    return out


class PerceptualLoss(nn.Module):
    """`forward(inp, fake, target)`: the weighted feature L1 of the task's RGB images, where
    `to_rgb(inp, out)` turns the generator's input and output into RGB in [0, 1] with autograd
    (`Task.output_rgb_autograd`)."""

    def __init__(self, weights: dict[str, torch.Tensor], to_rgb, weight: float = 1.0):
        super().__init__()
        features = vgg19_features()
        features.load_state_dict(weights)
        starts = (0,) + SLICE_ENDS[:-1]
        self.slices = nn.ModuleList(features[a:b] for a, b in zip(starts, SLICE_ENDS))
        self.requires_grad_(False).eval()
        self.register_buffer("mean", torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(IMAGENET_STD).view(1, 3, 1, 1), persistent=False)
        self.to_rgb, self.weight = to_rgb, weight

    def train(self, mode: bool = True):
        return super().train(False)  # always the frozen, eval-mode network

    def features(self, rgb01: torch.Tensor) -> list[torch.Tensor]:
        x = (rgb01 - self.mean) / self.std
        out = []
        for s in self.slices:
            x = s(x)
            out.append(x)
        return out

    def forward(self, inp: torch.Tensor, fake: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        fake_f = self.features(self.to_rgb(inp, fake))
        with torch.no_grad():
            real_f = self.features(self.to_rgb(inp, target))
        total = torch.zeros((), device=fake.device)
        for w, f, r in zip(LAYER_WEIGHTS, fake_f, real_f):
            total = total + w * F.l1_loss(f.float(), r.float())
        return total * self.weight


def build_perceptual_loss(path: str, to_rgb, weight: float, device: torch.device) -> PerceptualLoss:
    return PerceptualLoss(read_vgg19_weights(path), to_rgb, weight).to(device)
