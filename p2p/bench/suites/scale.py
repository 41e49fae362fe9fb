"""`p2p bench scale`: how p2p grows with the dataset (N COCO-shaped images sharded, planned,
trained and resumed), or with --simulate one rank's plan at N samples and W ranks, no images."""

from __future__ import annotations

import argparse
from pathlib import Path

from p2p.bench.suite_io import SuiteOutput, counts


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--sizes", default=None, help="image counts N, comma-separated (default 1k,10k,100k; "
                   "with --simulate 1M,10M,100M)")
    p.add_argument("--work", default=None, help="images, shards and runs (reused: images are made once)")
    p.add_argument("--out", default=None, help="scale.json, scale.md and one PNG per figure")
    p.add_argument("--workers", type=int, default=2, help="p2p shard workers and loader workers (default 2)")
    p.add_argument("--batch-size", type=int, default=None, help="train.batch_size of the timed runs (default 8; "
                   "with --simulate 16)")
    p.add_argument("--timeout", type=float, default=600.0, help="seconds a training start may take (default 600)")
    p.add_argument("--simulate", action="store_true", help="no images: synthetic manifests and index files, one "
                   "rank's plan, index parse, start-up and world-size change at N samples and W ranks")
    p.add_argument("--worlds", default="8,64,1024", help="--simulate: world sizes W (default 8,64,1024)")
    p.add_argument("--changes", default="1024:512,64:96", help="--simulate: world-size changes OLD:NEW mid-epoch")
    p.add_argument("--shard-size", type=int, default=1000, help="--simulate: samples per shard (default 1000)")


def run_simulated(args, out: SuiteOutput) -> int:
    from p2p.bench.plan_scale import options_from_text, run_plan_scale

    options = options_from_text(args.sizes, args.worlds, args.changes, args.shard_size, args.batch_size, args.work,
                                args.timeout)
    out.say(f"bench scale --simulate: N = {', '.join(f'{n:,}' for n in options.sizes)} samples, W = "
            f"{', '.join(map(str, options.worlds))}, in {options.work}")
    payload = run_plan_scale(options, args.out or "bench-plan-scale", out.say)
    missed = [t["target"] for t in payload["targets"] if not t["met"]]
    out.say("\n".join(payload["report"]))
    out.say(f"wrote plan-scale.json, plan-scale.md and plots in {payload['seconds']:.0f} s; targets missed: "
            f"{'; '.join(missed) if missed else 'none'}")
    return 0


def run(args, out: SuiteOutput) -> int:
    from p2p.bench.scale import FIGURES, ScaleOptions, run_scale

    if args.simulate:
        return run_simulated(args, out)
    args.sizes, args.work = args.sizes or "1000,10000,100000", args.work or "bench-scale-work"
    args.out, args.batch_size = args.out or "bench-scale", args.batch_size or 8
    options = ScaleOptions(sizes=counts(args.sizes, "--sizes"), work=args.work, workers=args.workers,
                           batch_size=args.batch_size, timeout_s=args.timeout)
    out.say(f"bench scale: N = {', '.join(f'{n:,}' for n in options.sizes)} COCO-shaped images in {options.work}")
    payload = run_scale(options, args.out, out.say)
    rows = [{"name": what, **{f"N={r['n']}": r.get(key) for r in payload["results"]}}
            for key, (what, _) in FIGURES.items()]
    out.table("how p2p grows with the dataset", rows, ("name", *(f"N={r['n']}" for r in payload["results"])))
    bad = payload["super_linear"]
    out.say(f"wrote {Path(args.out) / 'scale.json'}, scale.md and plots in {payload['seconds']:.0f} s; super-linear: "
            f"{', '.join(bad) if bad else 'none'}")
    return 0
