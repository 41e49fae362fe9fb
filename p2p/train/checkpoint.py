"""Checkpoints: what one holds (the payload schema), how it is written so that it survives
anything, and how a run resumes from it exactly.

Files, in <run>/checkpoints/: `last.pt` (always the newest), `step-<N>.pt` (the last
`keep_last` of them, hard links to the same bytes where the filesystem allows) and `best.pt`.
Each is written to a temporary file, fsynced and renamed over the old one (so `kill -9` at any
moment leaves the previous complete file; a full disk leaves it too, and stops the run with one
line: p2p.atomic) and loaded with `weights_only=True` (plain tensors and containers; no pickled
code runs). Every payload carries a sha256 checksum of its contents, verified on every load
(p2p.checkpoint_file), so a file damaged on disk or in a copy is never trained on.

Resuming (`Checkpoints.find_resumable`): the newest readable checkpoint of the run folder,
last.pt first, then step-<N>.pt from the highest N, and best.pt only when it is newer than all
of them. Files that cannot be read are moved aside to `<name>.unreadable` (never deleted) and
named in a notice; with files present and none readable the run stops with one line
(`CheckpointError`, exit 2) before anything is overwritten.

Payload (format "p2p", version FORMAT_VERSION):
    arch                  generator / discriminator architecture (what `load_generator` rebuilds)
    generator, discriminator   state dicts; BatchNorm statistics are the mean over ranks
    generator_ema         with train.ema_decay > 0: the moving average of the generator (what
                          `load_generator` picks by default), statistics averaged the same way
    opt_g, opt_d, scaler_g, scaler_d   optimizer and loss-scaler states
    step, epoch, batch_in_epoch   the position (`TrainState`)
    best, best_metric     the best held-out value of train.best_metric so far, and its name
    lr_factor             the schedule's factor at `step` (informative; the schedule is a function of the step)
    rng, rank_buffers     per rank: every RNG stream, and its own BatchNorm statistics
    world_size, config    how many ranks saved it, and the resolved config
    batch_size            the batch per rank the current part of the epoch ran with (p2p.train.position)
    epoch_history         world-size changes inside the current epoch (p2p.data.plan.EpochHistory)
    images_in_epoch       images the run has read in the current epoch, over all ranks
    checksum              "sha256:<hex>" over everything above (p2p.checkpoint_file)
"""

from __future__ import annotations

import os
import random
import shutil
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from p2p.atomic import TMP_SUFFIX, fsync_dir, replace_with, write_error
from p2p.checkpoint_file import read_checkpoint_file, sealed
from p2p.data.plan import images_read, mix_seed
from p2p.errors import CheckpointError, UsageError
from p2p.models import arch_dict, same_arch
from p2p.train.payload_check import check_training_payload
from p2p.train.wrap import local_buffers, restore_buffers, unwrap

FORMAT_VERSION = 2  # 2: payloads carry a checksum
# what resuming needs from a payload; a loadable file without these is not a training checkpoint
TRAINING_KEYS = ("arch", "generator", "discriminator", "opt_g", "opt_d", "step", "epoch", "batch_in_epoch")
UNREADABLE_SUFFIX = ".unreadable"


@dataclass
class TrainState:
    """Where a run is: steps done, and the data position the next step reads from."""

    step: int = 0
    epoch: int = 0
    batch_in_epoch: int = 0
    best: float | None = None
    best_metric: str = "psnr"  # what `best` measures (train.best_metric when it was set)
    # (world size, batch size, batches per rank) of the parts of this epoch read before the
    # world or batch size changed; batch_in_epoch counts batches since (p2p.data.plan)
    epoch_history: list = field(default_factory=list)


def save_atomic(obj, path: Path) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    replace_with(path, lambda f: torch.save(obj, f))


def _link_atomic(src: Path, dst: Path) -> None:
    """dst becomes the same file as src: a hard link renamed into place (a copy if links fail)."""
    tmp = dst.with_name(dst.name + TMP_SUFFIX)
    if tmp.exists():
        tmp.unlink()
    try:
        try:
            os.link(src, tmp)
        except OSError:
            shutil.copyfile(src, tmp)
        os.replace(tmp, dst)
    except OSError as e:
        tmp.unlink(missing_ok=True)
        raise write_error(dst, e, src.stat().st_size) from None


@dataclass
class Resumable:
    """What `Checkpoints.find_resumable` found: the payload to resume from, its file, and the
    files that could not be read, each with why."""

    payload: dict
    path: Path
    unreadable: list[tuple[Path, str]]


class Checkpoints:
    """The checkpoint files of one run folder."""

    def __init__(self, run_dir: Path, keep_last: int = 3):
        self.dir = Path(run_dir) / "checkpoints"
        self.keep_last = keep_last
        self.last_step: int | None = None  # the step last.pt holds, once this process knows it

    @property
    def last(self) -> Path:
        return self.dir / "last.pt"

    @property
    def best(self) -> Path:
        return self.dir / "best.pt"

    def save(self, payload: dict, step: int, is_best: bool = False) -> Path:
        save_atomic(sealed(payload), self.last)
        if self.keep_last > 0:
            _link_atomic(self.last, self.dir / f"step-{step:08d}.pt")
            for old in sorted(self.dir.glob("step-*.pt"))[: -self.keep_last]:
                old.unlink(missing_ok=True)
        if is_best:
            _link_atomic(self.last, self.best)
        fsync_dir(self.dir)
        self.last_step = step
        return self.last

    def files(self) -> list[Path]:
        """Checkpoints to resume from, newest first: last.pt, step-<N>.pt by falling N (best.pt
        is looked at separately: it is the newest only sometimes)."""
        steps = sorted(self.dir.glob("step-*.pt"), reverse=True) if self.dir.is_dir() else []
        return ([self.last] if self.last.is_file() else []) + [p for p in steps if p.is_file()]

    def find_resumable(self) -> Resumable | None:
        """The newest readable checkpoint (see the module docstring); None when the folder has
        none at all. Reads only: `set_aside` moves the unreadable ones once every rank looked."""
        unreadable: list[tuple[Path, str]] = []
        chosen: tuple[Path, dict] | None = None
        for path in self.files():
            payload = _readable(path, unreadable)
            if payload is not None:
                chosen = (path, payload)
                break
        if self.best.is_file() and (chosen is None or _newer(self.best, chosen[0])):
            payload = _readable(self.best, unreadable)
            if payload is not None and (chosen is None or payload["step"] > chosen[1]["step"]):
                chosen = (self.best, payload)
        if chosen is None:
            if not unreadable:
                return None
            why = "; ".join(f"{p.name} {reason}" for p, reason in unreadable)
            raise CheckpointError(
                f"no readable checkpoint in {self.dir} ({why}); nothing was changed: copy a good checkpoint "
                f"there as last.pt, or start over under another run.name", str(self.dir))
        return Resumable(chosen[1], chosen[0], unreadable)

    def set_aside(self, found: Resumable) -> list[tuple[Path, Path]]:
        """Move each unreadable file to `<name>.unreadable` (`.unreadable.2`, ... if taken):
        kept for inspection, out of the names a resume or the step-file pruning looks at. Then
        last.pt is the checkpoint resumed from again (a hard link), so that it is the newest."""
        moved = []
        for path, _ in found.unreadable:
            if not path.exists():  # another rank's view, or a hard link already moved
                continue
            dest = aside_name(path)
            os.rename(path, dest)
            moved.append((path, dest))
        if found.path != self.last:
            _link_atomic(found.path, self.last)
        fsync_dir(self.dir)
        return moved


def aside_name(path: Path) -> Path:
    dest = path.with_name(path.name + UNREADABLE_SUFFIX)
    n = 2
    while dest.exists():
        dest = path.with_name(f"{path.name}{UNREADABLE_SUFFIX}.{n}")
        n += 1
    return dest


def _newer(a: Path, b: Path) -> bool:
    """a was written after b (hard links to the same file are not newer than each other)."""
    sa, sb = a.stat(), b.stat()
    return (sa.st_dev, sa.st_ino) != (sb.st_dev, sb.st_ino) and sa.st_mtime_ns > sb.st_mtime_ns


def _readable(path: Path, unreadable: list[tuple[Path, str]]) -> dict | None:
    """The training payload in `path`, or None with the reason appended to `unreadable`."""
    try:
        payload = read_checkpoint_file(path)
    except CheckpointError as e:
        unreadable.append((path, str(e).removeprefix(f"{path} ")))
        return None
    if not isinstance(payload, dict) or payload.get("format") != "p2p" or any(k not in payload for k in TRAINING_KEYS):
        unreadable.append((path, "is not a p2p training checkpoint (no optimizer state and data position)"))
        return None
    try:
        check_training_payload(payload, path)
    except CheckpointError as e:
        unreadable.append((path, str(e).removeprefix(f"{path} ")))
        return None
    return payload


def resume_notice(found: Resumable, moved: list[tuple[Path, Path]]) -> str:
    """One notice naming the unreadable files, where they went and what the run resumes from."""
    where = {src: dst for src, dst in moved}
    bad = "; ".join(f"{p.name} {why}, moved to {where.get(p, aside_name(p)).name}" for p, why in found.unreadable)
    return f"in {found.path.parent}: {bad}; resumed from {found.path.name} (step {found.payload['step']})"


def open_resumable(ckpts: Checkpoints, accel, notices: list[str]) -> Resumable | None:
    """The checkpoint to resume from, read by every rank; rank 0 then moves the unreadable files
    aside (after a barrier: no rank is still reading them) and the notice names both."""
    found = ckpts.find_resumable()
    if found is not None:
        ckpts.last_step = found.payload["step"]
    if found is None or not found.unreadable:
        return found
    accel.wait_for_everyone()
    moved = ckpts.set_aside(found) if accel.is_main_process else []
    notices.append(resume_notice(found, moved))
    return found


# --------------------------------------------------------------------------- the payload


def rank_state(G, D) -> dict:
    """What each rank alone holds: its RNG streams and its own BatchNorm running stats."""
    return {"rng": capture_rng(), "buffers_g": local_buffers(G), "buffers_d": local_buffers(D)}


def make_payload(cfg, g_arch, d_arch, nets, state: TrainState, ranks: list[dict], lr_factor: float) -> dict:
    """The checkpoint of a run (see the module docstring); `ranks` holds every rank's `rank_state`."""
    batch_size = cfg.train.batch_size  # per rank: the shape of the epoch's current part, with len(ranks)
    payload = {
        "format": "p2p", "version": FORMAT_VERSION,
        "arch": arch_dict(g_arch, d_arch),
        "generator": unwrap(nets.G).state_dict(), "discriminator": unwrap(nets.D).state_dict(),
        "opt_g": nets.opt_g.state_dict(), "opt_d": nets.opt_d.state_dict(),
        "scaler_g": nets.scaler_g.state_dict(), "scaler_d": nets.scaler_d.state_dict(),
        "step": state.step, "epoch": state.epoch, "batch_in_epoch": state.batch_in_epoch, "best": state.best,
        "best_metric": state.best_metric,
        "lr_factor": lr_factor, "rng": [r["rng"] for r in ranks], "world_size": len(ranks), "batch_size": batch_size,
        "rank_buffers": [{"generator": r["buffers_g"], "discriminator": r["buffers_d"]} for r in ranks],
        "config": cfg.to_dict(),
        "epoch_history": [list(h) for h in state.epoch_history],
        "images_in_epoch": images_read(state.epoch_history, len(ranks), batch_size, state.batch_in_epoch),
    }
    if nets.ema is not None:
        payload["generator_ema"] = nets.ema.state_dict()
    return payload


def load_weights(payload: dict, G, D, g_arch, d_arch, path) -> None:
    """The networks' weights, before they are wrapped for distribution."""
    if not same_arch(payload.get("arch"), g_arch, d_arch):
        raise UsageError(f"{path} holds a different model than this config; use another run.name "
                         f"or run.resume=false")
    G.load_state_dict(payload["generator"])
    D.load_state_dict(payload["discriminator"])


def restore_training(payload: dict, nets, rank: int, world: int, seed: int) -> tuple[TrainState, list[str]]:
    """Optimizers, scalers, this rank's RNG streams and BatchNorm statistics, after the networks
    are wrapped (DDP broadcasts rank 0's buffers when it wraps). Returns the position and notices."""
    load_optimizer(nets.opt_g, payload["opt_g"])
    load_optimizer(nets.opt_d, payload["opt_d"])
    notices = load_scalers(nets, payload)
    state = TrainState(payload["step"], payload["epoch"], payload["batch_in_epoch"], payload.get("best"),
                       payload.get("best_metric", "psnr"), [tuple(h) for h in payload.get("epoch_history", [])])
    rngs = payload.get("rng") or []
    if len(rngs) == world:
        restore_rng(rngs[rank])
        local = payload.get("rank_buffers") or []
        if len(local) == world:
            restore_buffers(nets.G, local[rank]["generator"])
            restore_buffers(nets.D, local[rank]["discriminator"])
    else:
        seed_all(mix_seed(seed, rank, state.step))
        notices.append(f"resumed with {world} process(es) from a checkpoint of {len(rngs)}: reseeded every rank's "
                       f"RNG streams (dropout masks; python, numpy, torch) from (run.seed, rank, step {state.step}), and "
                       f"every rank starts from the BatchNorm statistics averaged over the saved ranks")
    return state, notices


# The optimizer's own choices: which kernel runs its step, and whether its state lives on the device.
_OPTIMIZER_FLAGS = ("capturable", "fused", "foreach", "differentiable")


def load_optimizer(opt: torch.optim.Optimizer, saved: dict) -> None:
    """The saved moments and step counts into `opt`, keeping what this run built it with.

    `Optimizer.load_state_dict` replaces every param group by the saved one: `lr` becomes the
    saved value (a CPU tensor after map_location="cpu", or a float from a run without CUDA
    graphs) and capturable/fused/foreach the saved flags. A captured CUDA graph reads the lr
    tensor it was captured with, so `set_lr` would then fill an object the graph never sees and
    the learning rate would stay at its resume-time value. So: this run's flags go into the
    saved groups before loading (torch then places `step` where those flags want it: on the
    device as float32 for capturable/fused), and afterwards each group gets back its own lr
    object, holding the saved value."""
    live = [{k: g[k] for k in _OPTIMIZER_FLAGS if k in g} | {"lr": g["lr"]} for g in opt.param_groups]
    groups = [{**sg, **{k: v for k, v in mine.items() if k != "lr"}} for sg, mine in zip(saved["param_groups"], live)]
    opt.load_state_dict({**saved, "param_groups": groups})
    for group, mine in zip(opt.param_groups, live):
        saved_lr, lr = group["lr"], mine["lr"]
        if isinstance(lr, torch.Tensor):
            lr.fill_(float(saved_lr))
            group["lr"] = lr
        else:
            group["lr"] = float(saved_lr)


def scaler_kind(state: dict) -> str:
    """What a loss scaler (its state_dict) does: "off" (disabled), "skip" (fixed at 1.0, only skips
    non-finite updates: p2p.precision.Precision.make_scaler) or "fp16" (dynamic loss scaling)."""
    if not state:
        return "off"
    return "skip" if state.get("growth_interval", 0) >= 2**30 else "fp16"


def load_scalers(nets, payload: dict) -> list[str]:
    """The loss scalers' state where it applies. A run resumed with another train.precision or
    train.on_nonfinite has scalers of another kind (GradScaler.load_state_dict raises on the
    empty state of a disabled one, and an fp16 scale would turn a skip-only scaler into a
    dynamic one): those start fresh, with one notice."""
    mine, saved = scaler_kind(nets.scaler_g.state_dict()), scaler_kind(payload.get("scaler_g") or {})
    if mine == saved:
        nets.scaler_g.load_state_dict(payload["scaler_g"])
        nets.scaler_d.load_state_dict(payload["scaler_d"])
        return []
    cfg = (payload.get("config") or {}).get("train") or {}
    then = f"train.precision={cfg.get('precision', '?')}, train.on_nonfinite={cfg.get('on_nonfinite', '?')}"
    return [f"the checkpoint was trained with {then} (loss scaling: {saved}); this run's loss scaling is {mine}, "
            f"so the loss scalers start fresh (weights, optimizer moments and the position are resumed)"]


# --------------------------------------------------------------------------- RNG state


def seed_all(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def capture_rng() -> dict:
    """Every RNG a step can touch, as tensors and plain numbers (weights_only-loadable)."""
    version, mt, gauss = random.getstate()
    _, np_keys, np_pos, np_has_gauss, np_gauss = np.random.get_state()
    state = {
        "python": {"version": version, "state": torch.tensor(mt, dtype=torch.int64), "gauss": gauss},
        "numpy": {"keys": torch.from_numpy(np_keys.astype(np.int64)), "pos": int(np_pos),
                  "has_gauss": int(np_has_gauss), "gauss": float(np_gauss)},
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore_rng(state: dict) -> None:
    py = state["python"]
    random.setstate((py["version"], tuple(py["state"].tolist()), py["gauss"]))
    n = state["numpy"]
    np.random.set_state(("MT19937", n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"], n["gauss"]))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available() and len(state["cuda"]) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all(state["cuda"])
