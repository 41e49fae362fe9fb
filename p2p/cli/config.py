"""`p2p config [CONFIG.yaml] [overrides]`: print the resolved config; `--keys` lists every key."""

from __future__ import annotations

from p2p.config import config_from_args, help_table


def add_arguments(parser):
    parser.add_argument("args", nargs="*", metavar="CONFIG.yaml | section.key=value")
    parser.add_argument("--keys", action="store_true", help="list every key with its default and meaning")


def run(args) -> int:
    if args.keys:
        for key, default, text in help_table():
            print(f"{key:<26} {default:<14} {text}")
        return 0
    print(config_from_args(args.args).to_yaml(), end="")
    return 0
