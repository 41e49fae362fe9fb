"""The shard plan and what OUT already holds.

The plan is deterministic: each split's items sorted, shuffled by --seed, cut into shards of a
fixed number of images estimated to reach --shard-size-mb. A shard's plan hash covers the
options and its items, so a second run with the same options recognises complete shards (same
hash, same sizes) and writes only what is missing; a run with other options finds another
fingerprint in OUT and needs --force.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import re
from dataclasses import dataclass
from pathlib import Path

from p2p.data.shards.catalog import remove_counts_file
from p2p.data.shards.format import FORMAT, FORMAT_VERSION, MANIFEST, SHARD_FILE, SPLITS, shard_stem
from p2p.data.shards.index import read_index_count
from p2p.data.shards.scan import Item
from p2p.errors import UsageError


@dataclass(frozen=True)
class OutputOptions:
    """Everything that changes the bytes written: `as_dict()` is the manifest's and every
    sidecar's `options`, the fingerprint checked on resume."""

    task: str
    size: int
    quality: int
    upscale_small: bool
    seed: int
    val_fraction: float | None
    shard_size_mb: float
    split_mode: str  # "folders" (train/ val/ or --val-dir) or "hash"
    paired: str | None  # None, "side_by_side" or "folders"
    format_version: int = FORMAT_VERSION

    def as_dict(self) -> dict:
        return dict(self.__dict__)


@dataclass
class ShardTask:
    """One shard to write: its place, its items in stored order, and its plan hash."""

    split: str
    index: int
    items: list[Item]
    folder: str
    opts: OutputOptions
    plan: str = ""

    @property
    def stem(self) -> str:
        return shard_stem(self.index)


def estimate_sample_bytes(size: int, quality: int, paired: bool) -> int:
    """Bytes one stored sample takes in a tar, estimated from the stored pixels: JPEG of photos
    resized to short side `size` (4:3 assumed; paired: 2:1) at `quality`, plus the json and
    three 512-byte blocks of headers and padding. Measured on the scikit-image photos."""
    pixels = size * size * (2.0 if paired else 4.0 / 3.0)
    # bytes per pixel at short side 286 of the busiest scikit-image photos (motorcycle,
    # immunohistochemistry; COCO scenes are as busy), 4:4:4 from q 90 on; 200 COCO-like
    # 640x480 crops give about 0.5 at q 95, so shards may come out somewhat under the target
    table = [(50, 0.17), (75, 0.26), (85, 0.35), (89, 0.41), (90, 0.54), (95, 0.75), (100, 1.8)]
    q = min(max(quality, table[0][0]), table[-1][0])
    for (q0, b0), (q1, b1) in zip(table, table[1:]):
        if q0 <= q <= q1:
            bpp = b0 + (b1 - b0) * (q - q0) / (q1 - q0)
            break
    return int(pixels * bpp) + 3 * 512 + 256


def images_per_shard(o: OutputOptions) -> int:
    return max(1, int(o.shard_size_mb * 1e6 // estimate_sample_bytes(o.size, o.quality, o.paired is not None)))


def plan_shards(items: dict[str, list[Item]], out: Path, o: OutputOptions) -> list[ShardTask]:
    """Every shard of every split, in split then index order."""
    per = images_per_shard(o)
    fp = json.dumps(o.as_dict(), sort_keys=True)
    tasks = []
    for split in SPLITS:
        mine = sorted(items.get(split, []))
        random.Random(f"p2p-shard/{o.seed}/{split}").shuffle(mine)
        folder = str(out / split)
        for i in range(0, len(mine), per):
            chunk = mine[i : i + per]
            h = hashlib.sha256(fp.encode())
            for key, shown, _, shown_b, _ in chunk:
                h.update(f"\0{key}\0{shown}\0{shown_b}".encode("utf-8", "surrogateescape"))
            tasks.append(ShardTask(split, i // per, chunk, folder, o, h.hexdigest()[:24]))
    return tasks


# ---- what OUT already holds -------------------------------------------------------------------


def existing_options(out: Path) -> dict | None:
    """The options OUT's shards were written with (manifest, else any sidecar), or None."""
    mpath = out / MANIFEST
    if mpath.exists():
        try:
            m = json.loads(mpath.read_text(encoding="utf-8"))
        except (OSError, ValueError, RecursionError):
            m = None
        if not isinstance(m, dict) or m.get("format") != FORMAT:
            raise UsageError(f"{mpath} exists and is not a p2p shard manifest; choose another OUT")
        return m.get("options")
    for _, path, m in _our_files(out):
        if m.group(2) == "meta.json" and not m.group(3):
            try:
                meta = json.loads(path.read_text(encoding="utf-8"))
            except (OSError, ValueError, RecursionError):
                continue
            if isinstance(meta, dict):
                return meta.get("options")
    return None


def _our_files(out: Path) -> list[tuple[str, Path, re.Match]]:
    """(split, path, SHARD_FILE match) of every shard file in OUT's split folders, by name."""
    found = []
    for split in SPLITS:
        d = out / split
        if d.is_dir():
            found += [(split, d / name, m) for name in sorted(os.listdir(d)) if (m := SHARD_FILE.match(name))]
    return found


def check_options(out: Path, o: OutputOptions, force: bool) -> None:
    """Raise UsageError when OUT holds shards written with other options (unless `force`)."""
    old = existing_options(out)
    if old is not None and old != o.as_dict() and not force:
        diff = ", ".join(f"{k} {old.get(k)!r} -> {v!r}" for k, v in o.as_dict().items() if old.get(k) != v)
        raise UsageError(f"{out} holds shards written with other options ({diff}); "
                         "add --force to rewrite them, or choose another OUT")


def clean(out: Path, tasks: list[ShardTask], everything: bool) -> None:
    """Remove temporary files, and shard files that the plan has no place for (or all of
    our files with `everything`)."""
    planned = {(t.split, t.index) for t in tasks}
    for split, path, m in _our_files(out):
        if everything or m.group(3) or (split, int(m.group(1))) not in planned:
            os.remove(path)
    if everything and (out / MANIFEST).exists():
        os.remove(out / MANIFEST)
        remove_counts_file(out)


def complete_meta(t: ShardTask) -> dict | None:
    """The sidecar of a shard already written by this plan, else None."""
    d = Path(t.folder)
    try:
        meta = json.loads((d / f"{t.stem}.meta.json").read_text(encoding="utf-8"))
    except (OSError, ValueError, RecursionError):
        return None
    if not isinstance(meta, dict) or meta.get("plan") != t.plan or meta.get("options") != t.opts.as_dict():
        return None
    if meta.get("count", 0) == 0:
        return meta
    try:
        ok = (os.path.getsize(d / f"{t.stem}.tar") == meta["bytes"]
              and read_index_count(d / f"{t.stem}.idx") == meta["count"])
    except (OSError, ValueError, KeyError, TypeError):
        return None
    return meta if ok else None


class OutputLock:
    """An exclusive flock on OUT/.p2p-shard.lock: two runs never write one OUT at once.
    Released by the kernel when the process dies. File systems without flock: no lock."""

    def __init__(self, path: Path):
        self.path = path
        self.fd = None

    def __enter__(self):
        try:
            import fcntl
        except ImportError:
            return self
        self.fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(self.fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(self.fd)
            self.fd = None
            raise UsageError(f"another p2p shard is writing {self.path.parent} (lock {self.path})") from None
        except OSError:
            pass  # no flock support (some network file systems): go on unlocked
        return self

    def __exit__(self, *exc):
        if self.fd is not None:
            os.close(self.fd)
            self.fd = None
