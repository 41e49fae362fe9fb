"""What SRC holds: its splits and sources, the image files under them, their sample keys and
A/B pairs. Nothing is opened here; files that are not images by name are recorded as skipped.

Splits come from SRC's own train/ and val/ folders (or A/{train,val} and B/{train,val} for
paired folders), from --val-dir, or else from a hash of each key (`hash_unit(key) <
val_fraction` is val). Keys are the path relative to the split's (A) folder without extension,
`/` kept, dots and whitespace turned into `_` (renames are listed in `renamed`).
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import NamedTuple

from p2p.data.images import IMAGE_EXTS
from p2p.data.shards.format import SPLITS, hash_unit, sample_key, skip_record
from p2p.errors import UsageError
from p2p.specs.tasks import TASKS

DEFAULT_VAL_FRACTION = 0.01


@dataclass
class Source:
    """One split's input: a folder, or an A and a B folder matched by relative path."""

    a: Path
    b: Path | None = None


class Item(NamedTuple):
    """A planned sample: its key, and its A (and B) file as shown in the manifest and on disk."""

    key: str
    shown: str
    path: str
    shown_b: str | None
    path_b: str | None


@dataclass
class Scan:
    """The result of scanning SRC: what each split will hold and what was left out."""

    split_mode: str  # "folders" (train/ val/ or --val-dir) or "hash"
    paired: str | None  # None, "side_by_side" or "folders"
    val_fraction: float | None  # the hash split's fraction; None with split folders
    items: dict[str, list[Item]] = field(default_factory=dict)  # split -> items, in file order
    skipped: list[dict] = field(default_factory=list)  # skip records of files never opened
    renamed: dict[str, str] = field(default_factory=dict)  # shown path -> key, where they differ
    ignored: list[str] = field(default_factory=list)  # SRC entries outside the split folders

    @property
    def found(self) -> int:
        return sum(len(v) for v in self.items.values())


@dataclass(frozen=True)
class _Roots:
    src_real: str  # SRC with links resolved: manifest paths are relative to it
    out_real: str  # OUT with links resolved: never scanned, even inside SRC

    def shown(self, path: str) -> str:
        """A path as the manifest shows it: relative to SRC when inside, else absolute."""
        rel = os.path.relpath(path, self.src_real)
        if rel == os.pardir or rel.startswith(os.pardir + os.sep):
            return os.path.abspath(path)
        return rel.replace(os.sep, "/")


def scan(src, out, task: str, b_dir=None, val_dir=None, val_fraction: float | None = None) -> Scan:
    """Resolve SRC into splits and list every split's items. Raises UsageError for a layout
    that the options contradict. A paired task (its spec's `paired`) pairs A|B images or folders."""
    roots = _Roots(os.path.realpath(src), os.path.realpath(out))
    pairs = TASKS[task].paired
    mode, sources, ignored = _resolve_splits(Path(src), roots, pairs, Path(b_dir) if b_dir else None,
                                             val_dir, val_fraction is not None)
    paired = None
    if pairs:
        paired = "folders" if any(s.b is not None for s in sources.values()) else "side_by_side"
    vf = None
    if mode == "hash":
        vf = DEFAULT_VAL_FRACTION if val_fraction is None else float(val_fraction)
    result = Scan(mode, paired, vf, ignored=ignored)
    for name, source in sources.items():
        items = _source_items(source, roots, result.skipped, result.renamed)
        if mode == "hash":
            for it in items:
                result.items.setdefault("val" if hash_unit(it.key) < vf else "train", []).append(it)
        else:
            result.items[name] = items
    return result


def _has_splits(d: Path) -> bool:
    return (d / "train").is_dir() and (d / "val").is_dir()


def _source(root: Path, b: Path | None, pairs: bool) -> Source:
    if b is not None:
        return Source(root, b)
    if pairs and (root / "A").is_dir() and (root / "B").is_dir():
        return Source(root / "A", root / "B")
    return Source(root)


def _resolve_splits(src: Path, roots: _Roots, pairs: bool, b: Path | None, val_dir, explicit_vf: bool
                    ) -> tuple[str, dict[str, Source], list[str]]:
    """(split mode, {split: Source}, names of SRC entries left out)."""
    if val_dir is not None:
        if b is not None:
            raise UsageError("--val-dir with --b-dir is not supported: arrange A/{train,val} and "
                             "B/{train,val} (or SRC/{train,val}/{A,B}) instead")
        if _has_splits(src):
            raise UsageError(f"SRC {src} has train/ and val/ folders; drop --val-dir")
        if explicit_vf:
            raise UsageError("--val-dir gives the val split; drop --val-fraction")
        return "folders", {"train": _source(src, None, pairs), "val": _source(Path(val_dir), None, pairs)}, []
    if _has_splits(src):
        if explicit_vf:
            raise UsageError(f"SRC {src} has train/ and val/ folders, which are the splits; "
                             "drop --val-fraction")
        if b is not None and not _has_splits(b):
            raise UsageError(f"SRC has train/ and val/ folders but --b-dir {b} does not")
        ignored = _ignored(src, SPLITS, roots)
        return "folders", {s: _source(src / s, b / s if b else None, pairs) for s in SPLITS}, ignored
    if (pairs and b is None and (src / "A").is_dir() and (src / "B").is_dir()
            and _has_splits(src / "A") and _has_splits(src / "B")):
        if explicit_vf:
            raise UsageError("A/ and B/ have train/ and val/ folders, which are the splits; "
                             "drop --val-fraction")
        ignored = _ignored(src, ("A", "B"), roots)
        return "folders", {s: Source(src / "A" / s, src / "B" / s) for s in SPLITS}, ignored
    return "hash", {"all": _source(src, b, pairs)}, []


def _ignored(src: Path, used: tuple, roots: _Roots) -> list[str]:
    """Entries of SRC besides the split folders (left out; listed in the manifest)."""
    return sorted(e.name for e in os.scandir(src)
                  if e.name not in used and not e.name.startswith(".")
                  and os.path.realpath(e.path) != roots.out_real)


def _inside(path: str, folder: str) -> bool:
    return path == folder or path.startswith(folder.rstrip(os.sep) + os.sep)


def _list_files(root: Path, roots: _Roots, skipped: list[dict]) -> list[tuple[str, str]]:
    """(path relative to root with '/', absolute path) of every image-extension file under
    root, sorted; other files are recorded as skipped. Follows links, once per folder, but
    never out of root (or SRC): a link to /etc is recorded as skipped, not read."""
    found: list[tuple[str, str]] = []
    seen: set[str] = set()
    allowed = (os.path.realpath(root), roots.src_real)
    stack = [(os.path.abspath(root), "")]
    while stack:
        d, rel_d = stack.pop()
        real = os.path.realpath(d)
        if real in seen or real == roots.out_real:
            continue
        seen.add(real)
        try:
            entries = list(os.scandir(d))
        except OSError as e:
            skipped.append(skip_record(roots.shown(d), "unreadable", f"cannot list folder: {e.strerror}"))
            continue
        for e in entries:
            rel = rel_d + e.name
            if e.name.startswith("."):
                skipped.append(skip_record(roots.shown(e.path), "hidden"))
                continue
            try:
                if e.is_symlink() and not any(_inside(os.path.realpath(e.path), a) for a in allowed):
                    skipped.append(skip_record(roots.shown(e.path), "outside_source",
                                               f"a link to {os.path.realpath(e.path)}"))
                    continue
                if e.is_dir():
                    stack.append((e.path, rel + "/"))
                    continue
                is_file = e.is_file()
            except OSError:
                is_file = False
            if not is_file:
                skipped.append(skip_record(roots.shown(e.path), "unreadable",
                                           "not a regular file (broken link, device, fifo)"))
            elif os.path.splitext(e.name)[1].lower() in IMAGE_EXTS:
                found.append((rel, e.path))
            else:
                skipped.append(skip_record(roots.shown(e.path), "not_image_ext"))
    found.sort()
    return found


def _keyed(files: list[tuple[str, str]], roots: _Roots, skipped: list[dict], renamed: dict[str, str]
           ) -> dict[str, tuple[str, str, str]]:
    """{raw stem: (key, rel, abs path)}; duplicate stems or keys are recorded as skipped."""
    by_stem: dict[str, tuple[str, str, str]] = {}
    by_key: dict[str, str] = {}
    for rel, path in files:
        stem = os.path.splitext(rel)[0]
        key = sample_key(stem)
        if key in by_key:
            skipped.append(skip_record(roots.shown(path), "duplicate_key",
                                       f"key {key!r} is already taken by {roots.shown(by_key[key])}"))
            continue
        by_key[key] = path
        by_stem[stem] = (key, rel, path)
        if key != stem:
            renamed[roots.shown(path)] = key
    return by_stem


def _source_items(source: Source, roots: _Roots, skipped: list[dict], renamed: dict[str, str]) -> list[Item]:
    """The items of one source: its files, or its A files that have a B partner."""
    a = _keyed(_list_files(source.a, roots, skipped), roots, skipped, renamed)
    if source.b is None:
        return [Item(key, roots.shown(path), path, None, None) for key, _, path in a.values()]
    b = _keyed(_list_files(source.b, roots, skipped), roots, skipped, renamed)
    items = []
    for stem, (key, _, path) in a.items():
        if stem in b:
            pb = b[stem][2]
            items.append(Item(key, roots.shown(path), path, roots.shown(pb), pb))
        else:
            skipped.append(skip_record(roots.shown(path), "unpaired", f"no {stem}.* in {source.b}"))
    for stem, (_, _, path) in b.items():
        if stem not in a:
            skipped.append(skip_record(roots.shown(path), "unpaired", f"no {stem}.* in {source.a}"))
    return items
