"""Weights files in the formats of the real ones, with random weights (the real files cannot be
downloaded here), and the set-up that makes the reference packages read them offline.

- `fid_inception_file`: a state dict in the layout of pytorch-fid's
  `pt_inception-2015-12-05-6726825d.pth`. Random convolutions under BatchNorm statistics of
  1.0/0.0 shrink every activation by a constant per layer until nothing is left after ~90 layers,
  so the BatchNorm statistics are measured on real photos (one pass in train mode): each layer
  then sees unit-scale activations, and the pool features differ between images as real ones do.
- `alexnet_file`: torchvision's AlexNet state dict (what `alexnet-owt-7be5be79.pth` holds).
- `torch_hub_with`: a TORCH_HOME whose hub cache holds a file under the name pytorch-fid asks
  for, so pytorch-fid's own loader reads it instead of downloading (it does not check a hash).
"""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import torch
from PIL import Image

FID_FILE_NAME = "pt_inception-2015-12-05-6726825d.pth"


def fid_inception_architecture() -> torch.nn.Module:
    """pytorch-fid's FID Inception (its `fid_inception_v3` without the download), from its classes."""
    from pytorch_fid import inception as pfi

    net = pfi._inception_v3(num_classes=1008, aux_logits=False, weights=None)
    net.Mixed_5b = pfi.FIDInceptionA(192, pool_features=32)
    net.Mixed_5c = pfi.FIDInceptionA(256, pool_features=64)
    net.Mixed_5d = pfi.FIDInceptionA(288, pool_features=64)
    net.Mixed_6b = pfi.FIDInceptionC(768, channels_7x7=128)
    net.Mixed_6c = pfi.FIDInceptionC(768, channels_7x7=160)
    net.Mixed_6d = pfi.FIDInceptionC(768, channels_7x7=160)
    net.Mixed_6e = pfi.FIDInceptionC(768, channels_7x7=192)
    net.Mixed_7b = pfi.FIDInceptionE_1(1280)
    net.Mixed_7c = pfi.FIDInceptionE_2(2048)
    return net


def fid_inception_file(path: Path, seed: int = 0) -> Path:
    from helpers.image_folders import photo

    torch.manual_seed(seed)
    net = fid_inception_architecture()
    for m in net.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.reset_running_stats()
            m.momentum = None  # a cumulative average over the calibration pass
    batch = torch.stack([torch.from_numpy(np.array(Image.fromarray(photo(i)).resize((299, 299)))).permute(2, 0, 1)
                         for i in range(6)]).float() / 127.5 - 1
    net.train()
    with torch.no_grad():
        net(batch)
    torch.save(net.state_dict(), path)
    return path


def alexnet_file(path: Path, seed: int = 0) -> Path:
    import torchvision

    torch.manual_seed(seed)
    torch.save(torchvision.models.alexnet(weights=None).state_dict(), path)
    return path


def torch_hub_with(root: Path, files: dict[str, Path]) -> Path:
    """A TORCH_HOME under `root` whose hub cache holds `files` (cache name -> file)."""
    cache = root / "hub" / "checkpoints"
    cache.mkdir(parents=True, exist_ok=True)
    for name, src in files.items():
        shutil.copyfile(src, cache / name)
    return root
