"""`p2p bench memory`: peak memory of one training step per row, and the largest batch that fits."""

from __future__ import annotations

import argparse

from p2p.bench.suite_io import SuiteOutput, names, write_json_to


def add_arguments(p: argparse.ArgumentParser) -> None:
    from p2p.bench.memory import CHECKPOINTING, GENERATORS, PRECISIONS, RESOLUTIONS

    for flag, known, default in (("--resolutions", RESOLUTIONS, ",".join(RESOLUTIONS)),
                                 ("--generators", GENERATORS, ",".join(GENERATORS)),
                                 ("--precisions", PRECISIONS, "fp32,bf16"),
                                 ("--checkpointing", CHECKPOINTING, ",".join(CHECKPOINTING))):
        p.add_argument(flag, default=default, help=f"comma-separated subset of {', '.join(known)} (default {default})")
    p.add_argument("--batch-size", type=int, default=1, help="measured at this and twice this (default 1)")
    p.add_argument("--budget-gb", type=float, default=80.0, help="memory the largest-batch estimate must fit in")
    p.add_argument("--device", default="auto", help="auto (cuda when present), cpu or cuda")
    p.add_argument("--timeout-s", type=float, default=600.0, help="per measurement; slower rows: not measured")
    p.add_argument("--one-process", action="store_true",
                   help="GPU only: every row in this process, the allocator's peak reset per row (no --timeout-s)")
    p.add_argument("--json", metavar="PATH", help="also write {environment, config, results} to PATH")


def run(args, out: SuiteOutput) -> int:
    from p2p.bench.memory import MemoryOptions, run_memory

    options = MemoryOptions(names(args.resolutions), names(args.generators), names(args.precisions),
                            names(args.checkpointing), args.batch_size, args.budget_gb, args.device, args.timeout_s,
                            args.one_process)
    options.check()  # before anything is printed
    out.say(f"bench memory: one training step per row, "
            f"{'all in this process' if args.one_process else 'each in a fresh process'}, at batch {args.batch_size} "
            f"and {2 * args.batch_size}")
    payload = run_memory(options, out.say, partial=(lambda part: write_json_to(args.json, part)) if args.json else None)
    rows = payload["results"]
    columns = ("resolution", "generator", "precision", "checkpointing", "peak_gb",
               *(("reserved_gb",) if any("reserved_gb" in r for r in rows) else ()), "per_image_gb", "max_batch",
               "skipped")
    out.table(f"peak memory of one training step (batch {args.batch_size}), {payload['config']['device']}",
              rows, columns)
    out.say(f"measured as: {next((r['source'] for r in rows if r['source']), 'nothing measured')}; "
            f"max_batch: estimated from batches {args.batch_size} and {2 * args.batch_size} for {args.budget_gb:g} GB")
    write_json_to(args.json, payload)
    return 0
