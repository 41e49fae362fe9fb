"""`p2p bench decode`: the JPEG decoders on the shards, one core each."""

from __future__ import annotations

import argparse

from p2p.bench.suite_io import SuiteOutput, write_json_to


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--source", required=True, help="shard folder made by 'p2p shard' (its JPEGs are decoded)")
    p.add_argument("--images", type=int, default=200, help="JPEGs per round (default 200)")
    p.add_argument("--repeats", type=int, default=5, help="rounds, median reported (default 5)")
    p.add_argument("--json", metavar="PATH", help="also write {environment, config, results} to PATH")


def run(args, out: SuiteOutput) -> int:
    from p2p.bench.decode import run_decode

    payload = run_decode(args.source, images=args.images, repeats=args.repeats)
    c = payload["config"]
    out.table(f"JPEG decode, one core, {c['images']} shard JPEGs of {c['mean_pixels'] / 1e3:.0f} kpixels",
              payload["results"], ("name", "img_per_s", "ratio", "max_abs_diff", "keeps_pixels", "used_by_loaders"))
    write_json_to(args.json, payload)
    return 0
