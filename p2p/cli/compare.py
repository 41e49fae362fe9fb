"""`p2p compare RUN_DIR... --out DIR`: curves of validation metrics and losses against step and
images seen, a table of best and final values per run (markdown + JSON), labelled by the config
keys that differ between the runs, and each run's sample grids at matched steps (p2p.compare)."""

from __future__ import annotations

import argparse


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("runs", nargs="+", help="run folders (each with config.yaml, metrics.jsonl, val.jsonl)")
    parser.add_argument("--out", required=True, help="folder for curves.png, table.md/json, samples-*.png")


def run(args) -> int:
    from p2p.compare import compare

    result = compare(args.runs, args.out)
    print((result.files[0].parent / "table.md").read_text(), end="")
    print(f"p2p compare: {len(result.runs)} run(s) -> " + ", ".join(p.name for p in result.files))
    return 0
