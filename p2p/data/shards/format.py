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
from pathlib import Path

FORMAT = "p2p-wds-shards"
FORMAT_VERSION = 1
MANIFEST = "manifest.json"
SPLITS = ("train", "val")
MAX_ASPECT = 10.0  # long/short side above this is skipped (a strip, not a photo)

# Our files in OUT/<split>/: group 1 the shard number, group 3 set on a temporary file
SHARD_FILE = re.compile(r"^shard-(\d{6})\.(tar|idx|meta\.json)(\.tmp)?$")
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
