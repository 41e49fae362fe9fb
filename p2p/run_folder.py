"""The run folder: where a run's config, metrics, samples and checkpoints live, and the one
trust boundary between `run.name` and the filesystem.

`run_folder(out_dir, name)` is the only way a run folder is made from the config (train,
submit and its dry run, sweep elements, bench): `name` must be one path component of safe
characters (NAME_PATTERN: letters, digits, `._=+@-`, not starting with `.` or `-`), so no `..`,
`.`, empty name, absolute path, separator or control character reaches a path join, and the
folder, resolved with every symlink followed, must lie strictly inside `run.out_dir` (resolved
the same way). Anything else is a `UsageError`, one line, before anything is created.
`out_dir` itself is the user's choice and is trusted.

`lock_run_folder(folder)` makes one training process the folder's only writer: an exclusive
`flock` on `<folder>/.lock`, held until `release()` or the process's death (the kernel drops
it then, so a killed run never leaves a stale lock and a requeued or resumed run just takes
it). The file holds the holder's host, pid and start time, which a refused second trainer
names. Forked children (data loader workers) close their copy at once: a lock belongs to the
process that took it, not to an orphaned worker. On a filesystem that cannot lock (ENOLCK,
EOPNOTSUPP, ENOSYS: an NFS mount without a lock manager, Lustre mounted without -o flock or
localflock) the run goes on unlocked and `RunFolderLock.notice` says so.
"""

from __future__ import annotations

import datetime
import errno
import json
import os
import re
import socket
import weakref
from pathlib import Path

from p2p.errors import UsageError

NAME_PATTERN = re.compile(r"[A-Za-z0-9_][A-Za-z0-9._=+@-]*")
# NAME_MAX is 255 bytes; a sweep's log folder appends "-sweep", and a name this long is a mistake.
NAME_MAX = 200
LOCK_NAME = ".lock"
# flock errors that mean "this filesystem does not lock", not "someone holds it"
NO_LOCKING = (errno.ENOLCK, errno.EOPNOTSUPP, errno.ENOSYS, errno.EINVAL)


def check_run_name(name: object) -> str:
    """`name` if it is one safe path component, else a UsageError saying why."""
    if not isinstance(name, str) or not name:
        raise UsageError(f"run.name={name!r}: a run needs a name (one folder name under run.out_dir)")
    if len(name) > NAME_MAX:
        raise UsageError(f"run.name={name[:40]!r}... is {len(name)} characters long; at most {NAME_MAX}")
    if NAME_PATTERN.fullmatch(name) is None:
        raise UsageError(f"run.name={name!r}: must be one folder name under run.out_dir: letters, digits and "
                         f"._=+@- only, not starting with '.' or '-' (no '/', '..' or absolute paths)")
    return name


def run_folder(out_dir: str | os.PathLike, name: object) -> Path:
    """`out_dir/name`, checked: a safe name, and a folder that stays strictly inside `out_dir`
    once both are resolved (a symlink there pointing elsewhere is refused). The path is
    returned as given (relative stays relative), not resolved."""
    check_run_name(name)
    folder = Path(out_dir or ".") / name
    real_out = Path(os.path.realpath(out_dir or "."))
    real = Path(os.path.realpath(folder))
    if real == real_out or not real.is_relative_to(real_out):
        raise UsageError(f"run folder {folder} resolves to {real}, outside run.out_dir={str(out_dir)!r} "
                         f"({real_out}); remove the link or choose another run.name")
    return folder


class RunFolderBusy(UsageError):
    """Another live process holds the run folder's lock."""


_held: "weakref.WeakSet[RunFolderLock]" = weakref.WeakSet()


class RunFolderLock:
    """A held (or, where the filesystem cannot lock, an attempted) lock on one run folder."""

    def __init__(self, path: Path, fd: int | None, notice: str = ""):
        self.path, self._fd, self.notice = path, fd, notice
        if fd is not None:
            _held.add(self)

    @property
    def held(self) -> bool:
        return self._fd is not None

    def release(self) -> None:
        """Free the folder (closing the descriptor drops the flock); safe to call twice."""
        fd, self._fd = self._fd, None
        if fd is not None:
            _held.discard(self)
            os.close(fd)

    def __enter__(self) -> "RunFolderLock":
        return self

    def __exit__(self, *exc) -> None:
        self.release()

    def __del__(self):
        self.release()

    def _forget_in_child(self) -> None:
        """In a forked child: drop this process's copy of the descriptor without unlocking the
        parent's (flock belongs to the open file, which the parent still has open)."""
        fd, self._fd = self._fd, None
        if fd is not None:
            try:
                os.close(fd)
            except OSError:
                pass


def _close_in_child() -> None:
    for lock in list(_held):
        lock._forget_in_child()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_close_in_child)


def holder_text(path: Path) -> str:
    """Who holds the lock, from what its holder wrote into the file."""
    try:
        info = json.loads(path.read_text(errors="replace") or "{}")
    except (OSError, ValueError):
        info = {}
    if not isinstance(info, dict) or not info:
        return "a process that has not written its name yet"
    return (f"pid {info.get('pid', '?')} on host {info.get('host', '?')}, started {info.get('started', '?')}")


def lock_run_folder(folder: str | os.PathLike) -> RunFolderLock:
    """Take `folder`'s lock (creating the folder) or raise RunFolderBusy naming the holder."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / LOCK_NAME
    # O_NOFOLLOW: a .lock planted as a symlink cannot make this open (and truncate) another file
    try:
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o644)
    except OSError as e:
        if e.errno != errno.ELOOP:
            raise
        raise UsageError(f"{path} is a symbolic link, not p2p's lock file: remove it") from None
    try:
        import fcntl

        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        raise RunFolderBusy(f"run folder {folder} is in use by another training process ({holder_text(path)}; "
                            f"see {path}): wait for it to end or stop it, or choose another run.name") from None
    except OSError as e:
        os.close(fd)
        if e.errno not in NO_LOCKING:
            raise
        return RunFolderLock(path, None, f"cannot lock the run folder {folder} on this filesystem "
                                         f"({os.strerror(e.errno)}): nothing stops a second trainer on the same "
                                         f"run.name here, so start only one")
    started = datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")
    info = json.dumps({"host": socket.gethostname(), "pid": os.getpid(), "started": started}) + "\n"
    lock = RunFolderLock(path, fd)
    try:  # who holds it, for the message of a refused second trainer
        os.ftruncate(fd, 0)
        os.pwrite(fd, info.encode(), 0)
    except OSError:  # a full disk: the lock holds all the same, the message says less
        pass
    return lock
