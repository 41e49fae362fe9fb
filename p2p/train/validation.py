"""What the trainer shows of held-out images: validation metrics and sample grids, both of the
whole held-out images through the geometry of `p2p predict` (p2p.inference.training_geometry),
so a validation score is the score a user gets from `p2p predict`. Every rank scores its share
(the sums are all-reduced) with BatchNorm statistics averaged over ranks; rank 0 draws the
grids. Both run in eval mode, on the generator's moving average when the run keeps one
(train.ema_decay > 0: what best.pt is then chosen by and what `p2p predict` uses)."""

from __future__ import annotations

import warnings

import torch
from torch.nn import functional as F

from p2p.augment import step_generator
from p2p.data.held_out import HeldOut, held_out
from p2p.evaluation import Scorer, build_scorer, evaluate, load_reference
from p2p.inference import predict, scaled_size, training_geometry
from p2p.train.wrap import averaged_buffers, unwrap

GRID_IMAGES = 8


def held_out_images(cfg, rank: int, world: int, backend=None) -> list[HeldOut]:
    """This rank's share of the fixed held-out images, loaded once (kept on the CPU); an
    unreadable one is skipped with a warning, as the training split skips it (its `skipped`).
    `backend`: the resolved data.backend (p2p.data.Backend)."""
    images = held_out(cfg, rank, world, backend=backend)
    for key, reason in images.skipped:
        warnings.warn(f"validation: skipping held-out sample {key}: {reason}", stacklevel=2)
    return images


def shown_generator(run):
    """The generator that held-out images are scored and drawn with: the EMA when there is one."""
    return run.nets.ema.module if run.nets.ema is not None else run.nets.G


class _EvalMode:
    def __init__(self, net):
        self.net = unwrap(net)

    def __enter__(self):
        self.was_training = self.net.training
        self.net.eval()
        return self.net

    def __exit__(self, *exc):
        self.net.train(self.was_training)


def validation_scorer(cfg, device) -> Scorer:
    """FID/KID and LPIPS when `eval.*` (or the environment) names their weights; the targets' FID
    statistics from `eval.fid_ref` when that file exists (else from the first validation)."""
    scorer = build_scorer(cfg.eval).to(device)
    if scorer.fid is not None:
        scorer.reference = load_reference(cfg.eval.fid_ref)
    return scorer


def validate(run, images: list[HeldOut], scorer: Scorer) -> dict:
    """The metrics of `p2p.evaluation` over every rank's held-out images, the ones not computed
    left out (collective: every rank calls it)."""
    cfg, accel = run.cfg, run.accel
    geometry = training_geometry(run.task, cfg.data.load_size)
    first = scorer.fid is not None and scorer.reference is None
    G = shown_generator(run)
    with averaged_buffers(accel, G), _EvalMode(G) as net:
        metrics = evaluate(net, run.task, images, geometry, cfg.run.seed, accel.device, scorer, run.precision,
                           accel.num_processes)
    if first and cfg.eval.fid_ref and accel.is_main_process:
        scorer.reference.save(cfg.eval.fid_ref)
    return {k: v for k, v in metrics.items() if v is not None}


def _letterbox(x: torch.Tensor, h: int, w: int) -> torch.Tensor:
    """1 x 3 x h' x w' -> 1 x 3 x h x w, centred on white."""
    dh, dw = h - x.shape[-2], w - x.shape[-1]
    return F.pad(x, (dw // 2, dw - dw // 2, dh // 2, dh - dh // 2), value=1.0)


@torch.no_grad()
def sample_grid(run, images: list[HeldOut], log, step: int) -> None:
    """input | output | target of up to 8 held-out images, each as `p2p predict` computes it and
    shown at the scale the model saw it (short side data.load_size); rank 0's own statistics."""
    if not images or not log.enabled:
        return
    cfg, task, device = run.cfg, run.task, run.device
    geometry = training_geometry(task, cfg.data.load_size)
    rows = []
    with _EvalMode(shown_generator(run)) as net:
        for item in images[:GRID_IMAGES]:
            inp, target = task.eval_pair(item.image[None].to(device), step_generator(cfg.run.seed, 0, item.index,
                                                                                     stream=99))
            out = predict(net, task, inp, geometry, run.precision)
            shown = task.input_rgb(task.model_input(inp))
            size = scaled_size(*inp.shape[-2:], cfg.data.load_size)
            rows.append([F.interpolate(x.float(), size=size, mode="bilinear", antialias=True, align_corners=False)
                         .clamp_(0, 1) for x in (shown, out, target)])
    h = max(r[0].shape[-2] for r in rows)
    w = max(r[0].shape[-1] for r in rows)
    inp, out, target = (torch.cat([_letterbox(r[k], h, w) for r in rows]) for k in range(3))
    log.samples(step, inp, out, target)
