"""`p2p bench gpu-report`: a benchmarks/gpu-check.sh folder into gpu-check.json and summary.md."""

from __future__ import annotations

import argparse
from pathlib import Path

from p2p.bench.suite_io import SuiteOutput
from p2p.errors import UsageError


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("folder", metavar="OUT", help="the output folder of benchmarks/gpu-check.sh (its parts.tsv); "
                   "gpu-check.json and summary.md are written into it")
    p.add_argument("--work", metavar="WORK", default=None, help="the check's work folder (the parts' files); "
                   "results.tar.gz is then written into OUT too (default: OUT holds the parts' files, e.g. "
                   "results.tar.gz unpacked there)")
    p.add_argument("--quiet", action="store_true", help="print one line, not the summary")


def run(args, out: SuiteOutput) -> int:
    from p2p.bench.gpu_check import write_report

    folder = Path(args.folder)
    work = Path(args.work) if args.work else folder
    for f in (folder, work):
        if not f.is_dir():
            raise UsageError(f"{f}: no such folder (give the OUT and WORK folders of benchmarks/gpu-check.sh)")
    result = write_report(work, folder)
    if not args.quiet:
        out.say((folder / "summary.md").read_text().rstrip("\n"))
    out.say(f"wrote {folder / 'gpu-check.json'} and {folder / 'summary.md'}: "
            f"{'passed' if result['passed'] else 'not passed'}"
            + ("" if result["complete"] else f", did not finish: {', '.join(result['unfinished'])}"))
    return 0 if result["passed"] and result["complete"] else 1
