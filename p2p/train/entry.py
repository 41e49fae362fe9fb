"""`p2p train [CONFIG.yaml] [section.key=value ...]`: the one training entry, whatever started
the process (a shell, torchrun, accelerate launch, srun, submitit)."""

from __future__ import annotations

import argparse
import sys

from p2p.config import Config, load_config
from p2p.errors import UsageError


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("args", nargs="*", metavar="CONFIG.yaml | section.key=value",
                        help="an optional YAML preset (see configs/), then overrides such as train.max_steps=100")


def split_args(args: list[str]) -> tuple[str | None, list[str]]:
    """First argument without '=' is the config file; everything else must be an override."""
    path, overrides = None, []
    for a in args:
        if "=" in a:
            overrides.append(a)
        elif path is None and not overrides:
            path = a
        else:
            raise UsageError(f"unexpected argument {a!r}: overrides look like section.key=value")
    return path, overrides


def config_from_args(args: list[str]) -> Config:
    path, overrides = split_args(args)
    return load_config(path, overrides)


def run(args) -> int:
    cfg = config_from_args(args.args)
    from p2p.train.loop import TrainingError, train

    try:
        train(cfg)
    except TrainingError as e:
        print(f"p2p train: error: {e}", file=sys.stderr)
        return 1
    return 0
