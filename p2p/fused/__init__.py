"""The device step fused: crop, flip, colour conversion and the model's normalisation of a uint8
batch in one pass over its pixels, for the tasks that convert colour (colorize: L/50 - 1 and
ab/110; gray2rgb: the luma and RGB in [-1, 1]).

- CPU: a small C kernel (`kernel.c`, built once per machine: p2p.fused.build), the window
  offsets and mirror applied while reading, sRGB gamma by the 256-entry table, the 3 x 3 matrix,
  the CIE transfer function and the normalisation written once, rows split over a few threads
  (p2p.fused.cpu).
- CUDA: the same computation as one `torch.compile`d (Triton) function (p2p.fused.cuda).
- Anywhere else, with `data.device_step=eager`, or when the kernel cannot be built or compiled:
  the eager chain of torch ops (p2p.augment + p2p.color), with one notice saying why.

All paths crop by the same `p2p.augment.Windows`, so a generator gives the same windows
whichever runs, and all compute in float32 with autocast off. They agree with each other and
with skimage to float32 precision (tests/test_fused.py), not bit for bit: the cube root is
computed differently on each.
"""

from __future__ import annotations

import time
import warnings

import torch

from p2p import color
from p2p.augment import Windows

MODES = ("fused", "eager")


def _unit_table(device: torch.device) -> torch.Tensor:
    """code / 255 for every 8-bit code, as float32 (what `x.float() / 255` gives)."""
    return torch.arange(256, dtype=torch.float32).div_(255.0).to(device)


class DeviceStep:
    """The fused device step of one process; `None` from a method means "run the eager path"."""

    def __init__(self, mode: str = "fused"):
        if mode not in MODES:
            raise ValueError(f"device step mode {mode!r}: choose one of {', '.join(MODES)}")
        self.mode = mode
        self.unavailable: dict[str, str] = {}  # device type -> why the fused path is off there
        # what building the kernel (or loading it from the cache: "cpu") or compiling the GPU
        # functions (by task name) cost this process
        self.compile_s: dict[str, float] = {}
        self._compiled: dict[str, object] = {}
        self._tables: dict[tuple, torch.Tensor] = {}
        self.report = None  # where a fallback found mid-run goes (a run's notices); None: a Python warning

    # ---- what runs where -----------------------------------------------------------------

    def implementation(self, device: torch.device) -> str:
        """'c-kernel', 'torch.compile' or 'eager' (with the reason) for batches on `device`."""
        device = torch.device(device)
        if self.mode == "eager":
            return "eager (data.device_step=eager)"
        if device.type == "cpu":
            self._cpu_ready()
        why = self.unavailable.get(device.type)
        if device.type not in ("cpu", "cuda"):
            why = f"no fused kernel for {device.type}"
        if why:
            return f"eager ({why})"
        return "c-kernel" if device.type == "cpu" else "torch.compile"

    def notice(self, device: torch.device) -> str | None:
        """One line for the run's notices when the fused step was asked for and cannot run."""
        impl = self.implementation(device)
        if self.mode == "fused" and impl.startswith("eager"):
            return f"data.device_step=fused: {impl[len('eager ('):-1]}; running the eager device step"
        return None

    def _cpu_ready(self) -> bool:
        if "cpu" in self.unavailable:
            return False
        from p2p.fused.build import KernelUnavailable
        from p2p.fused.cpu import library

        try:
            t0 = time.perf_counter()
            built = library()
            self.compile_s.setdefault("cpu", built.compile_s if not built.cached else time.perf_counter() - t0)
            return True
        except KernelUnavailable as e:
            self.unavailable["cpu"] = str(e)
            return False

    def _fail(self, device_type: str, why: str) -> None:
        self.unavailable[device_type] = why
        text = f"data.device_step=fused: {why}; running the eager device step"
        if self.report is not None:
            self.report(text)
        else:
            warnings.warn(text, stacklevel=3)

    def _table(self, kind: str, device: torch.device) -> torch.Tensor:
        key = (kind, device)
        if key not in self._tables:
            self._tables[key] = (color._gamma_table(device) if kind == "gamma" else _unit_table(device)).contiguous()
        return self._tables[key]

    # ---- the tasks -----------------------------------------------------------------------

    def colorize(self, images: torch.Tensor, windows: Windows, size: int):
        """(L/50 - 1, ab/110) of the windows, float32, or None (use the eager path)."""
        return self._run("colorize", images, windows, size, "gamma")

    def gray2rgb(self, images: torch.Tensor, windows: Windows, size: int):
        """(luma, RGB) of the windows in [-1, 1], float32, or None (use the eager path)."""
        return self._run("gray2rgb", images, windows, size, "unit")

    def _run(self, name: str, images: torch.Tensor, windows: Windows, size: int, table: str):
        if self.mode == "eager" or images.dtype != torch.uint8 or images.shape[1] != 3:
            return None
        device = images.device
        with torch.autocast(device_type=device.type, enabled=False):
            if device.type == "cpu" and self._cpu_ready():
                from p2p.fused import cpu

                tables = (self._table(table, device),) + ((self._matrix(),) if name == "colorize" else ())
                return getattr(cpu, name)(images, windows, size, size, *tables)
            if device.type == "cuda" and "cuda" not in self.unavailable:
                return self._run_compiled(name, images, windows, size, self._table(table, device))
        return None

    def _matrix(self) -> torch.Tensor:
        key = ("matrix", torch.device("cpu"))
        if key not in self._tables:
            self._tables[key] = torch.tensor(color._WHITE_XYZ_FROM_RGB, dtype=torch.float32).reshape(9).contiguous()
        return self._tables[key]

    def _run_compiled(self, name: str, images, windows: Windows, size: int, table: torch.Tensor):
        from p2p.fused import cuda

        fn = self._compiled.get(name)
        if fn is None:
            fn = self._compiled[name] = torch.compile(getattr(cuda, name), fullgraph=True, dynamic=False)
        rows, cols = cuda.window_indices(windows.top, windows.left, windows.mirror, size, images.device)
        first = name not in self.compile_s
        t0 = time.perf_counter()
        try:
            out = fn(images, rows, cols, table)
        except Exception as e:  # Inductor/Triton failures have many types; the eager path always works
            self._fail("cuda", f"torch.compile of the fused {name} step failed ({type(e).__name__}: "
                               f"{str(e).splitlines()[0][:200] if str(e) else ''})")
            return None
        if first:
            torch.cuda.synchronize(images.device)  # note: a host sync, once, to time the compile
            self.compile_s[name] = time.perf_counter() - t0
        return out
