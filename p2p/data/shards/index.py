"""DALI's WebDataset index files (`wds2idx` format), written and read without DALI: `p2p shard`
writes one next to every tar, the wds backend reads member offsets from them.

`nvidia.dali.fn.readers.webdataset(paths=[...], index_paths=[...])` seeks straight to every
sample through an index file; without one it scans each tar at start-up (slow on big shards).
The format, as written by DALI's own `wds2idx` tool (site-packages/wds2idx.py, index version
"v1.2") and parsed by DALI's loader (webdataset_loader.cc)::

    v1.2 <number of samples>
    <ext> <data offset> <size> <member name> [<ext> <data offset> <size> <member name> ...]
    ...

one line per sample, one `ext offset size name` group per component (member) of the sample.
Details that matter:

* `offset` is the byte offset of the member's DATA (after its header blocks), a multiple of 512;
  DALI refuses an offset that is not.
* A sample is a run of consecutive regular-file members sharing a basename; the basename ends at
  the first dot after the last `/` (so `a/b.c/x.jpg` has key `a/b.c/x`, ext `jpg`, while
  `x.seg.png` has key `x`, ext `seg.png`).
* DALI splits the lines on whitespace, so a member name with a space or a newline cannot be
  indexed (p2p shard's keys never contain one). The sample count must be positive: DALI
  rejects an index of an empty tar.
* Version "v1.1" is the same without the member names; `read_index` reads both.
"""

from __future__ import annotations

import contextlib
import gc
import os
import stat
import tarfile
from typing import NamedTuple

from p2p.atomic import write_text

INDEX_VERSION = "v1.2"
BLOCK = 512


class Component(NamedTuple):
    """One member of a sample: extension, data offset in the tar, size in bytes, member name."""

    ext: str
    offset: int
    size: int
    name: str


def split_name(name: str) -> tuple[str, str]:
    """(key, ext) of a member name, split like DALI and WebDataset: at the first dot of the
    last path component. A name without a dot gives ext ''."""
    dot = name.find(".", name.rfind("/") + 1)
    if dot < 0:
        return name, ""
    return name[:dot], name[dot + 1 :]


def format_index(samples: list[list[Component]]) -> str:
    """The text of an index file for these samples (each a list of components)."""
    if not samples:
        raise ValueError("an index needs at least one sample (DALI rejects a count of 0)")
    lines = [f"{INDEX_VERSION} {len(samples)}"]
    for comps in samples:
        if not comps:
            raise ValueError("a sample without components cannot be indexed")
        parts = []
        for c in comps:
            if c.offset % BLOCK:
                raise ValueError(f"{c.name}: data offset {c.offset} is not a multiple of {BLOCK}")
            if any(ch.isspace() for ch in c.name) or not c.name:
                raise ValueError(f"member name {c.name!r} has whitespace: DALI's index cannot hold it")
            parts.append(f"{c.ext} {c.offset} {c.size} {c.name}")
        lines.append(" ".join(parts))
    return "\n".join(lines) + "\n"


def scan_tar(tar_path: str | os.PathLike) -> list[list[Component]]:
    """The samples of a tar in DALI's grouping: consecutive regular files with one basename.
    Directories, links and hidden names (empty basename, e.g. `.hidden` or `dir/.x`) are left
    out, as DALI's tool does."""
    samples: list[list[Component]] = []
    last_key = None
    with tarfile.open(tar_path, "r:") as tf:
        for m in tf:
            if not m.isreg():
                continue
            key, ext = split_name(m.name)
            if not key or key.endswith("/"):
                continue
            comp = Component(ext, m.offset_data, m.size, m.name)
            if key != last_key:
                samples.append([comp])
                last_key = key
            else:
                samples[-1].append(comp)
    return samples


def write_index(tar_path: str | os.PathLike, idx_path: str | os.PathLike | None = None) -> int:
    """Write DALI's index of any tar (default name: the tar's path with `.idx` for `.tar`).
    Written to a temporary name and renamed, so a reader never sees half an index.
    Returns the number of samples. Raises ValueError for a tar without samples."""
    tar_path = os.fspath(tar_path)
    if idx_path is None:
        idx_path = (tar_path[:-4] if tar_path.endswith(".tar") else tar_path) + ".idx"
    samples = scan_tar(tar_path)
    if not samples:
        raise ValueError(f"{tar_path}: no samples (DALI rejects an empty index)")
    write_text(idx_path, format_index(samples))
    return len(samples)


def read_index(idx_path: str | os.PathLike, tar_size: int | None = None) -> list[list[Component]]:
    """Parse an index file (v1.1 or v1.2) into samples, each a list of `Component`s
    (`name` is '' for v1.1). Raises ValueError naming the line for a malformed file: one that is
    not a regular file or is larger than any index of a tar of `tar_size` bytes, a count or
    field that is not a number, or (given `tar_size`) a member that does not lie inside the tar."""
    idx_path = os.fspath(idx_path)
    st = os.stat(idx_path)
    if not stat.S_ISREG(st.st_mode):
        raise ValueError(f"{idx_path} is not a regular file")
    if tar_size is not None and st.st_size > max(1 << 20, tar_size):  # a line per >= 1 KiB sample
        raise ValueError(f"{idx_path}: {st.st_size} bytes, more than any index of its {tar_size}-byte tar")
    with open(idx_path, encoding="utf-8") as f:
        lines = f.read().splitlines()
    if not lines:
        raise ValueError(f"{idx_path}: empty index file")
    head = lines[0].split()
    if len(head) < 2 or head[0] not in ("v1.1", "v1.2") or not head[1].isdigit():
        raise ValueError(f"{idx_path} line 0: expected 'v1.2 <count>' (or v1.1), got {lines[0][:100]!r}")
    version, count = head[0], int(head[1])
    width = 4 if version == "v1.2" else 3
    if len(lines) - 1 < count:
        raise ValueError(f"{idx_path}: header says {count} samples, file has {len(lines) - 1} lines")
    samples = []
    for i, line in enumerate(lines[1 : count + 1], start=1):
        tok = line.split()
        if not tok or len(tok) % width:
            raise ValueError(f"{idx_path} line {i}: expected groups of {width} fields, got {line[:100]!r}")
        comps = []
        for j in range(0, len(tok), width):
            ext, off, size = tok[j], tok[j + 1], tok[j + 2]
            if not (off.isdigit() and size.isdigit()):
                raise ValueError(f"{idx_path} line {i}: offset {off[:30]!r} and size {size[:30]!r} must be "
                                 f"non-negative integers")
            off, size = int(off), int(size)
            if off % BLOCK:
                raise ValueError(f"{idx_path} line {i}: offset {off} is not a multiple of {BLOCK}")
            if tar_size is not None and off + size > tar_size:
                raise ValueError(f"{idx_path} line {i}: member at {off} of {size} bytes lies beyond the end of "
                                 f"its {tar_size}-byte tar")
            comps.append(Component(ext, off, size, tok[j + 3] if width == 4 else ""))
        samples.append(comps)
    return samples


@contextlib.contextmanager
def collector_paused():
    """Python's cyclic garbage collector off while the index files of many shards are parsed:
    a rank parses those of every shard its epoch touches before its first batch (two tuples
    and a list per sample, none in a cycle), and the collector, run every few hundred new
    objects, would walk them again and again (benchmarks/plan-scale/per_sample.py: index_us
    against index_no_gc_us). Collection resumes, over all of them once, when the block ends."""
    was = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was:
            gc.enable()


def read_index_count(idx_path: str | os.PathLike) -> int:
    """The sample count in an index header (reads one line)."""
    with open(idx_path, encoding="utf-8") as f:
        head = f.readline().split()
    if len(head) < 2 or head[0] not in ("v1.1", "v1.2"):
        raise ValueError(f"{os.fspath(idx_path)}: not a DALI index file")
    return int(head[1])
