"""`p2p bench lab`: RGB->Lab, p2p batched against skimage per image."""

from __future__ import annotations

import argparse

from p2p.bench.suite_io import SuiteOutput, write_json_to


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--device", default="cpu", help="torch device for the p2p rows (default: cpu)")
    p.add_argument("--size", type=int, default=256, help="image side in pixels (default: 256)")
    p.add_argument("--images", type=int, default=16, help="images per batch (default: 16)")
    p.add_argument("--repeats", type=int, default=3, help="timed repeats, median reported (default: 3)")
    p.add_argument("--quick", action="store_true", help="no minimum time per repeat: a smoke test")
    p.add_argument("--json", metavar="PATH", help="also write {environment, results} to PATH")


def run(args, out: SuiteOutput) -> int:
    import torch

    from p2p.bench.common import environment
    from p2p.bench.lab import run_lab

    rows = run_lab(device=args.device, size=args.size, images=args.images, repeats=args.repeats, quick=args.quick)
    title = f"RGB -> Lab, {args.images} x {args.size}x{args.size} photos, {torch.get_num_threads()} threads"
    out.table(title, rows, ("name", "device", "img_per_s", "ratio", "max_abs_diff_vs_skimage"))
    for r in rows:
        if r.get("skipped"):
            out.say(f"  skipped {r['name']}: {r['skipped']}")
        elif "compile_s" in r:
            out.say(f"  {r['name']}: {r.get('implementation')}, compiled once in {r['compile_s']:.2f} s"
                    + (f", loaded from the cache in {r['load_s'] * 1000:.1f} ms" if "load_s" in r else ""))
    if args.json:
        write_json_to(args.json, {"environment": environment(), "results": rows})
    return 0
