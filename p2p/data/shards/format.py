"""The shard folder format: names, the manifest, sample keys, the val split rule and the skip
records. What a reader of a shard folder needs, and nothing that writes one.

Layout of OUT::

    OUT/manifest.json                      options, counts per split and shard, sizes, skipped files;
                                           written last, `complete` false if a shard failed
    OUT/train/shard-000000.tar             <key>.jpg + <key>.json per sample (plain USTAR/GNU tar, no PAX)
    OUT/train/shard-000000.idx             DALI's index (wds2idx format v1.2, p2p.data.shards.index)
    OUT/train/shard-000000.meta.json       sidecar: the shard's plan hash, counts, skipped files
    OUT/val/...
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import stat
from pathlib import Path

from p2p.data.images import MAX_ASPECT, REJECT_REASONS

FORMAT = "p2p-wds-shards"
FORMAT_VERSION = 1
MANIFEST = "manifest.json"
SPLITS = ("train", "val")

# Our files in OUT/<split>/: group 1 the shard number, group 3 set on a temporary file
SHARD_FILE = re.compile(r"^shard-(\d{6})\.(tar|idx|meta\.json)(\.tmp)?$")
_KEY_BAD = re.compile(r"[.\s\x00-\x1f\x7f]")

# Skip reasons (manifest `skipped[].reason`), each with what it means.
REASONS = {
    "empty": "zero-byte file",
    "unreadable": "cannot be opened or listed (permissions, I/O error, broken link)",
    "not_image": REJECT_REASONS["not_image"],
    "unsupported_format": REJECT_REASONS["unsupported_format"],
    "not_image_ext": "file extension is not an image extension (not opened)",
    "hidden": "name starts with a dot (hidden file or folder; not opened)",
    "outside_source": "a link that leads out of the source folder (not followed)",
    "truncated": "image data ends early",
    "decode_error": "image data is corrupt or in an unsupported variant",
    "too_large": "more pixels than the limit p2p reads (p2p.data.images.DEFAULT_MAX_PIXELS)",
    "too_small": "short side below --size (use --upscale-small to keep it)",
    "extreme_aspect": f"long side more than {MAX_ASPECT:g}x the short side",
    "grayscale": "no colour to learn (--task colorize only)",
    "not_side_by_side": "paired image narrower than tall: not two halves A|B",
    "unpaired": "no partner with the same relative path in the other folder",
    "duplicate_key": "another file maps to the same sample key",
    "label_not_ids": "--task labels: a colour image given as a label map (it must hold one channel of ids)",
    "label_not_png": "--task labels: a label or instance map that is not a PNG (maps must be lossless)",
    "label_out_of_range": "--task labels: a class id >= --label-nc (or >= 255)",
    "size_mismatch": "--task labels: a map whose size differs from its photo's",
}


def shard_stem(index: int) -> str:
    """The file name of shard `index` without its extension."""
    return f"shard-{index:06d}"


def skip_record(path: str, reason: str, detail: str = "") -> dict:
    """One entry of the manifest's `skipped` list; the detail defaults to what the reason means."""
    return {"path": path, "reason": reason, "detail": detail or REASONS.get(reason, "")}


def sample_key(rel_stem: str) -> str:
    """The WebDataset key of a relative path without extension: `.`, whitespace and control
    characters become `_` (WebDataset/DALI split at the first dot; DALI's index on spaces)."""
    return _KEY_BAD.sub("_", rel_stem)


def hash_unit(key: str) -> float:
    """A number in [0, 1) from the key alone (stable across runs, machines, --workers, --seed).
    The val split rule of `p2p shard` and the folder backend: a key is val when
    hash_unit(key) < val_fraction."""
    return int.from_bytes(hashlib.sha1(key.encode("utf-8")).digest()[:8], "big") / 2.0**64


MAX_MANIFEST_BYTES = 256 << 20  # a manifest of a million shards is well under this
MEMBER_BYTES = 1024  # the least a sample takes in a tar: one header block and one data block
# a shard of 2**32 samples is a tar of at least 4 TiB: no count above is real, and counts under
# it add up far from int64's end
MAX_SHARD_SAMPLES = 1 << 32


def _regular(path: Path, what: str) -> int:
    """The size of `path`, a regular file; ValueError otherwise (a FIFO would block the reader,
    a device or socket is never a shard). FileNotFoundError when it is missing."""
    st = os.stat(path)
    if not stat.S_ISREG(st.st_mode):
        raise ValueError(f"{path} is not a regular file ({what} must be one)")
    return st.st_size


def manifest_stat(out_dir: str | os.PathLike) -> os.stat_result:
    """os.stat of OUT/manifest.json. Raises FileNotFoundError when it is missing, ValueError when
    it is not a regular file or larger than any p2p shard manifest."""
    path = Path(out_dir) / MANIFEST
    st = os.stat(path)
    if not stat.S_ISREG(st.st_mode):
        raise ValueError(f"{path} is not a regular file (a manifest must be one)")
    if st.st_size > MAX_MANIFEST_BYTES:
        raise ValueError(f"{path} is larger than {MAX_MANIFEST_BYTES >> 20} MB: not a p2p shard manifest")
    return st


def read_manifest_bytes(out_dir: str | os.PathLike) -> bytes:
    """The bytes of OUT/manifest.json, unparsed; raises like manifest_stat."""
    path = Path(out_dir) / MANIFEST
    manifest_stat(out_dir)
    with open(path, "rb") as f:
        data = f.read(MAX_MANIFEST_BYTES + 1)  # the file may have grown since the stat
    if len(data) > MAX_MANIFEST_BYTES:
        raise ValueError(f"{path} is larger than {MAX_MANIFEST_BYTES >> 20} MB: not a p2p shard manifest")
    return data


def manifest_sha256(out_dir: str | os.PathLike) -> str:
    """The sha256 of OUT/manifest.json, read in blocks (the file is never held whole); raises
    like manifest_stat."""
    path = Path(out_dir) / MANIFEST
    manifest_stat(out_dir)
    h, left = hashlib.sha256(), MAX_MANIFEST_BYTES + 1
    with open(path, "rb") as f:
        while left > 0 and (block := f.read(min(left, 1 << 20))):
            h.update(block)
            left -= len(block)
    return h.hexdigest()


def read_manifest(out_dir: str | os.PathLike) -> dict:
    """The manifest of a shard folder (OUT/manifest.json). Raises FileNotFoundError when it is
    missing, ValueError when it is not a p2p shard manifest (not a regular file, too big, not
    JSON, nested too deep, no format)."""
    path = Path(out_dir) / MANIFEST
    data = read_manifest_bytes(out_dir)
    try:
        m = json.loads(data.decode("utf-8"))
    except RecursionError:
        raise ValueError(f"{path}: JSON nested too deep to be a p2p shard manifest") from None
    except ValueError as e:  # JSONDecodeError, UnicodeDecodeError
        raise ValueError(f"{path} is not valid JSON ({str(e).splitlines()[0][:200]})") from None
    if not isinstance(m, dict) or m.get("format") != FORMAT:
        raise ValueError(f"{path} is not a p2p shard manifest (no format={FORMAT!r})")
    return m


def _plain_name(value, field: str, where: str) -> str:
    """A shard's file name as the manifest gives it: a plain name inside the split folder (never
    a path that leaves it)."""
    if not isinstance(value, str) or not value or value in (".", "..") or os.path.basename(value) != value \
            or "\\" in value or "\x00" in value:
        raise ValueError(f"{where}: {field} {value!r} is not a file name inside the split folder")
    return value


def split_shards(m: dict, split: str, where: str = MANIFEST) -> list[tuple[str, str, int]]:
    """(tar name, index name, sample count) of each shard of a split, checked: a split that is not
    an object, shards that are not a list of objects, a name that leaves the split folder or a
    count that is not a non-negative integer raise ValueError naming the entry."""
    part = m.get(split, {})
    if not isinstance(part, dict):
        raise ValueError(f"{where}: {split!r} must be an object with 'shards', not {type(part).__name__}")
    entries = part.get("shards", [])
    if not isinstance(entries, list):
        raise ValueError(f"{where}: {split}.shards must be a list, not {type(entries).__name__}")
    out = []
    for i, e in enumerate(entries):
        at = f"{where}: {split}.shards[{i}]"
        if not isinstance(e, dict):
            raise ValueError(f"{at} must be an object with file, index and count")
        if "file" not in e or "count" not in e:
            raise ValueError(f"{at} has no {'file' if 'file' not in e else 'count'}")
        tar = _plain_name(e["file"], "file", at)
        idx = _plain_name(e.get("index", (tar[:-4] if tar.endswith(".tar") else tar) + ".idx"), "index", at)
        count = e["count"]
        if isinstance(count, bool) or not isinstance(count, int) or count < 0:
            raise ValueError(f"{at}: count {count!r} is not a non-negative integer")
        if count > MAX_SHARD_SAMPLES:
            raise ValueError(f"{at}: count {count} is more than any shard holds ({MAX_SHARD_SAMPLES})")
        out.append((tar, idx, count))
    return out


def split_total(m: dict, split: str, counts, where: str = MANIFEST) -> int:
    """The sum of a split's shard counts, checked against the split's `count` where the manifest
    has one: a shard count edited alone (or a total) is refused before any plan is sized by it."""
    total = sum(int(c) for c in counts)
    claimed = m.get(split, {}).get("count")
    if isinstance(claimed, int) and not isinstance(claimed, bool) and claimed != total:
        raise ValueError(f"{where}: the {split} shards' counts add up to {total}, its {split}.count says "
                         f"{claimed}: the manifest is inconsistent (re-run 'p2p shard')")
    return total


def check_shard_file(tar_path: str | os.PathLike, count: int) -> int:
    """The size of a shard's tar, checked before anything opens it: a regular file (FileNotFound
    when missing, ValueError for a FIFO, device or folder) big enough for `count` samples."""
    size = _regular(Path(tar_path), "a shard")
    if count * MEMBER_BYTES > size:
        raise ValueError(f"{tar_path}: the manifest says {count} samples, which cannot fit in its {size} bytes")
    return size


def shard_files(out_dir: str | os.PathLike, split: str = "train") -> list[tuple[str, str]]:
    """(tar path, idx path) of every non-empty shard of a split, in order, from the manifest."""
    m = read_manifest(out_dir)
    base = Path(out_dir) / split
    return [(str(base / tar), str(base / idx)) for tar, idx, _ in split_shards(m, split)]
