"""Atomic file writes, used for everything p2p must never leave half-written: checkpoints,
shards and their indexes, manifests, results. The bytes go to `<path>.tmp` in the same folder,
are flushed and fsynced, and the temporary file is renamed over `path` (atomic on POSIX), then
the folder entry is fsynced. A crash or `kill -9` at any moment leaves either the old file or
the new one, plus at most a stale `.tmp` that the next write replaces."""

from __future__ import annotations

import os
from typing import BinaryIO, Callable

TMP_SUFFIX = ".tmp"


def fsync_dir(path: str | os.PathLike) -> None:
    """Make a rename in `path` durable (best effort: some filesystems refuse directory fsync)."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def replace_with(path: str | os.PathLike, write: Callable[[BinaryIO], object]) -> None:
    """Call `write(f)` on a temporary file, then move it over `path` durably."""
    path = os.fspath(path)
    tmp = path + TMP_SUFFIX
    try:
        with open(tmp, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    fsync_dir(os.path.dirname(path) or ".")


def write_bytes(path: str | os.PathLike, data: bytes) -> None:
    replace_with(path, lambda f: f.write(data))


def write_text(path: str | os.PathLike, text: str) -> None:
    write_bytes(path, text.encode("utf-8"))
