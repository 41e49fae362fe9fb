"""The shards of one split as a reader needs them, read in O(1) per shard it touches, not per
shard in the folder: the per-shard sample counts as one array, file paths made on demand, and
each tar checked (a regular file big enough for its count) the first time a rank touches it.

`p2p shard` writes `OUT/manifest.counts` next to manifest.json: the manifest's shard lists in
compact form, so that a rank at start-up does not walk 100k JSON entries, join 200k paths and
stat 100k tars (seconds per rank at 100M samples; S metadata calls per rank on a parallel file
system). Its layout::

    P2P-SHARD-COUNTS 1\\n
    {"manifest_sha256": ..., "manifest_stat": [size, mtime_ns], "task": ..., "options": {...},
     "splits": {"train": {"shards": S, "count": N}, "val": {...}}}\\n      (one line of JSON)
    per split, in that order: S little-endian int64 shard numbers (shard-NNNNNN), then S counts

It holds only what manifest.json holds, and only for the manifest it was written after: one
with the size and modification time it recorded (one stat, the manifest is not read), or else
with its sha256 (a copy that did not keep file times: the manifest is read once to hash it). A
manifest rewritten since (by hand, by an older p2p, a failed run) matches neither, and the
reader takes the manifest's own lists. So does a shard folder from before this file, and one
whose file is damaged: manifest.json is the truth, the counts file a faster copy.

Both are untrusted. Before a plan is made, the counts are checked: each a non-negative integer
of at most MAX_SHARD_SAMPLES, adding up to the split's total. The counts are claims about tars
not yet looked at, so the array they come in (`ShardCounts`) carries the check of the tars:
p2p.data.plan calls `check_shards` on the shards whose rows it is about to make, and no count
sizes an allocation before the shard's tar was found big enough to hold it. A tar that is
missing or too small is one UsageError when a rank touches it; a rank that never touches it
never looks.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from p2p.atomic import write_bytes
from p2p.data.shards.format import (MANIFEST, MAX_MANIFEST_BYTES, MAX_SHARD_SAMPLES, SPLITS, check_shard_file,
                                    manifest_sha256, manifest_stat, read_manifest, shard_stem, split_shards,
                                    split_total)
from p2p.errors import UsageError

COUNTS = "manifest.counts"
MAGIC = b"P2P-SHARD-COUNTS 1\n"
MAX_HEADER_BYTES = 1 << 20  # the task and options: a few hundred bytes
_CANONICAL = re.compile(r"^shard-(\d{6,})$")


# ---------------------------------------------------------------------------------------------
# the counts file


def counts_file_bytes(manifest: dict, manifest_text: bytes, manifest_stat: os.stat_result | None = None
                      ) -> bytes | None:
    """The counts file of a manifest (its bytes `manifest_text`; `manifest_stat`, the file's
    stat once written), or None when a shard has a name `p2p shard` does not write (such folders
    are read from manifest.json alone)."""
    header = {"manifest_sha256": hashlib.sha256(manifest_text).hexdigest(), "task": manifest.get("task"),
              "options": manifest.get("options"), "splits": {}}
    if manifest_stat is not None and manifest_stat.st_size == len(manifest_text):
        header["manifest_stat"] = [manifest_stat.st_size, manifest_stat.st_mtime_ns]
    arrays = []
    for split in SPLITS:
        stems, counts = [], []
        for tar, idx, count in split_shards(manifest, split):
            m = _CANONICAL.match(tar[:-4]) if tar.endswith(".tar") else None
            if m is None or idx != f"{tar[:-4]}.idx" or tar != f"{shard_stem(int(m.group(1)))}.tar":
                return None
            stems.append(int(m.group(1)))
            counts.append(count)
        header["splits"][split] = {"shards": len(stems), "count": sum(counts)}
        arrays += [np.array(stems, dtype="<i8"), np.array(counts, dtype="<i8")]
    text = json.dumps(header, separators=(",", ":"), ensure_ascii=True).encode() + b"\n"
    return MAGIC + text + b"".join(a.tobytes() for a in arrays)


def write_counts_file(out: str | os.PathLike, manifest: dict, manifest_text: bytes) -> bool:
    """Write OUT/manifest.counts (atomically) for the manifest just written, whose bytes are
    `manifest_text`. False, and no file, for a manifest it cannot hold."""
    data = counts_file_bytes(manifest, manifest_text, os.stat(Path(out) / MANIFEST))
    path = Path(out) / COUNTS
    if data is None:
        remove_counts_file(out)
        return False
    write_bytes(path, data)
    return True


def remove_counts_file(out: str | os.PathLike) -> None:
    try:
        os.remove(Path(out) / COUNTS)
    except FileNotFoundError:
        pass


def read_counts_file(out: str | os.PathLike, split: str) -> tuple[dict, np.ndarray, np.ndarray] | None:
    """(header, shard numbers, counts) of `split` from OUT/manifest.counts, or None when there is
    none, it belongs to another manifest, or it is malformed (the caller then reads the
    manifest). It belongs to OUT/manifest.json when the manifest has the size and modification
    time it recorded (no read of the manifest), or else the same sha256 (a copy that did not
    keep times). Nothing is allocated beyond the file's own size, which is bounded."""
    path = Path(out) / COUNTS
    try:
        if not os.path.isfile(path) or os.path.getsize(path) > MAX_MANIFEST_BYTES:
            return None
        with open(path, "rb") as f:
            if f.read(len(MAGIC)) != MAGIC:
                return None
            line = f.readline(MAX_HEADER_BYTES)
            header = json.loads(line.decode("utf-8"))
            body = f.read(MAX_MANIFEST_BYTES)
    except (OSError, ValueError, RecursionError):
        return None
    if not isinstance(header, dict) or not _same_manifest(out, header):
        return None
    splits = header.get("splits")
    if not isinstance(splits, dict) or list(splits) != list(SPLITS):
        return None
    fields = [(splits[s].get("shards"), splits[s].get("count")) if isinstance(splits[s], dict) else (None, None)
              for s in SPLITS]
    if not all(isinstance(v, int) and not isinstance(v, bool) and v >= 0 for f in fields for v in f):
        return None
    sizes = [n for n, _ in fields]
    if 16 * sum(sizes) != len(body):
        return None
    at = 16 * sum(sizes[:SPLITS.index(split)])
    n = sizes[SPLITS.index(split)]
    stems = np.frombuffer(body, dtype="<i8", count=n, offset=at).astype(np.int64)
    counts = np.frombuffer(body, dtype="<i8", count=n, offset=at + 8 * n).astype(np.int64)
    if n and stems.min() < 0:
        return None
    return header, stems, counts


def _same_manifest(out, header: dict) -> bool:
    st = manifest_stat(out)
    if header.get("manifest_stat") == [st.st_size, st.st_mtime_ns]:
        return True
    return header.get("manifest_sha256") == manifest_sha256(out)


# ---------------------------------------------------------------------------------------------
# what a reader holds


class ShardCounts(np.ndarray):
    """The per-shard sample counts of a split (int64): checked against the limits and the
    split's total, still claims about tars not yet looked at. `check_shards(shards)` checks the
    tars of those shards (once each); p2p.data.plan calls it before it makes their rows."""

    def __new__(cls, counts: np.ndarray, check=None):
        obj = np.asarray(counts, dtype=np.int64).view(cls)
        obj._check = check
        return obj

    def __array_finalize__(self, obj):
        self._check = None  # a slice, gather or sum of the counts is plain numbers: positions differ

    def check_shards(self, shards) -> None:
        if self._check is not None:
            self._check(shards)

    def __reduce__(self):  # pickled (spawned workers) as the plain array: the check stays here
        return np.asarray(self).__reduce__()


class ShardPaths(Sequence):
    """The paths of a split's tars (or index files), each made when asked for."""

    def __init__(self, base: str, ext: str, stems: np.ndarray | None = None, names: list[str] | None = None):
        self.base, self.ext, self.stems, self.names = base, ext, stems, names

    def __len__(self) -> int:
        return len(self.names) if self.names is not None else len(self.stems)

    def __getitem__(self, shard):
        if isinstance(shard, slice):
            return [self[i] for i in range(*shard.indices(len(self)))]
        if self.names is not None:
            return os.path.join(self.base, self.names[shard])
        return os.path.join(self.base, f"{shard_stem(int(self.stems[shard]))}.{self.ext}")


class TarSizes:
    """sizes[shard]: the size of the shard's tar, checked against its count (check_shard_file)
    the first time it is asked for; a missing or too small tar is one UsageError."""

    def __init__(self, source: str, tars: ShardPaths, counts: np.ndarray):
        self.source, self.tars, self.counts = source, tars, counts
        self.checked: dict[int, int] = {}

    def __len__(self) -> int:
        return len(self.tars)

    def __getitem__(self, shard: int) -> int:
        shard = int(shard)
        size = self.checked.get(shard)
        if size is None:
            tar = self.tars[shard]
            try:
                size = check_shard_file(tar, int(self.counts[shard]))
            except FileNotFoundError:
                raise UsageError(f"data.source={self.source!r} has no shard {tar} listed in its manifest "
                                 f"(re-run 'p2p shard')") from None
            except (OSError, ValueError) as e:
                raise UsageError(f"data.source={self.source!r}: {e}") from None
            self.checked[shard] = size
        return size

    def check(self, shards) -> None:
        for s in np.asarray(shards).tolist():
            self[s]


class SplitCatalog:
    """One split of a shard folder: `counts` (ShardCounts), `total`, `tars`, `idxs` (paths made
    on demand), `sizes` (tars checked on first use) and `manifest`, the part of the manifest
    readers use besides the shard lists (task, options). `from_counts_file` says which
    file the lists came from."""

    def __init__(self, source: str, split: str):
        manifest_stat(source)  # there, a regular file, not too big
        base = os.path.join(os.fspath(source), split)
        got = read_counts_file(source, split)
        if got is not None:
            header, stems, counts = got
            _check_counts(counts, header["splits"][split]["count"], split)
            self.manifest = {"task": header.get("task"), "options": header.get("options")}
            self.tars, self.idxs = ShardPaths(base, "tar", stems=stems), ShardPaths(base, "idx", stems=stems)
        else:
            m = read_manifest(source)
            entries = split_shards(m, split)
            counts = np.array([c for _, _, c in entries], dtype=np.int64)
            split_total(m, split, counts)
            self.manifest = {"task": m.get("task"), "options": m.get("options")}
            self.tars = ShardPaths(base, "tar", names=[t for t, _, _ in entries])
            self.idxs = ShardPaths(base, "idx", names=[i for _, i, _ in entries])
        self.from_counts_file = got is not None
        self.sizes = TarSizes(source, self.tars, counts)
        self.counts = ShardCounts(counts, self.sizes.check)
        self.total = int(counts.sum())


def _check_counts(counts: np.ndarray, total: int, split: str) -> None:
    where = f"{COUNTS} ({split})"
    if len(counts) and (counts.min() < 0 or counts.max() > MAX_SHARD_SAMPLES):
        bad = int(counts[(counts < 0) | (counts > MAX_SHARD_SAMPLES)][0])
        raise ValueError(f"{where}: a shard count of {bad} is not within 0..{MAX_SHARD_SAMPLES}")
    if int(counts.sum()) != total:
        raise ValueError(f"{where}: the shards' counts add up to {int(counts.sum())}, the split's count says "
                         f"{total}: the shard folder is inconsistent (re-run 'p2p shard')")


__all__ = ["COUNTS", "MANIFEST", "SplitCatalog", "ShardCounts", "ShardPaths", "TarSizes", "counts_file_bytes",
           "read_counts_file", "remove_counts_file", "write_counts_file"]
