"""`p2p bench SUITE`: benchmarks with the seed-style baseline measured in the same run.

One sub-command per suite registered in p2p.specs.suites, in its order: the suite's module
declares its flags and runs it (p2p.bench.suites); this command parses, prints what the suite
shows (progress lines, tables) and returns its exit code. Exit codes: 0 done, 1 `p2p bench all`
had a section fail (the others still ran and are in its results) or `p2p bench gpu-report` found
a check that did not pass, 2 a usage error.
"""

from __future__ import annotations

import argparse

from p2p.cli.bench_output import PrintedOutput
from p2p.specs import load
from p2p.specs.suites import SUITES


def add_arguments(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="suite", metavar="SUITE", required=True)
    for spec in SUITES:
        p = sub.add_parser(spec.name, help=spec.help, description=spec.help)
        load(spec.arguments)(p)
        p.set_defaults(run_suite=load(spec.run))


def run(args: argparse.Namespace) -> int:
    return int(args.run_suite(args, PrintedOutput()) or 0)
