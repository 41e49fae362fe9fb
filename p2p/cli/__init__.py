"""The `p2p` command. Each subcommand lives in its own module, imported only when used, so
`p2p --help` and config errors answer without importing torch.

A subcommand module provides `add_arguments(parser)` and `run(args) -> int`.
`UsageError` anywhere (a `CheckpointError` too: a missing, damaged or foreign checkpoint) becomes
one line on stderr and exit code 2 (no traceback); `WriteError` (a full disk, an I/O error)
one line and exit code 1.
"""

from __future__ import annotations

import argparse
import importlib
import sys

from p2p.errors import UsageError, WriteError

COMMANDS = {
    "train": ("p2p.cli.train", "train a model: p2p train [CONFIG.yaml] [section.key=value ...]"),
    "predict": ("p2p.cli.predict", "run a generator on images: p2p predict CKPT INPUT... --out DIR"),
    "eval": ("p2p.cli.eval", "PSNR/SSIM/L1, colourfulness/ΔCF, FID/KID/LPIPS of a checkpoint on a data source"),
    "compare": ("p2p.cli.compare", "plots and tables of several runs: p2p compare RUN_DIR... --out DIR"),
    "export": ("p2p.cli.export", "write a generator as ONNX, TorchScript or official pix2pix weights"),
    "shard": ("p2p.cli.shard", "pack an image folder (e.g. COCO) into WebDataset shards"),
    "bench": ("p2p.cli.bench", "benchmarks with the baseline measured in the same run"),
    "submit": ("p2p.cli.submit", "submit training to Slurm (submitit): single, multi-node, sweeps"),
    "jobs": ("p2p.cli.submit", "list this user's p2p Slurm jobs"),
    "cancel": ("p2p.cli.submit", "cancel a p2p Slurm job"),
    "config": ("p2p.cli.config", "print the resolved config, or every key with its help"),
}


class _Parser(argparse.ArgumentParser):
    """argparse, but usage errors are one line + exit 2 (argparse prints the usage block)."""

    def error(self, message):  # noqa: D401
        self.exit(2, f"{self.prog}: error: {message}\n")


def _top_parser() -> argparse.ArgumentParser:
    lines = "\n".join(f"  {name:<8} {text}" for name, (_, text) in COMMANDS.items())
    p = _Parser(
        prog="p2p",
        description="pix2pix image-to-image GANs at HPC scale.",
        epilog=f"commands:\n{lines}\n\nRun 'p2p COMMAND --help' for a command's options.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--version", action="store_true", help="print the version and exit")
    p.add_argument("command", nargs="?", help="one of: " + ", ".join(COMMANDS))
    return p


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    top = _top_parser()
    if not argv or argv[0] in ("-h", "--help"):
        top.print_help()
        return 0 if argv else 2
    if argv[0] == "--version":
        from p2p.version import __version__

        print(f"p2p {__version__}")
        return 0
    name, rest = argv[0], argv[1:]
    if name not in COMMANDS:
        import difflib

        near = difflib.get_close_matches(name, COMMANDS, n=1)
        hint = f"; did you mean '{near[0]}'?" if near else f"; choose one of {', '.join(COMMANDS)}"
        print(f"p2p: error: unknown command {name!r}{hint}", file=sys.stderr)
        return 2
    module_name, text = COMMANDS[name]
    try:
        module = importlib.import_module(module_name)
        parser = _Parser(prog=f"p2p {name}", description=text)
        add = getattr(module, f"add_{name}_arguments", None) or module.add_arguments
        add(parser)
        # Positionals may follow options (`p2p submit --dry-run a=1 --wait b=2`); argparse cannot
        # intermix around sub-commands (`p2p bench SUITE ...`), which parse as before.
        nested = any(a.nargs in (argparse.PARSER, argparse.REMAINDER) for a in parser._actions)
        args = parser.parse_args(rest) if nested else parser.parse_intermixed_args(rest)
        args.command = name
        run = getattr(module, f"run_{name}", None) or module.run
        return int(run(args) or 0)
    except UsageError as e:
        print(f"p2p {name}: error: {e}", file=sys.stderr)
        return 2
    except WriteError as e:  # a full disk or an I/O error: the message names the path and the space
        print(f"p2p {name}: error: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print(f"p2p {name}: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:  # e.g. `p2p jobs | head`: the reader left, nothing to report
        sys.stderr.close()
        return 0
    finally:
        _leave_process_group()


def _leave_process_group() -> None:
    """A command that joined a process group (train, eval) leaves it before the process exits
    (p2p.dist.leave says why); commands that never imported torch.distributed skip it."""
    if "torch.distributed" in sys.modules:
        from p2p import dist

        dist.leave()


if __name__ == "__main__":
    raise SystemExit(main())
