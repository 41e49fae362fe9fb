"""`p2p bench ranks`: weak scaling over processes, the same batch per rank."""

from __future__ import annotations

import argparse

from p2p.bench.suite_io import SuiteOutput, counts, write_json_to
from p2p.bench.suites.step import add_model_arguments


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--procs", default="1,2", help="process counts, comma-separated (default 1,2)")
    p.add_argument("--device", default="auto", help="auto (cuda when present), cpu or cuda")
    add_model_arguments(p, "model sizes as in `p2p bench step` (default: full on GPU, small on CPU)")
    p.add_argument("--batch-size", type=int, default=None, help="images per process per step "
                   "(default 64 on GPU, 4 on CPU)")
    p.add_argument("--image-size", type=int, default=None, help="image side (default 256 GPU, 64 CPU)")
    p.add_argument("--steps", type=int, default=None, help="steps per timed round (default 20 GPU, 4 CPU)")
    p.add_argument("--warmup", type=int, default=None, help="untimed steps first (default 5 GPU, 2 CPU)")
    p.add_argument("--repeats", type=int, default=3, help="timed rounds, median reported (default 3)")
    p.add_argument("--threads", type=int, default=0,
                   help="torch/OpenMP threads per process (default: cores / the largest process count)")
    p.add_argument("--precision", choices=("fp32", "bf16", "fp16"), default=None,
                   help="autocast dtype (default bf16 on GPU, fp32 on CPU)")
    p.add_argument("--quick", action="store_true", help="short rounds: a smoke run")
    p.add_argument("--json", metavar="PATH", help="also write {environment, config, results} to PATH")


def run(args, out: SuiteOutput) -> int:
    from p2p.bench.ranks import ScalingOptions, plan_scaling, run_scaling

    options = ScalingOptions(procs=counts(args.procs, "--procs"), device=args.device, model=args.model, ngf=args.ngf,
                             ndf=args.ndf, num_downs=args.num_downs, batch_size=args.batch_size,
                             image_size=args.image_size, steps=args.steps, warmup=args.warmup, repeats=args.repeats,
                             threads=args.threads, precision=args.precision, quick=args.quick)
    p = plan_scaling(options)
    out.say(f"bench ranks: {list(p.procs)} processes on {p.device}, {p.sizes.name} model, {p.image_size}px, "
            f"batch {p.batch_size} per process")
    payload = run_scaling(options, out.say)
    c = payload["config"]
    out.table(f"weak scaling ({c['backend']}, {c['threads_per_process']} thread(s) per process)", payload["results"],
              ("name", "global_batch", "img_per_s", "img_per_s_per_process", "efficiency", "ratio"))
    write_json_to(args.json, payload)
    return 0
