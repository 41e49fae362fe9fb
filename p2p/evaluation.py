"""Scoring a generator on held-out images: what `p2p predict` would return for each whole image
(p2p.inference), against the image it should return. Validation during training and `p2p eval`
both score through `evaluate`.

The result has exactly the keys of `RESULT_KEYS`, means over the images:
- psnr, ssim, l1: per image, then averaged (p2p.metrics; match scikit-image);
- colorfulness: Hasler & Suesstrunk's M of the outputs; delta_colorfulness: DDColor's ΔCF,
  |mean CF(outputs) - mean CF(targets)| over the set;
- fid, kid: the outputs against the targets (or cached target statistics) with the FID
  Inception (p2p.fid); lpips: per image, averaged (p2p.lpips_metric);
- count: images scored.
A metric that was not computed is None (JSON null): fid/kid without FID weights, kid when the
cached reference has no features, fid/kid with fewer than 2 images, lpips without LPIPS weights,
everything but count when no image was scored.

Images of the same size go through the generator in batches (eval mode: batch-independent).
Distributed, each rank scores its share (`p2p.data.held_out`): the sums are all-reduced and the
FID features all-gathered and put in image order, so FID/KID are one process's up to the float
rounding of features computed in other batches (the tests hold them within 1e-5 / 1e-4).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Callable, Iterable

import numpy as np
import torch

from p2p.augment import step_generator
from p2p.errors import UsageError
from p2p.inference import Geometry, predict
from p2p.metrics import image_metrics

RESULT_KEYS = ("psnr", "ssim", "l1", "colorfulness", "delta_colorfulness", "fid", "kid", "lpips", "count")
_SUMS = ("psnr", "ssim", "l1", "colorfulness", "colorfulness_target", "lpips")
HIGHER_IS_BETTER = ("psnr", "ssim")  # every other metric with a better side: lower (train.best_metric)
FID_WEIGHTS_ENV = "P2P_FID_WEIGHTS"
LPIPS_WEIGHTS_ENV = "P2P_LPIPS_WEIGHTS"


@dataclass
class Scorer:
    """The optional feature networks, the cached reference statistics of the targets (filled by
    the first `evaluate` that needs them) and how to batch."""

    fid: torch.nn.Module | None = None
    lpips: torch.nn.Module | None = None
    reference: object | None = None  # p2p.fid.FidReference
    kid_subsets: int = 100
    kid_subset_size: int = 1000
    batch_size: int = 16

    def to(self, device: torch.device) -> "Scorer":
        for net in (self.fid, self.lpips):
            if net is not None:
                net.to(device)
        return self


def weights_path(given: str | None, configured: str, env: str) -> str:
    """A flag, else the config key, else the environment variable; '' = not configured."""
    return given or configured or os.environ.get(env, "")


def build_scorer(eval_cfg, fid_weights: str | None = None, lpips_weights: str | None = None,
                 batch_size: int | None = None) -> Scorer:
    """From the `eval` config section; explicit arguments win over it, and it over the environment."""
    fid_path = weights_path(fid_weights, eval_cfg.fid_weights, FID_WEIGHTS_ENV)
    lpips_path = weights_path(lpips_weights, eval_cfg.lpips_weights, LPIPS_WEIGHTS_ENV)
    fid = lp = None
    if fid_path:
        from p2p.fid import FidInception

        fid = FidInception(fid_path)
    if lpips_path:
        from p2p.lpips_metric import Lpips

        lp = Lpips(lpips_path)
    return Scorer(fid, lp, None, eval_cfg.kid_subsets, eval_cfg.kid_subset_size, batch_size or eval_cfg.batch_size)


def same_size_batches(images: Iterable, batch_size: int) -> list[list]:
    """Consecutive groups of at most `batch_size` images of one size, in order of first appearance."""
    groups: dict[tuple, list] = {}
    for item in images:
        groups.setdefault(tuple(item.image.shape), []).append(item)
    return [g[i:i + batch_size] for g in groups.values() for i in range(0, len(g), batch_size)]


@dataclass
class Partial:
    """One rank's (or, after `gather`, every rank's) part: sums in `_SUMS` order plus the count,
    and FID feature rows [image index, 2048 features] of outputs and targets."""

    sums: torch.Tensor
    out_features: torch.Tensor | None = None
    target_features: torch.Tensor | None = None


@torch.no_grad()
def score_images(G, task, images: Iterable, geometry: Geometry, seed: int, device: torch.device, scorer: Scorer,
                 precision=None, progress: Callable[[int], None] | None = None) -> Partial:
    """This process's sums and features. `images` are `HeldOut`s; `G` must be in eval mode."""
    sums = torch.zeros(len(_SUMS) + 1, dtype=torch.float64, device=device)
    with_fid = scorer.fid is not None
    with_targets = with_fid and scorer.reference is None
    empty = torch.zeros(0, 1 + 2048, dtype=torch.float64, device=device)
    out_rows, target_rows = [empty], [empty]
    for group in same_size_batches(images, scorer.batch_size):
        # restore's degradations: fixed per image, whichever rank scores it, in whatever batch
        pairs = [task.eval_pair(item.image[None].to(device), step_generator(seed, 0, item.index, stream=99))
                 for item in group]
        inp, target = torch.cat([p[0] for p in pairs]), torch.cat([p[1] for p in pairs])
        out = predict(G, task, inp, geometry, precision)
        m = image_metrics(out, target, colour=True)
        m["lpips"] = scorer.lpips(out, target) if scorer.lpips is not None else torch.zeros_like(m["psnr"])
        sums += torch.stack([m[k].sum() for k in _SUMS] + [torch.tensor(float(len(group)), device=device,
                                                                         dtype=torch.float64)])
        index = torch.tensor([[float(item.index)] for item in group], dtype=torch.float64, device=device)
        if with_fid:
            out_rows.append(torch.cat([index, scorer.fid(list(out.split(1))).double()], 1))
        if with_targets:
            target_rows.append(torch.cat([index, scorer.fid(list(target.split(1))).double()], 1))
        if progress is not None:
            progress(len(group))
    return Partial(sums, torch.cat(out_rows) if with_fid else None, torch.cat(target_rows) if with_targets else None)


def _gather_rows(rows: torch.Tensor, world: int) -> torch.Tensor:
    """Every rank's rows (ranks hold different counts), sorted by the index in column 0."""
    if world > 1:
        dist = torch.distributed
        count = torch.tensor([rows.shape[0]], device=rows.device)
        counts = [torch.zeros_like(count) for _ in range(world)]
        dist.all_gather(counts, count)
        most = int(max(c.item() for c in counts))  # note: host sync, once per evaluation
        padded = torch.zeros(most, rows.shape[1], dtype=rows.dtype, device=rows.device)
        padded[:rows.shape[0]] = rows
        parts = [torch.zeros_like(padded) for _ in range(world)]
        dist.all_gather(parts, padded)
        rows = torch.cat([p[:int(c.item())] for p, c in zip(parts, counts)])
    return rows[torch.argsort(rows[:, 0])]


def gather(part: Partial, world: int) -> Partial:
    """Collective when world > 1: every rank must call it, with the same scorer settings."""
    sums = part.sums.clone()
    if world > 1:
        torch.distributed.all_reduce(sums)
    return Partial(sums, *(None if rows is None else _gather_rows(rows, world)
                           for rows in (part.out_features, part.target_features)))


def results(part: Partial, scorer: Scorer) -> dict:
    """The reported numbers (`RESULT_KEYS`) of a gathered part; fills `scorer.reference` from the
    target features when it had none."""
    values = part.sums.tolist()  # note: host sync
    count = int(values[-1])
    out = dict.fromkeys(RESULT_KEYS)
    out["count"] = count
    if count == 0:
        return out
    mean = {k: v / count for k, v in zip(_SUMS, values)}
    out.update({k: mean[k] for k in ("psnr", "ssim", "l1", "colorfulness")})
    out["delta_colorfulness"] = abs(mean["colorfulness"] - mean["colorfulness_target"])
    if scorer.lpips is not None:
        out["lpips"] = mean["lpips"]
    if scorer.fid is not None:
        from p2p.fid import FidReference, frechet_distance, kernel_inception_distance

        if scorer.reference is None:
            scorer.reference = FidReference.of(part.target_features[:, 1:].cpu().numpy())
        features = part.out_features[:, 1:].cpu().numpy()
        out["fid"] = frechet_distance(features, scorer.reference, part.sums.device)
        if scorer.reference.features is not None:
            out["kid"] = kernel_inception_distance(features, scorer.reference.features.astype(np.float64),
                                                   scorer.kid_subsets, scorer.kid_subset_size)
    return out


def evaluate(G, task, images: Iterable, geometry: Geometry, seed: int, device: torch.device, scorer: Scorer,
             precision=None, world: int = 1, progress: Callable[[int], None] | None = None) -> dict:
    """Score this rank's `images` and combine with the other ranks' (collective when world > 1)."""
    part = score_images(G, task, images, geometry, seed, device, scorer, precision, progress)
    return results(gather(part, world), scorer)


def load_reference(path: str) -> object | None:
    """The cached reference statistics at `path` (None when the file does not exist yet)."""
    if not path:
        return None
    if not path.endswith(".npz"):
        raise UsageError(f"--fid-ref {path}: expected a .npz file (pytorch-fid's mu/sigma layout)")
    if not os.path.exists(path):
        return None
    from p2p.fid import FidReference

    return FidReference.load(path)
