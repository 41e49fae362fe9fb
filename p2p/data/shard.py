"""`p2p shard SRC OUT`: pack an image folder (e.g. COCO train2017) into WebDataset shards that
the WebDataset and DALI loaders read at full speed.

Every image is decoded once (PIL), EXIF-rotated, converted to RGB, resized with Lanczos so its
SHORT side is --size (the pix2pix load size; the loader crops later) and stored as JPEG at
--quality (4:4:4 chroma for quality >= 90: colorization learns chroma, and 4:2:0 would halve
its resolution). Paired A|B data is stored as one side-by-side image per sample whose halves
are each size x size (the stored image is 2*size wide, size high).

Layout of OUT::

    OUT/manifest.json                      options, counts per split and shard, sizes, skipped files;
                                           written last, `complete` false if a shard failed
    OUT/train/shard-000000.tar             <key>.jpg + <key>.json per sample (plain USTAR/GNU tar, no PAX)
    OUT/train/shard-000000.idx             DALI's index (wds2idx format v1.2)
    OUT/train/shard-000000.meta.json       sidecar: the shard's plan hash, counts, skipped files
    OUT/val/...

Keys are the source path relative to SRC (or to SRC/train, SRC/val, the A folder) without its
extension, `/` kept, so COCO ids survive (`000000391895`). Dots and whitespace become `_`
(WebDataset splits keys at the first dot; DALI's index splits on whitespace); such renames are
listed in the manifest under `renamed_keys`.

The plan is deterministic: the sorted file list, split by a hash of the key (or by SRC's own
train/ and val/ folders), shuffled by --seed, cut into shards of a fixed number of images
estimated to reach --shard-size-mb. Each worker writes whole shards to a temporary name,
fsyncs and renames them, then writes the index and the sidecar the same way. A second run with
the same options therefore skips complete shards and writes only what is missing; a run with
different options needs --force. Faults (unreadable, truncated, empty, non-image, grayscale for
colorize, too small) are skipped and recorded with a reason, never fatal.

The Python API for loaders: `read_manifest(out_dir)` and `shard_files(out_dir, split)`;
`make_shards(src, out, **options)` runs the command in-process and returns the manifest.
"""

from __future__ import annotations

import argparse
import hashlib
import io
import json
import os
import random
import re
import sys
import tarfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from p2p.atomic import fsync_dir, write_bytes, write_text
from p2p.errors import UsageError

FORMAT = "p2p-wds-shards"
FORMAT_VERSION = 1
MANIFEST = "manifest.json"
SPLITS = ("train", "val")
TASKS = ("colorize", "gray2rgb", "paired", "restore")
IMAGE_EXTS = frozenset(
    ".jpg .jpeg .jpe .jfif .png .bmp .gif .tif .tiff .webp .ppm .pgm .pbm .pnm .tga".split()
)
DEFAULT_SIZE = 286
DEFAULT_VAL_FRACTION = 0.01
DEFAULT_SHARD_MB = 64.0
DEFAULT_QUALITY = 95
GRAY_TOLERANCE = 3  # max |R-G|, |G-B| (0..255) at or below which an RGB image counts as gray
MAX_ASPECT = 10.0  # long/short side above this is skipped (a strip, not a photo)
GRAY_MODES = frozenset(("1", "L", "LA", "La", "I", "I;16", "I;16L", "I;16B", "I;16N", "F"))
_SHARD_RE = re.compile(r"^shard-(\d{6})\.(tar|idx|meta\.json)(\.tmp)?$")
_KEY_BAD = re.compile(r"[.\s\x00-\x1f\x7f]")

# Skip reasons (manifest `skipped[].reason`), each with what it means.
REASONS = {
    "empty": "zero-byte file",
    "unreadable": "cannot be opened or listed (permissions, I/O error, broken link)",
    "not_image": "content is not an image PIL can identify",
    "not_image_ext": "file extension is not an image extension (not opened)",
    "hidden": "name starts with a dot (hidden file or folder; not opened)",
    "truncated": "image data ends early",
    "decode_error": "image data is corrupt or in an unsupported variant",
    "too_large": "more pixels than PIL's decompression-bomb limit",
    "too_small": "short side below --size (use --upscale-small to keep it)",
    "extreme_aspect": f"long side more than {MAX_ASPECT:g}x the short side",
    "grayscale": "no colour to learn (--task colorize only)",
    "not_side_by_side": "paired image narrower than tall: not two halves A|B",
    "unpaired": "no partner with the same relative path in the other folder",
    "duplicate_key": "another file maps to the same sample key",
}


# --------------------------------------------------------------------------------------------
# command line


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("src", metavar="SRC", help="image folder (searched recursively); with train/ and "
                   "val/ subfolders those are the splits; --task paired: A|B images, or A/ and B/ folders")
    p.add_argument("out", metavar="OUT", help="output folder: OUT/{train,val}/shard-NNNNNN.{tar,idx} + manifest.json")
    p.add_argument("--task", choices=TASKS, default="colorize",
                   help="colorize (default) skips grayscale images; paired stores A|B images with size x size halves")
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
    p.add_argument("--upscale-small", action="store_true",
                   help="upscale images whose short side is below --size (default: skip and record them)")
    p.add_argument("--force", action="store_true",
                   help="delete the shards in OUT and rewrite them (needed when options changed)")


def run(args: argparse.Namespace) -> int:
    return _Run(args).main()


def make_shards(src: str | os.PathLike, out: str | os.PathLike, **options: Any) -> dict:
    """Run `p2p shard` in-process with keyword options (task="paired", size=64, ...).
    Returns the manifest. Raises UsageError like the command."""
    p = argparse.ArgumentParser()
    add_arguments(p)
    args = p.parse_args([os.fspath(src), os.fspath(out)])
    for k, v in options.items():
        if not hasattr(args, k):
            raise TypeError(f"unknown option {k!r}")
        setattr(args, k, v)
    args.quiet = options.get("quiet", True)
    rc = run(args)
    if rc != 0:
        raise RuntimeError(f"p2p shard failed with exit code {rc}")
    return read_manifest(out)


# --------------------------------------------------------------------------------------------
# API for loaders


def read_manifest(out_dir: str | os.PathLike) -> dict:
    """The manifest of a shard folder (OUT/manifest.json). Raises FileNotFoundError when it is
    missing, ValueError when it is not a p2p shard manifest."""
    path = Path(out_dir) / MANIFEST
    with open(path, encoding="utf-8") as f:
        m = json.load(f)
    if not isinstance(m, dict) or m.get("format") != FORMAT:
        raise ValueError(f"{path} is not a p2p shard manifest (no format={FORMAT!r})")
    return m


def shard_files(out_dir: str | os.PathLike, split: str = "train") -> list[tuple[str, str]]:
    """(tar path, idx path) of every non-empty shard of a split, in order, from the manifest."""
    m = read_manifest(out_dir)
    base = Path(out_dir) / split
    return [(str(base / s["file"]), str(base / s["index"])) for s in m[split]["shards"]]


# --------------------------------------------------------------------------------------------
# options, sources, plan


@dataclass(frozen=True)
class Options:
    """Everything that changes the bytes written (the fingerprint checked on resume)."""

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
class Source:
    """One split's input: a folder, or an A and a B folder matched by relative path."""

    a: Path
    b: Path | None = None


# A planned sample: (key, shown path of A, absolute path of A, shown path of B, abs path of B)
Item = tuple


@dataclass
class ShardTask:
    split: str
    index: int
    items: list
    folder: str
    opts: Options
    plan: str = ""

    @property
    def stem(self) -> str:
        return f"shard-{self.index:06d}"


def _skip_rec(path: str, reason: str, detail: str = "") -> dict:
    return {"path": path, "reason": reason, "detail": detail or REASONS.get(reason, "")}


def sample_key(rel_stem: str) -> str:
    """The WebDataset key of a relative path without extension: `.`, whitespace and control
    characters become `_` (WebDataset/DALI split at the first dot; DALI's index on spaces)."""
    return _KEY_BAD.sub("_", rel_stem)


def hash_unit(key: str) -> float:
    """A number in [0, 1) from the key alone (stable across runs, machines, --workers, --seed)."""
    return int.from_bytes(hashlib.sha1(key.encode("utf-8")).digest()[:8], "big") / 2.0**64


def _has_splits(d: Path) -> bool:
    return (d / "train").is_dir() and (d / "val").is_dir()


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


class _Run:
    def __init__(self, args: argparse.Namespace):
        self.args = args
        self.quiet = bool(getattr(args, "quiet", False))
        self.t0 = time.perf_counter()

    # ---- setup -----------------------------------------------------------------------------

    def _validate(self) -> None:
        a = self.args
        if a.size < 8:
            raise UsageError(f"--size {a.size} is too small (at least 8)")
        if not 1 <= a.quality <= 100:
            raise UsageError(f"--quality {a.quality} must be within 1..100")
        if a.shard_size_mb <= 0:
            raise UsageError(f"--shard-size-mb {a.shard_size_mb} must be positive")
        if a.val_fraction is not None and not 0.0 <= a.val_fraction < 1.0:
            raise UsageError(f"--val-fraction {a.val_fraction} must be within [0, 1)")
        if a.workers is not None and a.workers < 1:
            raise UsageError(f"--workers {a.workers} must be at least 1")
        src = Path(a.src)
        if not src.exists():
            raise UsageError(f"SRC {src} does not exist")
        if not src.is_dir():
            raise UsageError(f"SRC {src} is not a folder")
        out = Path(a.out)
        if out.exists() and not out.is_dir():
            raise UsageError(f"OUT {out} exists and is not a folder")
        if a.b_dir is not None:
            if a.task != "paired":
                raise UsageError("--b-dir pairs two folders of images: it needs --task paired")
            if not Path(a.b_dir).is_dir():
                raise UsageError(f"--b-dir {a.b_dir} is not a folder")
        if a.val_dir is not None and not Path(a.val_dir).is_dir():
            raise UsageError(f"--val-dir {a.val_dir} is not a folder")

    def _source(self, root: Path, b: Path | None) -> Source:
        if b is not None:
            return Source(root, b)
        if self.args.task == "paired" and (root / "A").is_dir() and (root / "B").is_dir():
            return Source(root / "A", root / "B")
        return Source(root)

    def _resolve_splits(self) -> tuple[str, dict[str, Source], list[str]]:
        """(split mode, {split: Source}, names of SRC entries left out)."""
        a = self.args
        src = Path(a.src)
        b = Path(a.b_dir) if a.b_dir else None
        explicit_vf = a.val_fraction is not None
        if a.val_dir is not None:
            if b is not None:
                raise UsageError("--val-dir with --b-dir is not supported: arrange A/{train,val} and "
                                 "B/{train,val} (or SRC/{train,val}/{A,B}) instead")
            if _has_splits(src):
                raise UsageError(f"SRC {src} has train/ and val/ folders; drop --val-dir")
            if explicit_vf:
                raise UsageError("--val-dir gives the val split; drop --val-fraction")
            return "folders", {"train": self._source(src, None), "val": self._source(Path(a.val_dir), None)}, []
        if _has_splits(src):
            if explicit_vf:
                raise UsageError(f"SRC {src} has train/ and val/ folders, which are the splits; "
                                 "drop --val-fraction")
            if b is not None and not _has_splits(b):
                raise UsageError(f"SRC has train/ and val/ folders but --b-dir {b} does not")
            ignored = self._ignored(src, SPLITS)
            return "folders", {s: self._source(src / s, b / s if b else None) for s in SPLITS}, ignored
        if (a.task == "paired" and b is None and (src / "A").is_dir() and (src / "B").is_dir()
                and _has_splits(src / "A") and _has_splits(src / "B")):
            if explicit_vf:
                raise UsageError("A/ and B/ have train/ and val/ folders, which are the splits; "
                                 "drop --val-fraction")
            ignored = self._ignored(src, ("A", "B"))
            return "folders", {s: Source(src / "A" / s, src / "B" / s) for s in SPLITS}, ignored
        return "hash", {"all": self._source(src, b)}, []

    def _ignored(self, src: Path, used: tuple) -> list[str]:
        """Entries of SRC besides the split folders (left out; listed in the manifest)."""
        out_real = os.path.realpath(self.args.out)
        return sorted(e.name for e in os.scandir(src)
                      if e.name not in used and not e.name.startswith(".")
                      and os.path.realpath(e.path) != out_real)

    def _shown(self, path: str) -> str:
        """A path as the manifest shows it: relative to SRC when inside, else absolute."""
        rel = os.path.relpath(path, self.src_real)
        if rel == os.pardir or rel.startswith(os.pardir + os.sep):
            return os.path.abspath(path)
        return rel.replace(os.sep, "/")

    def _scan(self, root: Path) -> list[tuple[str, str]]:
        """(path relative to root with '/', absolute path) of every image-extension file under
        root, sorted; other files are recorded as skipped. Follows links, once per folder."""
        found: list[tuple[str, str]] = []
        seen: set[str] = set()
        stack = [(os.path.abspath(root), "")]
        while stack:
            d, rel_d = stack.pop()
            real = os.path.realpath(d)
            if real in seen or real in self.exclude:
                continue
            seen.add(real)
            try:
                entries = list(os.scandir(d))
            except OSError as e:
                self.skipped.append(_skip_rec(self._shown(d), "unreadable", f"cannot list folder: {e.strerror}"))
                continue
            for e in entries:
                rel = rel_d + e.name
                if e.name.startswith("."):
                    self.skipped.append(_skip_rec(self._shown(e.path), "hidden"))
                    continue
                try:
                    if e.is_dir():
                        stack.append((e.path, rel + "/"))
                        continue
                    is_file = e.is_file()
                except OSError:
                    is_file = False
                if not is_file:
                    self.skipped.append(_skip_rec(self._shown(e.path), "unreadable",
                                                  "not a regular file (broken link, device, fifo)"))
                elif os.path.splitext(e.name)[1].lower() in IMAGE_EXTS:
                    found.append((rel, e.path))
                else:
                    self.skipped.append(_skip_rec(self._shown(e.path), "not_image_ext"))
        found.sort()
        return found

    def _keyed(self, files: list[tuple[str, str]]) -> dict[str, tuple[str, str, str]]:
        """{raw stem: (key, rel, abs path)}; duplicate stems or keys are recorded as skipped."""
        by_stem: dict[str, tuple[str, str, str]] = {}
        by_key: dict[str, str] = {}
        for rel, path in files:
            stem = os.path.splitext(rel)[0]
            key = sample_key(stem)
            if key in by_key:
                self.skipped.append(_skip_rec(self._shown(path), "duplicate_key",
                                              f"key {key!r} is already taken by {self._shown(by_key[key])}"))
                continue
            by_key[key] = path
            by_stem[stem] = (key, rel, path)
            if key != stem:
                self.renamed[self._shown(path)] = key
        return by_stem

    def _items(self, source: Source) -> list[Item]:
        a = self._keyed(self._scan(source.a))
        if source.b is None:
            return [(key, self._shown(path), path, None, None) for key, _, path in a.values()]
        b = self._keyed(self._scan(source.b))
        items = []
        for stem, (key, _, path) in a.items():
            if stem in b:
                pb = b[stem][2]
                items.append((key, self._shown(path), path, self._shown(pb), pb))
            else:
                self.skipped.append(_skip_rec(self._shown(path), "unpaired", f"no {stem}.* in {source.b}"))
        for stem, (_, _, path) in b.items():
            if stem not in a:
                self.skipped.append(_skip_rec(self._shown(path), "unpaired", f"no {stem}.* in {source.a}"))
        return items

    def _plan(self, by_split: dict[str, list[Item]]) -> list[ShardTask]:
        o = self.opts
        per = max(1, int(o.shard_size_mb * 1e6 // estimate_sample_bytes(o.size, o.quality, o.paired is not None)))
        self.per_shard = per
        fp = json.dumps(o.as_dict(), sort_keys=True)
        tasks = []
        for split in SPLITS:
            items = sorted(by_split.get(split, []))
            random.Random(f"p2p-shard/{o.seed}/{split}").shuffle(items)
            folder = str(self.out / split)
            for i in range(0, len(items), per):
                chunk = items[i : i + per]
                h = hashlib.sha256(fp.encode())
                for key, shown, _, shown_b, _ in chunk:
                    h.update(f"\0{key}\0{shown}\0{shown_b}".encode("utf-8", "surrogateescape"))
                tasks.append(ShardTask(split, i // per, chunk, folder, o, h.hexdigest()[:24]))
        return tasks

    # ---- existing output -----------------------------------------------------------------

    def _existing_options(self) -> dict | None:
        mpath = self.out / MANIFEST
        if mpath.exists():
            try:
                m = json.loads(mpath.read_text(encoding="utf-8"))
            except (OSError, ValueError):
                m = None
            if not isinstance(m, dict) or m.get("format") != FORMAT:
                raise UsageError(f"{mpath} exists and is not a p2p shard manifest; choose another OUT")
            return m.get("options")
        for split in SPLITS:
            d = self.out / split
            if not d.is_dir():
                continue
            for name in sorted(os.listdir(d)):
                if name.endswith(".meta.json") and _SHARD_RE.match(name):
                    try:
                        return json.loads((d / name).read_text(encoding="utf-8")).get("options")
                    except (OSError, ValueError):
                        continue
        return None

    def _clean(self, tasks: list[ShardTask], everything: bool) -> None:
        """Remove temporary files, and shard files that the plan has no place for (or all of
        our files with `everything`)."""
        planned = {(t.split, t.index) for t in tasks}
        for split in SPLITS:
            d = self.out / split
            if not d.is_dir():
                continue
            for name in os.listdir(d):
                m = _SHARD_RE.match(name)
                if m and (everything or m.group(3) or (split, int(m.group(1))) not in planned):
                    os.remove(d / name)
        if everything and (self.out / MANIFEST).exists():
            os.remove(self.out / MANIFEST)

    def _complete(self, t: ShardTask) -> dict | None:
        """The sidecar of a shard already written by this plan, else None."""
        d = Path(t.folder)
        try:
            meta = json.loads((d / f"{t.stem}.meta.json").read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return None
        if meta.get("plan") != t.plan or meta.get("options") != self.opts.as_dict():
            return None
        if meta.get("count", 0) == 0:
            return meta
        from p2p.data.wds_index import read_index_count

        try:
            ok = (os.path.getsize(d / f"{t.stem}.tar") == meta["bytes"]
                  and read_index_count(d / f"{t.stem}.idx") == meta["count"])
        except (OSError, ValueError, KeyError):
            return None
        return meta if ok else None

    # ---- main --------------------------------------------------------------------------------

    def main(self) -> int:
        self._validate()
        a = self.args
        self.src_real = os.path.realpath(a.src)
        self.out = Path(a.out)
        self.exclude = {os.path.realpath(a.out)}
        self.skipped: list[dict] = []
        self.renamed: dict[str, str] = {}
        mode, sources, ignored = self._resolve_splits()
        paired = None
        if a.task == "paired":
            paired = "folders" if any(s.b is not None for s in sources.values()) else "side_by_side"
        vf = None
        if mode == "hash":
            vf = DEFAULT_VAL_FRACTION if a.val_fraction is None else float(a.val_fraction)
        self.opts = Options(a.task, a.size, a.quality, bool(a.upscale_small), a.seed, vf,
                            float(a.shard_size_mb), mode, paired)

        by_split: dict[str, list[Item]] = {}
        for name, source in sources.items():
            items = self._items(source)
            if mode == "hash":
                for it in items:
                    by_split.setdefault("val" if hash_unit(it[0]) < vf else "train", []).append(it)
            else:
                by_split[name] = items
        n_found = sum(len(v) for v in by_split.values())
        if n_found == 0:
            what = "image pairs" if paired == "folders" else "image files"
            raise UsageError(f"no {what} found under {a.src} ({len(self.skipped)} other entries skipped, "
                             f"image extensions: {' '.join(sorted(IMAGE_EXTS))})")
        tasks = self._plan(by_split)

        self.out.mkdir(parents=True, exist_ok=True)
        with _Lock(self.out / ".p2p-shard.lock"):
            old = self._existing_options()
            if old is not None and old != self.opts.as_dict():
                if not a.force:
                    diff = ", ".join(f"{k} {old.get(k)!r} -> {v!r}" for k, v in self.opts.as_dict().items()
                                     if old.get(k) != v)
                    raise UsageError(f"{self.out} holds shards written with other options ({diff}); "
                                     "add --force to rewrite them, or choose another OUT")
            self._clean(tasks, everything=bool(a.force))
            done = {}
            todo = []
            for t in tasks:
                meta = self._complete(t)
                if meta is None:
                    todo.append(t)
                else:
                    done[(t.split, t.index)] = meta
            if todo and (self.out / MANIFEST).exists():
                os.remove(self.out / MANIFEST)  # a manifest exists only while it matches the files
            workers = a.workers or _cpu_count()
            t_work = time.perf_counter()
            results, failures = _execute(todo, workers, self.quiet)
            seconds = time.perf_counter() - t_work
            for meta in results:
                done[(meta["split"], meta["index"])] = meta
            manifest = self._manifest(tasks, done, ignored, todo, workers, seconds, failures)
            write_text(self.out / MANIFEST, json.dumps(manifest, indent=1, ensure_ascii=False) + "\n")
        if not self.quiet:
            self._summary(manifest, failures)
        if failures:
            for t, err in failures:
                print(f"p2p shard: error: {t.split}/{t.stem}: {err}", file=sys.stderr)
            print(f"p2p shard: {len(failures)} shard(s) failed; run the same command again to finish them",
                  file=sys.stderr)
            return 1
        total = manifest["train"]["count"] + manifest["val"]["count"]
        if total == 0:
            counts = ", ".join(f"{r} {n}" for r, n in manifest["skipped_counts"].items())
            raise UsageError(f"no usable images in {a.src}: all {n_found} skipped ({counts}); "
                             f"details in {self.out / MANIFEST}")
        return 0

    def _manifest(self, tasks, done, ignored, todo, workers, seconds, failures) -> dict:
        o = self.opts
        splits: dict[str, Any] = {}
        skipped = list(self.skipped)
        src_stats, out_stats = _SizeStats(), _SizeStats()
        upscaled = 0
        for split in SPLITS:
            shards = []
            count = nbytes = 0
            for t in (t for t in tasks if t.split == split):
                meta = done.get((split, t.index))
                if meta is None:
                    continue
                skipped.extend(meta["skipped"])
                src_stats.merge(meta["sizes"]["source"])
                out_stats.merge(meta["sizes"]["output"])
                upscaled += meta.get("upscaled", 0)
                if meta["count"]:
                    shards.append({"file": f"{t.stem}.tar", "index": f"{t.stem}.idx",
                                   "count": meta["count"], "bytes": meta["bytes"]})
                    count += meta["count"]
                    nbytes += meta["bytes"]
            splits[split] = {"shards": shards, "count": count, "bytes": nbytes,
                             "planned_shards": sum(1 for t in tasks if t.split == split)}
        skipped.sort(key=lambda r: (r["path"], r["reason"]))
        counts: dict[str, int] = {}
        for r in skipped:
            counts[r["reason"]] = counts.get(r["reason"], 0) + 1
        written = sum(done[(t.split, t.index)]["count"] for t in todo if (t.split, t.index) in done)
        from p2p import __version__

        return {
            "format": FORMAT,
            "version": FORMAT_VERSION,
            "p2p_version": __version__,
            "task": o.task,
            "source": os.path.abspath(self.args.src),
            "b_dir": os.path.abspath(self.args.b_dir) if self.args.b_dir else None,
            "val_dir": os.path.abspath(self.args.val_dir) if self.args.val_dir else None,
            "options": o.as_dict(),
            "layout": {
                "image": "<key>.jpg: RGB JPEG, short side = size"
                + ("; A|B side by side, each half size x size" if o.paired else ""),
                "meta": "<key>.json: source path, source width/height (after EXIF orientation)",
                "index": "DALI wds2idx v1.2 (<shard>.idx)",
                "chroma_subsampling": "4:4:4" if o.quality >= 90 else "4:2:0",
                "images_per_shard": self.per_shard,
            },
            "complete": all((t.split, t.index) in done for t in tasks),
            "train": splits["train"],
            "val": splits["val"],
            "count": splits["train"]["count"] + splits["val"]["count"],
            "sizes": {"source": src_stats.summary(), "output": out_stats.summary(), "upscaled": upscaled},
            "skipped_counts": dict(sorted(counts.items())),
            "skipped": skipped,
            "renamed_keys": dict(sorted(self.renamed.items())),
            "ignored": ignored,
            "run": {
                "workers": workers,
                "shards_written": len(todo) - len(failures),
                "shards_reused": len(tasks) - len(todo),
                "shards_failed": len(failures),
                "images_written": written,
                "seconds": round(seconds, 3),
                "images_per_s": round(written / seconds, 1) if seconds > 0 and written else None,
                "total_seconds": round(time.perf_counter() - self.t0, 3),
            },
        }

    def _summary(self, m: dict, failures) -> None:
        """The summary table on stdout (paths are escaped: rich would read [..] as markup)."""
        from rich.console import Console
        from rich.markup import escape
        from rich.table import Table

        console = Console(highlight=False)
        table = Table(title=f"p2p shard -> {escape(str(self.out))}", title_justify="left")
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
                      f"manifest {self.out / MANIFEST}", markup=False)
        if m["ignored"]:
            console.print(f"not used (outside the split folders): {', '.join(m['ignored'])}", markup=False)
        if m["renamed_keys"]:
            console.print(f"{len(m['renamed_keys'])} keys renamed (dots/spaces -> _): see renamed_keys in the manifest")
        if not m["complete"]:
            console.print(f"INCOMPLETE: {len(failures)} shard(s) failed; run the same command again")


def _cpu_count() -> int:
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # not Linux
        return max(1, os.cpu_count() or 1)


class _Lock:
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


# --------------------------------------------------------------------------------------------
# size statistics


class _SizeStats:
    KEYS = ("width", "height", "short")

    def __init__(self, d: dict | None = None):
        self.n = 0
        self.portrait = self.landscape = self.square = 0
        self.mins = {k: None for k in self.KEYS}
        self.maxs = {k: None for k in self.KEYS}
        self.sums = {k: 0 for k in self.KEYS}
        if d:
            self.merge(d)

    def add(self, w: int, h: int) -> None:
        self.n += 1
        for k, v in (("width", w), ("height", h), ("short", min(w, h))):
            self.mins[k] = v if self.mins[k] is None else min(self.mins[k], v)
            self.maxs[k] = v if self.maxs[k] is None else max(self.maxs[k], v)
            self.sums[k] += v
        if w > h:
            self.landscape += 1
        elif h > w:
            self.portrait += 1
        else:
            self.square += 1

    def to_dict(self) -> dict:
        return {"n": self.n, "portrait": self.portrait, "landscape": self.landscape, "square": self.square,
                "min": self.mins, "max": self.maxs, "sum": self.sums}

    def merge(self, d: dict) -> None:
        if not d or not d.get("n"):
            return
        self.n += d["n"]
        self.portrait += d["portrait"]
        self.landscape += d["landscape"]
        self.square += d["square"]
        for k in self.KEYS:
            lo, hi = d["min"][k], d["max"][k]
            self.mins[k] = lo if self.mins[k] is None else min(self.mins[k], lo)
            self.maxs[k] = hi if self.maxs[k] is None else max(self.maxs[k], hi)
            self.sums[k] += d["sum"][k]

    def summary(self) -> dict:
        if not self.n:
            return {"n": 0}
        return {"n": self.n, "portrait": self.portrait, "landscape": self.landscape, "square": self.square,
                **{k: {"min": self.mins[k], "mean": round(self.sums[k] / self.n, 1), "max": self.maxs[k]}
                   for k in self.KEYS}}


# --------------------------------------------------------------------------------------------
# workers: decode, convert, resize, encode, write one shard


class Skip(Exception):
    """An input file that is left out, with a reason code (see REASONS) and a detail."""

    def __init__(self, reason: str, detail: str = ""):
        super().__init__(f"{reason}: {detail}")
        self.reason = reason
        self.detail = detail or REASONS.get(reason, "")


_TICK: Callable[[], None] | None = None


def _init_worker(counter) -> None:
    global _TICK

    def tick():
        with counter.get_lock():
            counter.value += 1

    _TICK = tick


def _orientation(im) -> int:
    try:
        o = int(im.getexif().get(0x0112, 1))
    except Exception:
        return 1
    return o if 1 <= o <= 8 else 1


def _fit_short(w: int, h: int, size: int) -> tuple[int, int]:
    """(w, h) scaled so the short side is `size` (long side rounded, at least size)."""
    if w <= h:
        return size, max(size, round(h * size / w))
    return max(size, round(w * size / h)), size


def _to_rgb(im):
    """Any PIL mode to RGB: alpha composited on white, 16/32-bit gray scaled to 8 bits."""
    from PIL import Image

    m = im.mode
    if m == "RGB":
        return im
    if m in ("RGBA", "LA", "PA", "RGBa", "La") or "transparency" in im.info:
        rgba = im.convert("RGBA")
        bg = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        bg.alpha_composite(rgba)
        return bg.convert("RGB")
    if m.startswith("I") or m == "F":
        import numpy as np

        a = np.asarray(im)
        if m.startswith("I;16"):
            a = a.astype(np.float32) / 257.0
        elif m == "F":
            a = a.astype(np.float32)
            a = a * 255.0 if a.size and np.nanmax(a) <= 1.0 else a
        else:  # "I": 32-bit; 16-bit PNGs open as I with values up to 65535
            a = a.astype(np.float64)
            top = float(a.max()) if a.size else 0.0
            a = a / 257.0 if 255 < top <= 65535 else (a * (255.0 / top) if top > 65535 else a)
        g = np.clip(np.rint(np.nan_to_num(a)), 0, 255).astype(np.uint8)
        return Image.fromarray(g).convert("RGB")
    return im.convert("RGB")  # L, 1, P, CMYK, YCbCr, LAB, HSV


def _max_chroma(im) -> int:
    """max(|R-G|, |G-B|) over the image; a subsample first (colour photos stop there)."""
    import numpy as np

    a = np.asarray(im)
    for view in (a[::7, ::7], a):
        v = view.astype(np.int16)
        c = int(max(np.abs(v[..., 0] - v[..., 1]).max(), np.abs(v[..., 1] - v[..., 2]).max()))
        if c > GRAY_TOLERANCE:
            return c
    return c


def _load(path: str, target: Callable[[int, int], tuple[int, int]], opts: Options, check: Callable):
    """Open, check, draft, decode, EXIF-rotate and convert one image to RGB.
    `target(w, h)` is the size the caller will resize to (for JPEG draft mode); `check(w, h,
    mode)` may raise Skip before decoding. Returns (RGB image, info dict)."""
    from PIL import Image, ImageOps, UnidentifiedImageError

    try:
        if os.path.getsize(path) == 0:
            raise Skip("empty")
        im = Image.open(path)
    except Skip:
        raise
    except UnidentifiedImageError:
        raise Skip("not_image", "not an image format PIL recognises") from None
    except Image.DecompressionBombError as e:
        raise Skip("too_large", str(e)) from None
    except OSError as e:
        raise Skip("unreadable", e.strerror or str(e)) from None
    except Exception as e:  # malformed headers raise all sorts
        raise Skip("decode_error", f"{type(e).__name__}: {e}") from None
    with im:
        try:
            o = _orientation(im)
            w, h = im.size
            dw, dh = (h, w) if o >= 5 else (w, h)
            info = {"width": dw, "height": dh}
            if im.mode != "RGB":
                info["mode"] = im.mode
            if o != 1:
                info["orientation"] = o
            check(dw, dh, im.mode)
            if im.format == "JPEG":
                tw, th = target(dw, dh)
                if min(dw // tw, dh // th) >= 2:
                    im.draft(None, (th, tw) if o >= 5 else (tw, th))
            im.load()
            if o != 1:
                ImageOps.exif_transpose(im, in_place=True)
            rgb = _to_rgb(im)
        except Skip:
            raise
        except Image.DecompressionBombError as e:
            raise Skip("too_large", str(e)) from None
        except OSError as e:
            msg = str(e)
            raise Skip("truncated" if "truncated" in msg else "decode_error", msg) from None
        except Exception as e:
            raise Skip("decode_error", f"{type(e).__name__}: {e}") from None
        return rgb, info


def _check_single(opts: Options) -> Callable:
    def check(w, h, mode):
        if max(w, h) > MAX_ASPECT * min(w, h):
            raise Skip("extreme_aspect", f"{w}x{h}")
        if min(w, h) < opts.size and not opts.upscale_small:
            raise Skip("too_small", f"{w}x{h}, short side {min(w, h)} < {opts.size}")
        if opts.task == "colorize" and mode in GRAY_MODES:
            raise Skip("grayscale", f"mode {mode}")

    return check


def _check_square(opts: Options, side_by_side: bool) -> Callable:
    def check(w, h, mode):
        hw = w // 2 if side_by_side else w
        if side_by_side and w < h:
            raise Skip("not_side_by_side", f"{w}x{h} is narrower than tall")
        if min(hw, h) < opts.size and not opts.upscale_small:
            raise Skip("too_small", f"{w}x{h}: " + ("halves " if side_by_side else "")
                       + f"{hw}x{h}, short side {min(hw, h)} < {opts.size}")

    return check


def process_item(item: Item, opts: Options) -> tuple[bytes, dict, tuple[int, int], tuple[int, int]]:
    """One sample: (JPEG bytes, json meta, source (w, h), stored (w, h)). Raises Skip."""
    from PIL import Image

    key, shown, path, shown_b, path_b = item
    s = opts.size
    lanczos = Image.Resampling.LANCZOS
    upscaled = False
    if opts.paired is None:
        im, info = _load(path, lambda w, h: _fit_short(w, h, s), opts, _check_single(opts))
        ow, oh = _fit_short(info["width"], info["height"], s)
        upscaled = min(info["width"], info["height"]) < s
        if im.size != (ow, oh):
            im = im.resize((ow, oh), lanczos, reducing_gap=3.0)
        if opts.task == "colorize":
            c = _max_chroma(im)
            if c <= GRAY_TOLERANCE:
                raise Skip("grayscale", f"RGB without chroma (max |R-G|,|G-B| = {c})")
        out = im
    elif opts.paired == "side_by_side":
        im, info = _load(path, lambda w, h: (2 * s, s), opts, _check_square(opts, True))
        w, h = im.size
        half = w // 2
        upscaled = min(info["width"] // 2, info["height"]) < s
        out = Image.new("RGB", (2 * s, s))
        out.paste(im.resize((s, s), lanczos, box=(0, 0, half, h), reducing_gap=3.0), (0, 0))
        out.paste(im.resize((s, s), lanczos, box=(half, 0, w, h), reducing_gap=3.0), (s, 0))
    else:
        halves = []
        infos = []
        for side, p in (("A", path), ("B", path_b)):
            try:
                im, inf = _load(p, lambda w, h: (s, s), opts, _check_square(opts, False))
            except Skip as e:
                raise Skip(e.reason, f"{side}: {e.detail}" + ("" if side == "A" else f" ({shown_b})")) from None
            upscaled = upscaled or min(inf["width"], inf["height"]) < s
            halves.append(im if im.size == (s, s) else im.resize((s, s), lanczos, reducing_gap=3.0))
            infos.append(inf)
        out = Image.new("RGB", (2 * s, s))
        out.paste(halves[0], (0, 0))
        out.paste(halves[1], (s, 0))
        info = dict(infos[0])
        info["path_b"] = shown_b
        info.update({f"{k}_b": v for k, v in infos[1].items()})
    buf = io.BytesIO()
    out.save(buf, "JPEG", quality=opts.quality, subsampling=0 if opts.quality >= 90 else 2)
    meta = {"path": shown, **info}
    if upscaled:
        meta["upscaled"] = True
    return buf.getvalue(), meta, (info["width"], info["height"]), out.size


class TarWriter:
    """A plain tar writer that never writes PAX headers (DALI's reader rejects them).

    Each member gets one USTAR header when its name fits (100 characters, or up to 255 split
    at a '/' into USTAR's prefix field), else a GNU long-name (`L`) record before the header:
    DALI reads both, and DALI's `wds2idx` tool mis-computes offsets after `L` records (it uses
    GNU tar's block number of the `L` record), which is one reason the index is written here.
    mtime 0, uid/gid 0, empty user names, mode 0644: the same input gives the same bytes.
    `add` returns the member's data offset for the DALI index."""

    def __init__(self, f):
        self.f = f
        self.pos = 0

    def add(self, name: str, data: bytes) -> int:
        ti = tarfile.TarInfo(name)
        ti.size = len(data)
        ti.mtime = 0
        ti.mode = 0o644
        ti.uid = ti.gid = 0
        ti.uname = ti.gname = ""
        ti.type = tarfile.REGTYPE
        try:
            header = ti.tobuf(tarfile.USTAR_FORMAT, "utf-8", "strict")
        except ValueError:  # name too long for USTAR
            header = ti.tobuf(tarfile.GNU_FORMAT, "utf-8", "strict")
        offset = self.pos + len(header)
        pad = (-len(data)) % tarfile.BLOCKSIZE
        self.f.write(header)
        self.f.write(data)
        if pad:
            self.f.write(b"\0" * pad)
        self.pos = offset + len(data) + pad
        return offset

    def close(self) -> None:
        """Two zero blocks, then zeros up to a 10240-byte record, as tar does."""
        end = self.pos + 2 * tarfile.BLOCKSIZE
        end += (-end) % tarfile.RECORDSIZE
        self.f.write(b"\0" * (end - self.pos))
        self.pos = end


def write_shard(t: ShardTask) -> dict:
    """Write one shard (tar, idx, sidecar; each to .tmp, fsync, rename) and return its sidecar."""
    from p2p.data.wds_index import Component, format_index

    t0 = time.perf_counter()
    os.makedirs(t.folder, exist_ok=True)
    base = os.path.join(t.folder, t.stem)
    for suffix in (".meta.json", ".tar", ".idx"):  # the sidecar first: no stale "complete" mark
        try:
            os.remove(base + suffix)
        except FileNotFoundError:
            pass
    skipped = []
    samples = []
    src_stats, out_stats = _SizeStats(), _SizeStats()
    upscaled = 0
    tmp = base + ".tar.tmp"
    with open(tmp, "wb") as f:
        w = TarWriter(f)
        for item in t.items:
            try:
                try:
                    jpg, meta, src_size, out_size = process_item(item, t.opts)
                except Skip:
                    raise
                except MemoryError:
                    raise Skip("too_large", "out of memory while decoding") from None
                except Exception as e:  # a bug or an exotic file must not stop the run
                    raise Skip("decode_error", f"{type(e).__name__}: {e}") from None
            except Skip as e:
                skipped.append(_skip_rec(item[1], e.reason, e.detail))
            else:
                key = item[0]
                js = json.dumps(meta, separators=(",", ":"), ensure_ascii=False).encode("utf-8")
                oj = w.add(f"{key}.jpg", jpg)
                om = w.add(f"{key}.json", js)
                samples.append([Component("jpg", oj, len(jpg), f"{key}.jpg"),
                                Component("json", om, len(js), f"{key}.json")])
                src_stats.add(*src_size)
                out_stats.add(*out_size)
                upscaled += bool(meta.get("upscaled"))
            if _TICK is not None:
                _TICK()
        w.close()
        f.flush()
        os.fsync(f.fileno())
    nbytes = w.pos
    if samples:
        os.replace(tmp, base + ".tar")
        write_bytes(base + ".idx", format_index(samples).encode("utf-8"))
    else:  # DALI cannot index an empty tar: a shard whose every input was skipped has no files
        os.remove(tmp)
        nbytes = 0
    meta = {
        "split": t.split, "index": t.index, "plan": t.plan, "options": t.opts.as_dict(),
        "planned": len(t.items), "count": len(samples), "bytes": nbytes,
        "skipped": skipped, "upscaled": upscaled,
        "sizes": {"source": src_stats.to_dict(), "output": out_stats.to_dict()},
        "seconds": round(time.perf_counter() - t0, 3),
    }
    write_bytes(base + ".meta.json", json.dumps(meta, ensure_ascii=False).encode("utf-8"))
    fsync_dir(t.folder)
    return meta


class _Progress:
    """A rich progress bar on a terminal; elsewhere (Slurm logs, pipes) one plain line on
    stderr every `every` seconds, so logs show progress without bar redraws."""

    def __init__(self, total: int, quiet: bool, every: float = 30.0):
        from rich.console import Console

        self.total, self.quiet, self.every = total, quiet, every
        self.done = 0
        self.t0 = self.last = time.perf_counter()
        self.bar = None
        console = Console(stderr=True)
        if not quiet and console.is_terminal:
            from rich.progress import (BarColumn, MofNCompleteColumn, Progress, TextColumn,
                                       TimeElapsedColumn, TimeRemainingColumn)

            self.bar = Progress(TextColumn("[bold]sharding"), BarColumn(), MofNCompleteColumn(),
                                TextColumn("images"), TimeElapsedColumn(), TimeRemainingColumn(),
                                console=console)

    def __enter__(self):
        if self.bar is not None:
            self.bar.start()
            self.task = self.bar.add_task("shard", total=self.total)
        return self

    def __exit__(self, *exc):
        if self.bar is not None:
            self.bar.stop()

    def update(self, done: int) -> None:
        self.done = done
        if self.bar is not None:
            self.bar.update(self.task, completed=done)
            return
        now = time.perf_counter()
        if not self.quiet and now - self.last >= self.every:
            self.last = now
            rate = done / max(now - self.t0, 1e-9)
            left = (self.total - done) / rate if rate > 0 else float("nan")
            print(f"p2p shard: {done:,}/{self.total:,} images, {rate:,.0f}/s, about {left / 60:,.1f} min left",
                  file=sys.stderr, flush=True)


def _execute(todo: list[ShardTask], workers: int, quiet: bool) -> tuple[list[dict], list]:
    """Write the shards, in parallel when there are several, with progress on stderr."""
    global _TICK
    results: list[dict] = []
    failures: list = []
    if not todo:
        return results, failures
    total = sum(len(t.items) for t in todo)
    nproc = max(1, min(workers, len(todo)))
    progress = _Progress(total, quiet)
    if nproc == 1:
        def tick():
            progress.update(progress.done + 1)

        _TICK = tick
        try:
            with progress:
                for t in todo:
                    try:
                        results.append(write_shard(t))
                    except Exception as e:
                        failures.append((t, f"{type(e).__name__}: {e}"))
        finally:
            _TICK = None
        return results, failures

    import multiprocessing as mp
    from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait

    # fork: the workers start in milliseconds with everything imported (p2p.data imports torch:
    # seconds per process under spawn/forkserver) and only use PIL, numpy and files. The pool
    # is created and fed before the progress bar starts its refresh thread.
    method = "fork" if "fork" in mp.get_all_start_methods() else "spawn"
    ctx = mp.get_context(method)
    counter = ctx.Value("q", 0)
    with ProcessPoolExecutor(nproc, mp_context=ctx, initializer=_init_worker, initargs=(counter,)) as ex:
        futures = {ex.submit(write_shard, t): t for t in todo}
        pending = set(futures)
        with progress:
            while pending:
                finished, pending = wait(pending, timeout=0.2, return_when=FIRST_COMPLETED)
                for fut in finished:
                    try:
                        results.append(fut.result())
                    except Exception as e:
                        failures.append((futures[fut], f"{type(e).__name__}: {e}"))
                progress.update(counter.value)
    return results, failures
