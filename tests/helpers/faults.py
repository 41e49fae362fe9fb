"""Faults the tests in tests/faults/ inject, each the real thing on this machine:

- `small_disk(folder, mb)`: a size-limited tmpfs mounted at `folder` (root only; see
  requirements.require_tmpfs), unmounted after; `fill_disk(disk, leave)` fills it up to
  `leave` bytes free with a filler file, `free_disk` removes the filler again;
- `flip_byte(path)`: silent corruption of a file in place (one byte inverted, the size kept);
  `truncate_copy(path)`: a half-copied file (a new file with the first half, renamed over);
- `loader_workers(pid)`: the DataLoader worker processes of a trainer, to SIGKILL one;
- `task_pids(job_id, procid)`: the processes of one Slurm task of a job on this machine (the
  local cluster's nodes all run here), found by their SLURM_* environment.
"""

from __future__ import annotations

import contextlib
import errno
import os
import subprocess
from pathlib import Path

FILLER = "filler.bin"


@contextlib.contextmanager
def small_disk(folder: Path, mb: int = 32):
    folder.mkdir(parents=True, exist_ok=True)
    subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={mb}m", "tmpfs", str(folder)], check=True, timeout=30)
    try:
        yield folder
    finally:
        if subprocess.run(["umount", str(folder)], capture_output=True, timeout=60).returncode:
            subprocess.run(["umount", "-l", str(folder)], capture_output=True, timeout=60)  # still busy: detach


def free_bytes(folder: Path) -> int:
    st = os.statvfs(folder)
    return st.f_bavail * st.f_frsize


def fill_disk(disk: Path, leave: int) -> int:
    """Write a filler so that about `leave` bytes stay free; returns the bytes free after."""
    free_disk(disk)
    room = free_bytes(disk) - leave
    if room > 0:
        try:
            with open(disk / FILLER, "wb") as f:
                chunk = b"\0" * (1 << 20)
                while room > 0:
                    f.write(chunk[: min(room, len(chunk))])
                    room -= len(chunk)
        except OSError as e:  # a writer of the process under test (a tracker's thread) took the rest
            if e.errno != errno.ENOSPC:
                raise
    return free_bytes(disk)


def free_disk(disk: Path) -> None:
    (disk / FILLER).unlink(missing_ok=True)


def flip_byte(path: Path, where: float = 0.5) -> None:
    """Invert one byte at `where` (a fraction of the size) in place: same inode, same size."""
    with open(path, "r+b") as f:
        f.seek(int(os.path.getsize(path) * where))
        b = f.read(1)
        f.seek(-1, os.SEEK_CUR)
        f.write(bytes([b[0] ^ 0xFF]))


def truncate_copy(path: Path) -> None:
    """Replace `path` by a new file holding only its first half (a copy that stopped half-way)."""
    data = path.read_bytes()
    tmp = path.with_name(path.name + ".half")
    tmp.write_bytes(data[: len(data) // 2])
    os.replace(tmp, path)


def loader_workers(pid: int) -> list[int]:
    """A trainer's DataLoader workers: its forked children running the same command line."""
    try:
        cmd = Path(f"/proc/{pid}/cmdline").read_bytes()
        children = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
    except OSError:
        return []
    out = []
    for c in children:
        try:
            if Path(f"/proc/{c}/cmdline").read_bytes() == cmd:
                out.append(int(c))
        except OSError:
            pass
    return out


def task_pids(job_id: str, procid: int) -> list[int]:
    """Python processes of task `procid` of Slurm job `job_id` (of any step) on this machine."""
    found = []
    for d in Path("/proc").iterdir():
        if not d.name.isdigit():
            continue
        try:
            env = dict(kv.split("=", 1) for kv in (d / "environ").read_bytes().decode(errors="replace").split("\0")
                       if "=" in kv)
            exe = os.path.basename((d / "cmdline").read_bytes().split(b"\0")[0].decode(errors="replace"))
        except OSError:
            continue
        if env.get("SLURM_JOB_ID") == job_id and env.get("SLURM_PROCID") == str(procid) and "python" in exe:
            found.append(int(d.name))
    return found
