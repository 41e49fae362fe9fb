"""`p2p train [CONFIG.yaml] [section.key=value ...]`: the one training entry, whatever started
the process (a shell, torchrun, accelerate launch, srun, submitit).

Exit codes: 0 the run reached train.max_steps, 1 it could not go on (a non-finite loss, out of
memory, a lost peer), 2 a usage or config error, and 75 it stopped before train.max_steps after
saving checkpoints/last.pt, on SIGTERM/SIGUSR2 or at train.stop_after: run the same command
again to continue (slurm/train.sbatch requeues the job on 75; 75 is EX_TEMPFAIL of sysexits.h,
"try again later"). With several processes only rank 0 exits 75, the others 0.
"""

from __future__ import annotations

import argparse
import sys
import time

from p2p.config import config_from_args

STOPPED_ON_SIGNAL = 75
# srun --kill-on-bad-exit=1 kills the tasks still running when one exits non-zero, and then
# reports 143 (killed) instead of 75: rank 0 lets the others exit 0 first (they only tear down).
PEERS_EXIT_FIRST_S = 5.0


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("args", nargs="*", metavar="CONFIG.yaml | section.key=value",
                        help="an optional YAML preset (see configs/), then overrides such as train.max_steps=100")


def run(args) -> int:
    cfg = config_from_args(args.args)
    from p2p.train.loop import TrainingError, train

    try:
        result = train(cfg)
    except TrainingError as e:
        print(f"p2p train: error: {e}", file=sys.stderr)
        return 1
    if result.complete:
        return 0
    if result.world > 1:
        if result.rank != 0:
            return 0
        time.sleep(PEERS_EXIT_FIRST_S)
    return STOPPED_ON_SIGNAL
