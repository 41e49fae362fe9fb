"""Atomic file writes, used for everything p2p must never leave half-written: checkpoints,
shards and their indexes, manifests, samples, results. The bytes go to `<path>.tmp` in the same
folder, are flushed and fsynced, and the temporary file is renamed over `path` (atomic on
POSIX), then the folder entry is fsynced. A crash or `kill -9` at any moment leaves either the
old file or the new one, plus at most a stale `.tmp` that the next write replaces.

Ctrl-C (SIGINT) and a DataLoader worker's death (SIGCHLD, whose handler raises) wait until the
file is in place: raised from inside torch.save's writer they would leave its C++ zip writer
half done, which then aborts the process (SIGABRT) when it is freed, or hide the real error
behind "unexpected pos".

A write that fails (a full disk, a quota, an I/O error) removes its temporary file and raises
`WriteError` naming the path, the bytes the file needed and the bytes free there; the previous
file is untouched. `append_text` (metrics.jsonl) cuts a failed append back off, so the file
never ends in half a line.
"""

from __future__ import annotations

import contextlib
import errno
import os
import shutil
import signal
import threading
from typing import BinaryIO, Callable

from p2p.errors import WriteError

TMP_SUFFIX = ".tmp"
SPACE_ERRNOS = (errno.ENOSPC, errno.EDQUOT, errno.EFBIG)


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


def human_bytes(n: int | None) -> str:
    if n is None:
        return "an unknown amount"
    for unit, size in (("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if n >= size:
            return f"{n / size:.1f} {unit}"
    return f"{n} bytes"


def free_bytes(path: str | os.PathLike) -> int | None:
    """Bytes an unprivileged writer may still use where `path` lives (None when unknown)."""
    folder = os.fspath(path)
    while folder and not os.path.isdir(folder):
        folder = os.path.dirname(folder)
    try:
        return shutil.disk_usage(folder or ".").free
    except OSError:
        return None


def write_error(path: str | os.PathLike, error: OSError, needed: int | None, kept: str = "",
                approx: bool = False) -> WriteError:
    """The one-line error of a failed write of `path` (`needed` bytes in all, an estimate when
    `approx`). `kept` says what survived; by default the previous file, when there is one."""
    path = os.fspath(path)
    free = free_bytes(path)
    if not kept:
        kept = (f"the previous {os.path.basename(path)} is unchanged" if os.path.exists(path)
                else "nothing was left behind")
    if error.errno in SPACE_ERRNOS:
        why = {errno.EDQUOT: "disk quota exceeded", errno.EFBIG: "file too large for the filesystem"}.get(
            error.errno, "no space left on device")
        size = ("about " if approx and needed is not None else "") + human_bytes(needed)
        text = f"cannot write {path}: {why}: it needs {size}, {human_bytes(free)} free there; {kept}"
    else:
        text = f"cannot write {path}: {error.strerror or error} (errno {error.errno}); {kept}"
    return WriteError(text, path, needed, free)


class _Watched:
    """The file a writer sees: it remembers the OS error of a failed write, which torch.save
    turns into an uninformative RuntimeError ("unexpected pos ...")."""

    def __init__(self, f: BinaryIO):
        self._f, self.error = f, None

    def write(self, data) -> int:
        try:
            return self._f.write(data)
        except OSError as e:
            self.error = e
            raise

    def __getattr__(self, name):
        return getattr(self._f, name)


class _Counter:
    """A sink that only counts bytes: how much space a write needs."""

    def __init__(self):
        self.n = 0

    def write(self, data) -> int:
        self.n += len(data)
        return len(data)

    def flush(self) -> None:
        pass


def size_of(write: Callable[[BinaryIO], object]) -> int | None:
    """The bytes `write` produces (it runs once more, into a counter); None if it cannot."""
    counter = _Counter()
    try:
        write(counter)
    except Exception:
        return None
    return counter.n


def _remove(path: str) -> None:
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass
    except OSError:
        pass  # cannot happen on a sane filesystem; the next write replaces a stale .tmp anyway


# the signals whose Python handlers raise in the middle of a write (the others p2p handles only set a flag)
HELD_SIGNALS = (signal.SIGINT, signal.SIGCHLD)


@contextlib.contextmanager
def signals_held():
    """Run the body with SIGINT and SIGCHLD recorded instead of handled, then hand each one that
    came to the handler it would have reached. Only the main thread can swap handlers (Python's
    handlers only ever run there), so elsewhere the body runs as it is."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    came: list[int] = []
    previous = {s: signal.signal(s, lambda signum, frame: came.append(signum)) for s in HELD_SIGNALS}
    try:
        yield
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)
        for s in dict.fromkeys(came):  # each once, in the order they came
            handler = previous[s]
            if callable(handler):
                handler(s, None)  # may raise (KeyboardInterrupt, the DataLoader's RuntimeError)
            elif handler == signal.SIG_DFL and s == signal.SIGINT:
                raise KeyboardInterrupt


def replace_with(path: str | os.PathLike, write: Callable[[BinaryIO], object]) -> None:
    """Call `write(f)` on a temporary file, then move it over `path` durably. On failure the
    temporary file is removed and an OS error becomes `WriteError` (see the module docstring).
    A Ctrl-C or a worker's death during it is handled once the file is in place."""
    with signals_held():
        _replace_with(os.fspath(path), write)


def _replace_with(path: str, write: Callable[[BinaryIO], object]) -> None:
    tmp = path + TMP_SUFFIX
    watched = None
    try:
        with open(tmp, "wb") as f:
            watched = _Watched(f)
            write(watched)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException as e:
        _remove(tmp)
        cause = e if isinstance(e, OSError) and not isinstance(e, WriteError) else getattr(watched, "error", None)
        if cause is None:
            raise
        raise write_error(path, cause, size_of(write)) from None
    fsync_dir(os.path.dirname(path) or ".")


def write_bytes(path: str | os.PathLike, data: bytes) -> None:
    replace_with(path, lambda f: f.write(data))


def write_text(path: str | os.PathLike, text: str) -> None:
    write_bytes(path, text.encode("utf-8"))


def append_text(path: str | os.PathLike, text: str) -> None:
    """Append `text` durably (fsynced); a failed append is cut back off, so the file keeps only
    whole records, and raises `WriteError`."""
    data = text.encode("utf-8")
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        start = os.lseek(fd, 0, os.SEEK_END)
        try:
            view = memoryview(data)
            while view:  # a write to a nearly full disk may write part and return its length
                view = view[os.write(fd, view):]
            os.fsync(fd)
        except OSError as e:
            try:
                os.ftruncate(fd, start)
            except OSError:
                pass
            raise write_error(path, e, len(data), kept="nothing of this record was kept") from None
    finally:
        os.close(fd)
