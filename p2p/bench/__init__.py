"""`p2p bench {data,lab,step,scaling,profile,all}`: standalone benchmarks, each measuring the
seed-style baseline and p2p side by side in one run (see p2p.bench.common for the shared
timer, environment record and output format)."""

from __future__ import annotations

import argparse
import importlib

SUITES = {
    "data": "input pipelines (wds, dali, folder) vs the per-image PIL + skimage baseline",
    "lab": "RGB->Lab: p2p batched vs skimage per image",
    "step": "training step img/s: baseline vs each optimisation (and MFU on GPU)",
    "scaling": "weak scaling over processes (gloo on CPU, NCCL on GPUs)",
    "profile": "torch.profiler trace and top operators of a real run",
    "all": "everything above into one folder: results.json, report.md, plots",
}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="suite", metavar="SUITE", required=True)
    for name, text in SUITES.items():
        p = sub.add_parser(name, help=text, description=text)
        modname = f"p2p.bench.{name}_bench" if name == "all" else f"p2p.bench.{name}"
        try:
            module = importlib.import_module(modname)
        except ModuleNotFoundError as e:
            if e.name != modname:
                raise
            p.set_defaults(_missing=name)
            continue
        module.add_arguments(p)
        p.set_defaults(_module=module)


def run(args) -> int:
    from p2p.errors import UsageError

    if getattr(args, "_missing", None):
        raise UsageError(f"benchmark {args._missing!r} is not available in this build")
    return int(args._module.run(args) or 0)
