"""`p2p bench all` (every suite with a report section into one folder) and `p2p bench report`
(re-render its report.md and plots)."""

from __future__ import annotations

import argparse
from pathlib import Path

from p2p.bench.suite_io import SuiteOutput, counts, names
from p2p.errors import UsageError


def add_arguments(p: argparse.ArgumentParser) -> None:
    from p2p.specs.suites import sections

    p.add_argument("--out", default="bench-out", help="output folder (default bench-out)")
    p.add_argument("--quick", action="store_true",
                   help="short settings for every section: a few minutes on a 2-core CPU")
    p.add_argument("--source", default=None,
                   help="shard folder for the data section (default: built from the embedded photos in OUT/work)")
    p.add_argument("--device", default="auto", help="auto (cuda when present), cpu or cuda")
    p.add_argument("--procs", default="1,2", help="process counts for the ranks section (default 1,2)")
    p.add_argument("--sections", default=",".join(sections()),
                   help=f"comma-separated subset of {', '.join(sections())} (default: all)")
    p.add_argument("--image-size", type=int, default=None, help="image side for every section (default: each "
                   "section's own); the self-made shards are stored at its pix2pix load size (286 for 256)")
    p.add_argument("--batch-size", type=int, default=None,
                   help="batch for every section (lab: images per batch; default: each section's own)")
    p.add_argument("--ngf", type=int, default=None, help="generator width for step, ranks and profile")
    p.add_argument("--ndf", type=int, default=None, help="discriminator width for step, ranks and profile")
    p.add_argument("--num-downs", type=int, default=None, help="U-Net depth for step, ranks and profile")
    p.add_argument("--photos", type=int, default=64,
                   help="COCO-like JPEGs cut from the embedded photos for the data section's shards (default 64)")
    p.add_argument("--photo-scale", type=float, default=1.0,
                   help="their size relative to COCO's ~640x480 (default 1.0)")


def run(args, out: SuiteOutput) -> int:
    from p2p.bench.all_bench import AllOptions, run_all

    options = AllOptions(out=args.out, quick=args.quick, source=args.source, device=args.device,
                         procs=counts(args.procs, "--procs"), sections=names(args.sections), image_size=args.image_size,
                         batch_size=args.batch_size, ngf=args.ngf, ndf=args.ndf, num_downs=args.num_downs,
                         photos=args.photos, photo_scale=args.photo_scale)
    results = run_all(options, out.say, lambda section, text: out.error(text))
    folder = Path(args.out)
    out.say(f"wrote {folder / 'results.json'}, {folder / 'report.md'} and plots in {results['seconds']:.0f} s")
    failures = []
    for name in options.sections:
        sec = results.get(name) or {}
        if sec.get("skipped"):
            out.say(f"  {name}: skipped ({sec['skipped']})")
        elif sec.get("error"):
            out.say(f"  {name}: FAILED ({sec['error'].splitlines()[0]})")
            failures.append(name)
    if failures:
        out.say(f"p2p bench all: {len(failures)} section(s) failed: {', '.join(failures)}")
        return 1
    return 0


def add_report_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("results", metavar="DIR/results.json", help="a `p2p bench all` results file; report.md and "
                   "the plots are written next to it")


def run_report(args, out: SuiteOutput) -> int:
    import json

    from p2p.bench.report import write_report

    src = Path(args.results)
    try:
        results = json.loads(src.read_text())
    except (OSError, ValueError) as e:
        raise UsageError(f"{src}: not a readable results.json ({e})") from None
    out.say(str(write_report(results, src.parent)))
    return 0
