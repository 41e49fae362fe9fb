"""WebDataset shards of an image folder, for the wds and dali loaders: the library behind
`p2p shard SRC OUT` (the command, p2p.cli.shard, only parses, shows progress and prints).

    make_shards(src, out, size=64, val_fraction=0.2)   shard in-process; returns the manifest
    read_manifest(out), shard_files(out, split)        what loaders read

How a run goes, one module a step:

    scan      SRC -> splits (train/ val/ folders, --val-dir, or a hash of the key) -> items
    plan      items -> shards of a fixed size, shuffled by --seed; what OUT already holds
    encode    one item -> JPEG bytes (decode once, EXIF, RGB, short side to --size, Lanczos)
    write     shards -> tar + DALI index + sidecar each, over a process pool; the manifest
    format    the names, the manifest, sample keys, the val split rule, skip reasons
    index     DALI's index files (wds2idx v1.2)
    catalog   manifest.counts (the shard lists, compact) and a split as readers hold it

Keys are the source path relative to SRC (or to SRC/train, SRC/val, the A folder) without its
extension, `/` kept, so COCO ids survive (`000000391895`). Dots and whitespace become `_`
(WebDataset splits keys at the first dot; DALI's index splits on whitespace); such renames are
listed in the manifest under `renamed_keys`. Faults are skipped and recorded with a reason,
never fatal. The library reports progress through a callback and never prints.
"""

from __future__ import annotations

import dataclasses
import json
import os
import time
from dataclasses import dataclass
from pathlib import Path

from p2p.atomic import write_text
from p2p.data.shards.catalog import remove_counts_file, write_counts_file
from p2p.data.shards.format import MANIFEST, read_manifest, shard_files
from p2p.data.shards.plan import OutputLock, OutputOptions, check_options, clean, complete_meta, plan_shards
from p2p.data.shards.scan import DEFAULT_VAL_FRACTION, scan
from p2p.data.shards.write import Progress, build_manifest, sidecar_usable, write_shards
from p2p.errors import UsageError
from p2p.specs.tasks import TASKS

__all__ = ["ShardOptions", "ShardRun", "make_shards", "run_shards", "read_manifest", "shard_files",
           "DEFAULT_SIZE", "DEFAULT_VAL_FRACTION", "DEFAULT_SHARD_MB", "DEFAULT_QUALITY"]

DEFAULT_SIZE = 286
DEFAULT_SHARD_MB = 64.0
DEFAULT_QUALITY = 95


@dataclass(frozen=True)
class ShardOptions:
    """What `p2p shard` takes besides SRC and OUT, one field per flag; checked on creation."""

    task: str = "colorize"
    """colorize skips grayscale images; paired stores A|B images with size x size halves"""
    size: int = DEFAULT_SIZE
    """short side after resizing (the pix2pix load size); paired: each half is size x size"""
    val_fraction: float | None = None
    """share of keys held out for val by a hash of the key (None: DEFAULT_VAL_FRACTION)"""
    val_dir: str | os.PathLike | None = None
    """a separate folder for the val split (SRC is then all train)"""
    b_dir: str | os.PathLike | None = None
    """task paired: the B folder matched to SRC by relative path"""
    seed: int = 0
    """shuffles which shard an image goes to and the order inside shards"""
    workers: int | None = None
    """worker processes (None: every core this process may use)"""
    shard_size_mb: float = DEFAULT_SHARD_MB
    """target shard size; images per shard are fixed up front from an estimate"""
    quality: int = DEFAULT_QUALITY
    """JPEG quality of the stored images (>= 90: 4:4:4 chroma, else 4:2:0)"""
    upscale_small: bool = False
    """upscale images whose short side is below size (else skip and record them)"""
    label_nc: int | None = None
    """task labels: skip maps with an id >= label_nc (None: ids up to 254 are stored)"""
    force: bool = False
    """delete the shards in OUT and rewrite them (needed when options changed)"""

    def __post_init__(self):
        if self.task not in TASKS:
            raise UsageError(f"--task {self.task!r} is not one of {', '.join(TASKS.names())}")
        if self.size < 8:
            raise UsageError(f"--size {self.size} is too small (at least 8)")
        if not 1 <= self.quality <= 100:
            raise UsageError(f"--quality {self.quality} must be within 1..100")
        if self.shard_size_mb <= 0:
            raise UsageError(f"--shard-size-mb {self.shard_size_mb} must be positive")
        if self.val_fraction is not None and not 0.0 <= self.val_fraction < 1.0:
            raise UsageError(f"--val-fraction {self.val_fraction} must be within [0, 1)")
        if self.workers is not None and self.workers < 1:
            raise UsageError(f"--workers {self.workers} must be at least 1")
        if self.b_dir is not None:
            if not TASKS[self.task].image_pairs:
                raise UsageError("--b-dir pairs two folders of images: it needs a paired task (--task "
                                 + " or ".join(s.name for s in TASKS if s.image_pairs) + ")")
            if not Path(self.b_dir).is_dir():
                raise UsageError(f"--b-dir {self.b_dir} is not a folder")
        if self.label_nc is not None and (TASKS[self.task].input_kind != "labels" or not 1 <= self.label_nc <= 255):
            raise UsageError(f"--label-nc {self.label_nc}: only with --task labels, within 1..255")
        if self.val_dir is not None and not Path(self.val_dir).is_dir():
            raise UsageError(f"--val-dir {self.val_dir} is not a folder")


@dataclass(frozen=True)
class ShardRun:
    """What a run did: the manifest it wrote, and the shards that failed."""

    src: str  # SRC as given
    out: Path
    found: int  # image files (or pairs) found under SRC
    manifest: dict
    failures: list[tuple[str, str]]  # ("train/shard-000001", error) of every shard that failed

    def check_usable(self) -> None:
        """Raise UsageError when every image found was skipped (the manifest says why)."""
        m = self.manifest
        if m["train"]["count"] + m["val"]["count"] == 0:
            counts = ", ".join(f"{r} {n}" for r, n in m["skipped_counts"].items())
            raise UsageError(f"no usable images in {self.src}: all {self.found} skipped ({counts}); "
                             f"details in {self.out / MANIFEST}")


def run_shards(src: str | os.PathLike, out: str | os.PathLike, options: ShardOptions,
               progress: Progress | None = None) -> ShardRun:
    """Write the shards of SRC into OUT that are not there yet, then the manifest. Raises
    UsageError (before writing anything) for a bad SRC/OUT or a layout the options contradict;
    a shard that fails is in the result's `failures`, not raised."""
    t0 = time.perf_counter()
    src, out = os.fspath(src), Path(out)
    _check_paths(Path(src), out)
    o = options
    if TASKS[o.task].input_kind == "labels":  # pix2pixHD's layout and two members per sample (p2p.data.shards.labels)
        from p2p.data.shards.labels import label_options, scan_labels

        found = scan_labels(src, out, o.val_dir, o.val_fraction)
    else:
        found = scan(src, out, o.task, o.b_dir, o.val_dir, o.val_fraction)
    opts = OutputOptions(o.task, o.size, o.quality, bool(o.upscale_small), o.seed, found.val_fraction,
                         float(o.shard_size_mb), found.split_mode, found.paired)
    if TASKS[o.task].input_kind == "labels":
        opts = label_options(opts, o.label_nc, found)
    if found.found == 0:
        from p2p.data.images import IMAGE_EXTS

        what = "image pairs" if found.paired == "folders" else "image files"
        raise UsageError(f"no {what} found under {src} ({len(found.skipped)} other entries skipped, "
                         f"image extensions: {' '.join(sorted(IMAGE_EXTS))})")
    tasks = plan_shards(found.items, out, opts)

    out.mkdir(parents=True, exist_ok=True)
    with OutputLock(out / ".p2p-shard.lock"):
        check_options(out, opts, o.force)
        clean(out, tasks, everything=o.force)
        done: dict[tuple[str, int], dict] = {}
        todo = []
        for t in tasks:
            meta = complete_meta(t)
            if meta is None or not sidecar_usable(meta):
                todo.append(t)
            else:
                done[(t.split, t.index)] = meta
        if todo and (out / MANIFEST).exists():
            os.remove(out / MANIFEST)  # a manifest exists only while it matches the files
            remove_counts_file(out)
        workers = o.workers or _usable_cores()
        t_work = time.perf_counter()
        results, failures = write_shards(todo, workers, progress)
        seconds = time.perf_counter() - t_work
        for meta in results:
            done[(meta["split"], meta["index"])] = meta
        written = sum(done[(t.split, t.index)]["count"] for t in todo if (t.split, t.index) in done)
        run = {
            "workers": workers,
            "shards_written": len(todo) - len(failures),
            "shards_reused": len(tasks) - len(todo),
            "shards_failed": len(failures),
            "images_written": written,
            "seconds": round(seconds, 3),
            "images_per_s": round(written / seconds, 1) if seconds > 0 and written else None,
            "total_seconds": round(time.perf_counter() - t0, 3),
        }
        paths = {"source": os.path.abspath(src),
                 "b_dir": os.path.abspath(o.b_dir) if o.b_dir else None,
                 "val_dir": os.path.abspath(o.val_dir) if o.val_dir else None}
        manifest = build_manifest(opts, tasks, done, found, paths, run)
        text = json.dumps(manifest, indent=1, ensure_ascii=False) + "\n"
        write_text(out / MANIFEST, text)
        write_counts_file(out, manifest, text.encode("utf-8"))  # the readers' compact copy of the shard lists
    return ShardRun(src, out, found.found, manifest, [(f"{t.split}/{t.stem}", err) for t, err in failures])


def make_shards(src: str | os.PathLike, out: str | os.PathLike, options: ShardOptions | None = None, *,
                progress: Progress | None = None, **fields) -> dict:
    """Shard SRC into OUT in-process and return the manifest. `fields` set ShardOptions fields
    (task="paired", size=64, ...), over `options` when both are given. Raises UsageError like
    the command, and RuntimeError when a shard failed (run it again to finish)."""
    fields.pop("quiet", None)  # the old API's switch: the library never prints
    names = {f.name for f in dataclasses.fields(ShardOptions)}
    for k in fields:
        if k not in names:
            raise TypeError(f"unknown option {k!r}")
    options = dataclasses.replace(options, **fields) if options is not None else ShardOptions(**fields)
    result = run_shards(src, out, options, progress)
    if result.failures:
        listed = "; ".join(f"{name}: {err}" for name, err in result.failures)
        raise RuntimeError(f"p2p shard: {len(result.failures)} shard(s) failed ({listed}); "
                           "run the same call again to finish them")
    result.check_usable()
    return result.manifest


def _check_paths(src: Path, out: Path) -> None:
    if not src.exists():
        raise UsageError(f"SRC {src} does not exist")
    if not src.is_dir():
        raise UsageError(f"SRC {src} is not a folder")
    if out.exists() and not out.is_dir():
        raise UsageError(f"OUT {out} exists and is not a folder")


def _usable_cores() -> int:
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # not Linux
        return max(1, os.cpu_count() or 1)
