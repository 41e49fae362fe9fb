"""Compiling `kernel.c` once per machine and loading it.

The shared library is cached under `${XDG_CACHE_HOME:-~/.cache}/p2p/kernels/` (or
`$P2P_KERNEL_CACHE`), named by a hash of everything its machine code depends on: the source, the
compiler (its path and `--version`), the flags, and this CPU (model name and feature flags from
/proc/cpuinfo), because `-march=native` code can fault on another CPU of a shared home folder.
The compiler writes to a temporary name in the cache folder, which is then renamed over the
final name (atomic on POSIX), so two ranks compiling at once both end with a whole library and
a reader never loads half of one.

The flags: `-O3 -march=native` lets the compiler pick the vector width of this CPU (AVX-512,
AVX2 or plain SSE2: the kernel has no intrinsics), `-ffast-math` lets it vectorise the select
and reassociate. `-ffast-math` is given to the compile step only: at link time gcc would add
crtfastmath.o, whose constructor switches the whole process to flush-denormals-to-zero when the
library is loaded, changing torch's numerics everywhere (gcc < 13 does this even for -shared).

Anything that goes wrong (no compiler, a failed compile, a library that does not load) raises
`KernelUnavailable` with one line saying why; callers fall back to the eager path.
"""

from __future__ import annotations

import ctypes
import hashlib
import os
import shutil
import subprocess
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

SOURCE = Path(__file__).with_name("kernel.c")
VERSION = 1  # p2p_kernel_version() of kernel.c
COMPILE_FLAGS = ("-O3", "-march=native", "-ffast-math", "-fPIC", "-std=c11")
PORTABLE_FLAGS = ("-O3", "-ffast-math", "-fPIC", "-std=c11")  # baseline x86-64 / aarch64: the scalar-width path
COMPILE_TIMEOUT_S = 120


class KernelUnavailable(RuntimeError):
    """The CPU kernel cannot be built or loaded here; the message says why in one line."""


@dataclass(frozen=True)
class Built:
    lib: ctypes.CDLL
    path: Path
    compile_s: float  # 0.0 when it came from the cache
    cached: bool


def cache_dir() -> Path:
    if os.environ.get("P2P_KERNEL_CACHE"):
        return Path(os.environ["P2P_KERNEL_CACHE"])
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "p2p" / "kernels"


def find_compiler() -> str:
    """$CC, else cc, gcc or clang on PATH."""
    for name in ([os.environ["CC"]] if os.environ.get("CC") else []) + ["cc", "gcc", "clang"]:
        path = shutil.which(name)
        if path:
            return path
    raise KernelUnavailable("no C compiler found (set CC, or install gcc)")


def cpu_identity() -> str:
    """What -march=native depends on: the CPU model and its feature flags."""
    try:
        lines = Path("/proc/cpuinfo").read_text().splitlines()
    except OSError:
        import platform

        return platform.machine() + platform.processor()
    wanted = ("model name", "flags", "Features", "CPU part", "CPU implementer")
    seen = {}
    for line in lines:
        key, _, value = line.partition(":")
        key = key.strip()
        if key in wanted and key not in seen:
            seen[key] = value.strip()
    return repr(sorted(seen.items()))


def _compiler_version(cc: str) -> str:
    try:
        out = subprocess.run([cc, "--version"], capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.SubprocessError) as e:
        raise KernelUnavailable(f"cannot run the C compiler {cc}: {e}") from None
    if out.returncode:
        raise KernelUnavailable(f"{cc} --version failed: {out.stderr.strip()[:200]}")
    return out.stdout


def library_key(source: bytes, cc: str, flags: tuple[str, ...]) -> str:
    h = hashlib.sha256()
    for part in (source, cc.encode(), _compiler_version(cc).encode(), " ".join(flags).encode(),
                 cpu_identity().encode()):
        h.update(hashlib.sha256(part).digest())
    return h.hexdigest()[:24]


def _compile(cc: str, flags: tuple[str, ...], source: Path, out: Path) -> None:
    """Compile (with `flags`), then link without them (see the module docstring) into `out`."""
    obj = out.with_suffix(".o")
    steps = [[cc, *flags, "-c", str(source), "-o", str(obj)], [cc, "-shared", str(obj), "-o", str(out)]]
    try:
        for cmd in steps:
            proc = subprocess.run(cmd, capture_output=True, text=True, timeout=COMPILE_TIMEOUT_S)
            if proc.returncode:
                first = (proc.stderr.strip().splitlines() or [f"exit code {proc.returncode}"])[0]
                raise KernelUnavailable(f"compiling the CPU kernel failed ({' '.join(cmd[:2])} ...): {first[:300]}")
    except (OSError, subprocess.SubprocessError) as e:
        raise KernelUnavailable(f"compiling the CPU kernel failed: {e}") from None
    finally:
        obj.unlink(missing_ok=True)


def _load(path: Path) -> ctypes.CDLL:
    try:
        lib = ctypes.CDLL(str(path))
        version = lib.p2p_kernel_version()
    except (OSError, AttributeError) as e:
        raise KernelUnavailable(f"cannot load the CPU kernel {path}: {e}") from None
    if version != VERSION:
        raise KernelUnavailable(f"{path} is kernel version {version}, p2p needs {VERSION}")
    return lib


def build(flags: tuple[str, ...] = COMPILE_FLAGS, source: Path = SOURCE, folder: Path | None = None) -> Built:
    """The kernel library for this machine: from the cache, or compiled into it now."""
    cc = find_compiler()
    code = source.read_bytes()
    folder = folder or cache_dir()
    path = folder / f"p2p_kernel-{library_key(code, cc, flags)}.so"
    if path.is_file():
        return Built(_load(path), path, 0.0, True)
    try:
        folder.mkdir(parents=True, exist_ok=True)
        fd, tmp_name = tempfile.mkstemp(prefix=path.stem + ".", suffix=".tmp.so", dir=folder)
        os.close(fd)
    except OSError as e:
        raise KernelUnavailable(f"cannot write the kernel cache {folder}: {e}") from None
    tmp = Path(tmp_name)
    t0 = time.perf_counter()
    try:
        _compile(cc, flags, source, tmp)
        os.replace(tmp, path)  # atomic: a concurrent build of the same key writes the same bytes
    finally:
        tmp.unlink(missing_ok=True)
    return Built(_load(path), path, time.perf_counter() - t0, False)
