"""`p2p shard SRC OUT`: pack an image folder (e.g. COCO train2017) into WebDataset shards that
the wds and dali loaders read at full speed. This module parses the flags, shows progress
(a rich bar on a terminal, a plain line every 30 s elsewhere) and prints the summary; the work
is p2p.data.shards. Exit codes: 0 done, 1 a shard failed (run the same command again to finish
it), 2 a usage error or no usable image.
"""

from __future__ import annotations

import argparse
import sys
import time

from p2p.data.shards import (DEFAULT_QUALITY, DEFAULT_SHARD_MB, DEFAULT_SIZE, DEFAULT_VAL_FRACTION, ShardOptions,
                             ShardRun, run_shards)
from p2p.data.shards.format import MANIFEST, SPLITS
from p2p.specs.tasks import TASKS


def _keeps(spec) -> str:
    """What `p2p shard --task NAME` stores, from the task's spec."""
    if spec.input_kind == "labels":
        return f"{spec.name} reads pix2pixHD's train_label/, train_img/ (train_inst/) folders (docs/label-maps.md)"
    if spec.paired:
        return f"{spec.name} stores A|B pairs with size x size halves"
    return f"{spec.name} keeps " + ("colour images only" if spec.shard_filter == "colour" else "every image")


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("src", metavar="SRC", help="image folder (searched recursively); with train/ and "
                   "val/ subfolders those are the splits; --task paired: A|B images, or A/ and B/ folders")
    p.add_argument("out", metavar="OUT", help="output folder: OUT/{train,val}/shard-NNNNNN.{tar,idx} + manifest.json")
    p.add_argument("--task", choices=TASKS.names(), default="colorize",
                   help="the task the shards are for (default colorize): " + "; ".join(map(_keeps, TASKS)))
    p.add_argument("--size", type=int, default=DEFAULT_SIZE,
                   help=f"short side after resizing: the pix2pix load size (default {DEFAULT_SIZE}); "
                   "paired: each half is size x size")
    p.add_argument("--val-fraction", type=float, default=None,
                   help=f"share of keys held out for val by a hash of the key (default {DEFAULT_VAL_FRACTION}); "
                   "not used when SRC has train/ and val/ folders or with --val-dir")
    p.add_argument("--val-dir", default=None, help="a separate folder for the val split (e.g. COCO val2017); "
                   "SRC is then all train")
    p.add_argument("--b-dir", default=None, help="--task paired: the B folder matched to SRC by relative path")
    p.add_argument("--seed", type=int, default=0,
                   help="shuffles which shard an image goes to and the order inside shards (default 0)")
    p.add_argument("--workers", type=int, default=None,
                   help="worker processes (default: every core this process may use)")
    p.add_argument("--shard-size-mb", type=float, default=DEFAULT_SHARD_MB,
                   help=f"target shard size in MB (default {DEFAULT_SHARD_MB:g}); images per shard are fixed "
                   "up front from an estimate")
    p.add_argument("--quality", "--jpeg-quality", dest="quality", type=int, default=DEFAULT_QUALITY,
                   help=f"JPEG quality of the stored images (default {DEFAULT_QUALITY}; >= 90: 4:4:4 chroma, "
                   "else 4:2:0)")
    p.add_argument("--label-nc", type=int, default=None,
                   help="--task labels: skip maps with a class id >= N (default: any id up to 254 is stored; "
                   "training checks task.label_nc)")
    p.add_argument("--upscale-small", action="store_true",
                   help="upscale images whose short side is below --size (default: skip and record them)")
    p.add_argument("--force", action="store_true",
                   help="delete the shards in OUT and rewrite them (needed when options changed)")


def run(args: argparse.Namespace) -> int:
    options = ShardOptions(task=args.task, size=args.size, val_fraction=args.val_fraction, val_dir=args.val_dir,
                           b_dir=args.b_dir, seed=args.seed, workers=args.workers,
                           shard_size_mb=args.shard_size_mb, quality=args.quality,
                           upscale_small=args.upscale_small, force=args.force, label_nc=args.label_nc)
    with ProgressDisplay() as progress:
        result = run_shards(args.src, args.out, options, progress=progress.update)
    print_summary(result)
    if result.failures:
        for name, err in result.failures:
            print(f"p2p shard: error: {name}: {err}", file=sys.stderr)
        print(f"p2p shard: {len(result.failures)} shard(s) failed; run the same command again to finish them",
              file=sys.stderr)
        return 1
    result.check_usable()
    return 0


class ProgressDisplay:
    """A rich progress bar on a terminal; elsewhere (Slurm logs, pipes) one plain line on
    stderr every `every` seconds, so logs show progress without bar redraws. Starts at the
    first update, i.e. once the library has forked its workers (no bar thread across a fork)."""

    def __init__(self, every: float = 30.0):
        self.every = every
        self.bar = None
        self.started = False

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        if self.bar is not None:
            self.bar.stop()

    def _start(self, total: int) -> None:
        from rich.console import Console

        self.started = True
        self.t0 = self.last = time.perf_counter()
        console = Console(stderr=True)
        if console.is_terminal:
            from rich.progress import (BarColumn, MofNCompleteColumn, Progress, TextColumn,
                                       TimeElapsedColumn, TimeRemainingColumn)

            self.bar = Progress(TextColumn("[bold]sharding"), BarColumn(), MofNCompleteColumn(),
                                TextColumn("images"), TimeElapsedColumn(), TimeRemainingColumn(),
                                console=console)
            self.bar.start()
            self.task = self.bar.add_task("shard", total=total)

    def update(self, done: int, total: int) -> None:
        if not self.started:
            self._start(total)
        if self.bar is not None:
            self.bar.update(self.task, completed=done)
            return
        now = time.perf_counter()
        if now - self.last >= self.every:
            self.last = now
            rate = done / max(now - self.t0, 1e-9)
            left = (total - done) / rate if rate > 0 else float("nan")
            print(f"p2p shard: {done:,}/{total:,} images, {rate:,.0f}/s, about {left / 60:,.1f} min left",
                  file=sys.stderr, flush=True)


def print_summary(result: ShardRun) -> None:
    """The summary table on stdout (paths are escaped: rich would read [..] as markup)."""
    from rich.console import Console
    from rich.markup import escape
    from rich.table import Table

    m, out = result.manifest, result.out
    console = Console(highlight=False)
    table = Table(title=f"p2p shard -> {escape(str(out))}", title_justify="left")
    for col in ("split", "images", "shards", "MB", "images/shard"):
        table.add_column(col, justify="left" if col == "split" else "right")
    for split in SPLITS:
        s = m[split]
        n = len(s["shards"])
        table.add_row(split, f"{s['count']:,}", f"{n:,}", f"{s['bytes'] / 1e6:,.1f}",
                      f"{s['count'] / n:,.0f}" if n else "-")
    console.print(table)
    if m["skipped_counts"]:
        sk = Table(title="skipped", title_justify="left")
        sk.add_column("reason")
        sk.add_column("files", justify="right")
        sk.add_column("example")
        for reason, n in m["skipped_counts"].items():
            ex = next(r for r in m["skipped"] if r["reason"] == reason)
            sk.add_row(reason, f"{n:,}", escape(f"{ex['path']} ({ex['detail']})"))
        console.print(sk)
    r = m["run"]
    if r["images_per_s"]:
        busy = max(1, min(r["workers"], r["shards_written"]))
        rate = f"{r['images_per_s']:,.1f} images/s ({r['images_per_s'] / busy:,.1f} per worker, {busy} workers)"
    else:
        rate = "nothing to write"
    console.print(f"{r['images_written']:,} images in {r['shards_written']} shards written, "
                  f"{r['shards_reused']} complete shards kept, in {r['seconds']:.1f} s: {rate}; "
                  f"manifest {out / MANIFEST}", markup=False)
    if m["ignored"]:
        console.print(f"not used (outside the split folders): {', '.join(m['ignored'])}", markup=False)
    if m["renamed_keys"]:
        console.print(f"{len(m['renamed_keys'])} keys renamed (dots/spaces -> _): see renamed_keys in the manifest")
    if not m["complete"]:
        console.print(f"INCOMPLETE: {len(result.failures)} shard(s) failed; run the same command again")
