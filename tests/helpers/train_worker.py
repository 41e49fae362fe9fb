"""Runs p2p's training entry in-process for the tests (under torchrun too), then saves each
rank's final weights (and its generator EMA, when on) to OUT/rank<R>.pt so tests can compare ranks.

    python tests/helpers/train_worker.py OUT [--die-at-step N | --hang-at-step N] [--die-rank R] section.key=value ...

--die-at-step: rank R exits abruptly in its Nth step (an OOM kill, a node failure).
--hang-at-step: rank R stops making progress in its Nth step without exiting (a stuck GPU,
a deadlocked loader); the run then goes through the `p2p train` command, so the test sees
what a user sees.
"""

from __future__ import annotations

import argparse
import os
import time

import torch

import p2p.train.loop as loop
import p2p.train.run as run
from p2p.cli import main as p2p_main
from p2p.config import load_config


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("out")
    ap.add_argument("--die-at-step", type=int, default=0)
    ap.add_argument("--hang-at-step", type=int, default=0)
    ap.add_argument("--die-rank", type=int, default=1)
    ap.add_argument("overrides", nargs="*")
    args = ap.parse_intermixed_args()
    rank = int(os.environ.get("RANK", "0"))
    at = args.die_at_step or args.hang_at_step
    if at and rank == args.die_rank:
        real_step, calls = run.train_step, [0]

        def faulty_step(*a, **kw):
            calls[0] += 1
            if calls[0] == at:
                if args.die_at_step:
                    os._exit(3)
                time.sleep(3600)
            return real_step(*a, **kw)

        run.train_step = faulty_step
    if args.hang_at_step:
        return p2p_main(["train", *args.overrides])
    built = []
    real_build = loop.build_run
    loop.build_run = lambda cfg: built.append(real_build(cfg)) or built[-1]  # to read this rank's EMA after
    result = loop.train(load_config(None, args.overrides))
    saved = {"G": result.generator.state_dict(), "D": result.discriminator.state_dict(), "step": result.step}
    if built[-1].nets.ema is not None:
        saved["G_ema"] = built[-1].nets.ema.state_dict()
    torch.save(saved, os.path.join(args.out, f"rank{rank}.pt"))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
