"""`p2p bench profile`: a torch.profiler trace and the top operators of a real run."""

from __future__ import annotations

import argparse
from pathlib import Path

from p2p.bench.suite_io import SuiteOutput, write_json_to


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("args", nargs="*", metavar="CONFIG.yaml | section.key=value",
                   help="the run to profile, as for `p2p train` (default: the demo on the embedded photos)")
    p.add_argument("--source", default=None, help="data.source: an image or shard folder (default: the config's)")
    p.add_argument("--steps", type=int, default=None, help="profiled steps (default 10; 4 with --quick)")
    p.add_argument("--warmup", type=int, default=None, help="unprofiled steps first (default 3; 2 with --quick)")
    p.add_argument("--top", type=int, default=15, help="operators in the table (default 15)")
    p.add_argument("--out", default="bench-out/profile", help="folder for trace.json and profile.json")
    p.add_argument("--json", metavar="PATH", help="the summary JSON (default: OUT/profile.json)")
    p.add_argument("--quick", action="store_true", help="fewer steps: a smoke run")


def run(args, out: SuiteOutput) -> int:
    from p2p.bench.profile import run_profile
    from p2p.config import split_args

    path, overrides = split_args(list(args.args))
    if args.source:
        overrides.append(f"data.source={args.source}")
    payload = run_profile(overrides=overrides, config_path=path, steps=args.steps, warmup=args.warmup,
                          quick=args.quick, out_dir=args.out, top=args.top, progress=out.say)
    s = payload["summary"]
    kind = "cuda" if s["top_ops_cuda"] else "cpu"
    out.table(f"top operators by self {kind.upper()} time ({s['steps']} steps)",
              s[f"top_ops_{kind}"], ("name", "calls", f"self_{kind}_ms", f"self_{kind}_share"))
    out.say(f"{s['img_per_s']:.1f} img/s with the profiler on; data wait {100 * s['data_wait_fraction']:.0f}% of "
            f"{s['wall_s']:.2f} s; trace: {s['trace']}")
    out.say(f"device step ({s['device_step']}): {s['device_step_ms']:.2f} ms a step, "
            f"{100 * s['device_step_share']:.1f}% of the step time")
    for r in s["per_rank"]:
        out.say(f"rank {r['rank']} on {r['host']}: step {1000 * r['step_s']:.1f} ms, data wait "
                f"{1000 * r['data_wait_s']:.1f} ms, CPU wait {1000 * r['cpu_wait_s']:.1f} ms")
    out.say(s["bottleneck"])
    write_json_to(args.json or Path(args.out) / "profile.json", payload)
    return 0
