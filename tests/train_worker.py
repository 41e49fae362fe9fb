"""Runs p2p's training entry in-process for the tests (under torchrun too), then saves each
rank's final weights to OUT/rank<R>.pt so tests can compare ranks.

    python tests/train_worker.py OUT [--die-at-step N --die-rank R] section.key=value ...
"""

from __future__ import annotations

import argparse
import os

import torch

import p2p.train.loop as loop
from p2p.config import load_config


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("out")
    ap.add_argument("--die-at-step", type=int, default=0)
    ap.add_argument("--die-rank", type=int, default=1)
    ap.add_argument("overrides", nargs="*")
    args = ap.parse_args()
    rank = int(os.environ.get("RANK", "0"))
    if args.die_at_step and rank == args.die_rank:
        real_step, calls = loop.train_step, [0]

        def dying_step(*a, **kw):  # a crash (OOM-kill, node failure) in the middle of a run
            calls[0] += 1
            if calls[0] == args.die_at_step:
                os._exit(3)
            return real_step(*a, **kw)

        loop.train_step = dying_step
    result = loop.train(load_config(None, args.overrides))
    torch.save({"G": result.generator.state_dict(), "D": result.discriminator.state_dict(), "step": result.step},
               os.path.join(args.out, f"rank{rank}.pt"))


if __name__ == "__main__":
    main()
