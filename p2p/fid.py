"""FID and KID of a set of images against a reference set, with the standard FID Inception-v3.

The network is pytorch-fid's `InceptionV3` (the TensorFlow FID graph ported to PyTorch; 2048-d
pool features) with its weights read from a local file: the one pytorch-fid downloads,
`pt_inception-2015-12-05-6726825d.pth`. Nothing is fetched at run time: pytorch-fid builds the
network and then asks `load_state_dict_from_url` for the weights, and that one call is answered
with the local file instead.

Images go in as what `p2p predict` writes: RGB rounded to 8 bits (torchvision's `save_image`
rounding), each resized on its own to 299x299 bilinearly exactly as pytorch-fid does inside the
network, so `python -m pytorch_fid OUTPUTS TARGETS` on the PNGs gives the same FID. The network
runs in float32 with TF32 off: FID is a difference of large traces and moves with reduced
precision.

Statistics follow pytorch-fid (mean and `np.cov` in float64); the Fréchet distance is its formula
with the trace of the matrix square root from eigenvalues (see `_trace_sqrt_product`).
KID is the unbiased polynomial-kernel MMD (torchmetrics' `poly_mmd`, degree 3, gamma 1/d, coef 1)
averaged over `subsets` random subsets of `subset_size` rows per set (fewer rows: the whole set).
torchmetrics' KID draws the subsets from the global RNG in arrival order; here the rows are
sorted by image index and the draw is seeded, so any number of processes gives the same KID.
"""

from __future__ import annotations

import os
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from unittest import mock

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from p2p.errors import UsageError

FID_WEIGHTS_NAME = "pt_inception-2015-12-05-6726825d.pth"
FID_SIZE = 299
FID_DIMS = 2048


def quantize(rgb01: torch.Tensor) -> torch.Tensor:
    """RGB in [0, 1] rounded to the 8-bit values a PNG of it holds (as torchvision's save_image)."""
    return torch.floor(rgb01.float() * 255 + 0.5).clamp_(0, 255) / 255


def read_state_dict(path: str, what: str, expected: str) -> dict:
    if not os.path.isfile(path):
        raise UsageError(f"{what} {path}: no such file (expected {expected})")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # a truncated or foreign file: one line, not a pickle traceback
        raise UsageError(f"{what} {path}: not a readable PyTorch weights file ({type(e).__name__}: "
                         f"{str(e).splitlines()[0] if str(e) else ''})") from None
    if not isinstance(state, dict):
        raise UsageError(f"{what} {path}: expected a state dict ({expected}), got {type(state).__name__}")
    return state


class FidInception(nn.Module):
    """Pool features (N x 2048, float32) of RGB images in [0, 1] of any (equal) size."""

    def __init__(self, weights_path: str):
        super().__init__()
        from pytorch_fid import inception

        self.weights_path = str(weights_path)
        state = read_state_dict(weights_path, "FID weights", FID_WEIGHTS_NAME)
        # pytorch-fid fetches its weights by URL in `fid_inception_v3`; hand it the local file.
        with mock.patch.object(inception, "load_state_dict_from_url", lambda *a, **k: state):
            try:
                self.net = inception.InceptionV3([inception.InceptionV3.BLOCK_INDEX_BY_DIM[FID_DIMS]],
                                                 resize_input=True, normalize_input=True)
            except RuntimeError as e:
                first = str(e).splitlines()[0]
                raise UsageError(f"FID weights {weights_path}: not the FID Inception-v3 weights "
                                 f"({FID_WEIGHTS_NAME}): {first}") from None
        self.eval()

    @torch.no_grad()
    def forward(self, images: list[torch.Tensor]) -> torch.Tensor:
        """`images`: 1 x 3 x H x W tensors of any sizes, each quantized and resized to 299x299 on
        its own, then run as one batch."""
        batch = torch.cat([F.interpolate(quantize(x), size=(FID_SIZE, FID_SIZE), mode="bilinear",
                                         align_corners=False) for x in images])
        with full_precision():
            return self.net(batch)[0].flatten(1).float()


@contextmanager
def full_precision():
    """float32 convolutions and matmuls (no TF32) on CUDA, whatever the process chose."""
    if not torch.cuda.is_available():
        yield
        return
    matmul = torch.backends.cuda.matmul.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = False
    try:
        with torch.backends.cudnn.flags(enabled=True, benchmark=torch.backends.cudnn.benchmark,
                                        deterministic=torch.backends.cudnn.deterministic, allow_tf32=False):
            yield
    finally:
        torch.backends.cuda.matmul.allow_tf32 = matmul


@dataclass
class FidReference:
    """Statistics of the reference (target) set: pytorch-fid's `mu` and `sigma`, and the features
    themselves when KID is wanted (an `.npz` from pytorch-fid has none: KID is then unknown)."""

    mu: np.ndarray
    sigma: np.ndarray
    features: np.ndarray | None = None

    @classmethod
    def of(cls, features: np.ndarray) -> "FidReference":
        return cls(*statistics(features), features.astype(np.float32))

    def save(self, path: str | os.PathLike) -> None:
        """pytorch-fid's `.npz` layout (`mu`, `sigma`), plus `features` for KID; written atomically."""
        from p2p.atomic import replace_with

        arrays = {"mu": self.mu, "sigma": self.sigma}
        if self.features is not None:
            arrays["features"] = self.features
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        replace_with(path, lambda f: np.savez(f, **arrays))

    @classmethod
    def load(cls, path: str | os.PathLike) -> "FidReference":
        try:
            with np.load(path) as f:
                mu, sigma = f["mu"].astype(np.float64), f["sigma"].astype(np.float64)
                features = f["features"] if "features" in f.files else None
        except (OSError, ValueError, KeyError) as e:
            raise UsageError(f"--fid-ref {path}: not a FID statistics file with mu and sigma ({e})") from None
        if mu.shape != (FID_DIMS,) or sigma.shape != (FID_DIMS, FID_DIMS):
            raise UsageError(f"--fid-ref {path}: mu {mu.shape} / sigma {sigma.shape} are not {FID_DIMS}-d pool "
                             f"features of the FID Inception")
        return cls(mu, sigma, features)


def statistics(features: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """pytorch-fid's: mean and sample covariance (rows are images), float64."""
    act = features.astype(np.float64)
    return np.mean(act, axis=0), np.cov(act, rowvar=False)


def _trace_sqrt_product(sigma1: torch.Tensor, sigma2: torch.Tensor) -> torch.Tensor:
    """tr(sqrt(S1 S2)) of two covariance matrices. S1 S2 is similar to the symmetric PSD matrix
    sqrt(S1) S2 sqrt(S1), so the trace is the sum of the square roots of its eigenvalues: two
    symmetric eigendecompositions (float64, on any device) instead of pytorch-fid's general
    `scipy.linalg.sqrtm`, which takes tens of seconds per FID at 2048 dimensions on a CPU core
    and would dominate every validation. Eigenvalues a rank-deficient covariance (fewer images
    than dimensions) leaves at -1e-13 are clamped to 0."""
    w, v = torch.linalg.eigh(sigma1)
    root = (v * w.clamp(min=0).sqrt()) @ v.T
    return torch.linalg.eigvalsh(root @ sigma2 @ root).clamp(min=0).sqrt().sum()


def frechet_distance(features: np.ndarray, reference: FidReference, device: torch.device | None = None) -> float | None:
    """FID of `features` (N x 2048) against the reference (pytorch-fid's formula and statistics);
    None with fewer than 2 images."""
    if len(features) < 2:
        return None
    mu, sigma = statistics(features)
    t = lambda a: torch.from_numpy(np.ascontiguousarray(a)).to(device or "cpu", torch.float64)  # noqa: E731
    s1, s2 = t(sigma), t(reference.sigma)
    diff = t(mu) - t(reference.mu)
    value = diff @ diff + torch.trace(s1) + torch.trace(s2) - 2 * _trace_sqrt_product(s1, s2)
    return float(value)  # note: host sync


def kernel_inception_distance(features: np.ndarray, reference: np.ndarray, subsets: int = 100,
                              subset_size: int = 1000, seed: int = 0) -> float | None:
    """Mean unbiased MMD^2 over seeded random subsets (rows in a fixed order: see the module doc)."""
    from torchmetrics.image.kid import poly_mmd

    size = min(subset_size, len(features), len(reference))
    if size < 2:
        return None
    a, b = torch.from_numpy(features).double(), torch.from_numpy(reference).double()
    gen = torch.Generator().manual_seed(seed)
    values = []
    for _ in range(subsets):
        ia = torch.randperm(len(a), generator=gen)[:size]
        ib = torch.randperm(len(b), generator=gen)[:size]
        values.append(poly_mmd(b[ib], a[ia]))
    return float(torch.stack(values).mean())
