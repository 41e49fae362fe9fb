"""`p2p train [CONFIG.yaml] [section.key=value ...]`: the one training entry, whatever started
the process (a shell, torchrun, accelerate launch, srun, submitit).

Exit codes: 0 the run reached train.max_steps, 1 it could not go on (a non-finite loss, out of
memory, a lost peer), 2 a usage or config error, and 75 it stopped before train.max_steps after
saving checkpoints/last.pt, on SIGTERM/SIGUSR2 or at train.stop_after: run the same command
again to continue (slurm/train.sbatch requeues the job on 75; 75 is EX_TEMPFAIL of sysexits.h,
"try again later"). With several processes only rank 0 exits 75, the others 0.

Whenever it stops before train.max_steps (75, 1, or 130 on Ctrl-C), rank 0 prints the exact command that goes on
from there, the folder to run it in and where checkpoints/last.pt is. A damaged last.pt is not
an error: the run resumes from the newest readable checkpoint (p2p.train.checkpoint); with none
readable it exits 2 with one line.
"""

from __future__ import annotations

import argparse
import os
import shlex
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
        print_resume(args.args, cfg, None)
        return 1
    except KeyboardInterrupt:  # Ctrl-C: no checkpoint is written, the last periodic one resumes
        print_resume(args.args, cfg, None)
        raise  # p2p.cli prints "interrupted" and exits 130
    if result.complete:
        return 0
    if result.world > 1:
        if result.rank != 0:
            return 0
        time.sleep(PEERS_EXIT_FIRST_S)
    print_resume(args.args, cfg, result.step)
    return STOPPED_ON_SIGNAL


def resume_command(words: list[str]) -> str:
    """The command line that runs this training again, as the user typed it (or as `-m p2p`)."""
    entry = ["p2p"] if os.path.basename(sys.argv[0]) == "p2p" else [sys.executable, "-m", "p2p"]
    return shlex.join([*entry, "train", *words])


def print_resume(words: list[str], cfg, step: int | None) -> None:
    """Rank 0 says how to go on: the exact command, from which folder, and where last.pt is."""
    from p2p.dist import detect

    env = detect()
    if env.rank != 0:
        return
    last = (cfg.run_dir / "checkpoints" / "last.pt").resolve()
    launcher = "" if env.world_size == 1 else f" (with the same launcher: {env.world_size} processes, or any other count)"
    if last.exists():
        saved = f"last.pt: {last}" + (f" (step {step})" if step is not None else "")
    else:
        saved = f"no checkpoint saved yet ({last}): it starts over"
    print(f"p2p train: to resume, run: cd {shlex.quote(os.getcwd())} && {resume_command(words)}{launcher}; {saved}",
          file=sys.stderr, flush=True)
