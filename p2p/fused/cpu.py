"""The C kernel (kernel.c) on CPU tensors: argument checks, then the rows of a batch split over a
small pool of Python threads (ctypes releases the GIL during each call, so they run in
parallel), sized by `torch.get_num_threads()` at each call.

Every pointer handed to C is checked here first: dtype, device, contiguity of the outputs, the
shapes, and that every image's window lies inside its image, so the kernel never reads or
writes out of bounds. The input may have any strides (NCHW or channels-last batches).
"""

from __future__ import annotations

import ctypes
import threading
from concurrent.futures import ThreadPoolExecutor

import torch

from p2p.fused.build import COMPILE_FLAGS, Built, build

_LOCK = threading.Lock()
_BUILT: dict[tuple[str, ...], Built] = {}
_POOL: ThreadPoolExecutor | None = None
_POOL_SIZE = 0
MIN_ROWS_PER_TASK = 16  # below this a thread's start-up costs more than its share of rows

_P, _I64, _I = ctypes.c_void_p, ctypes.c_int64, ctypes.c_int
_SIGNATURE = [_P, _I64, _I64, _I64, _I64, _P, _P, _P, _I, _I, _I64, _I64, _P]


def library(flags: tuple[str, ...] = COMPILE_FLAGS) -> Built:
    """The loaded kernel, built (or found in the cache) on first use; raises KernelUnavailable."""
    with _LOCK:
        built = _BUILT.get(flags)
        if built is None:
            built = build(flags)
            built.lib.p2p_colorize.argtypes = _SIGNATURE + [_P, _P, _P]
            built.lib.p2p_gray2rgb.argtypes = _SIGNATURE + [_P, _P]
            for f in (built.lib.p2p_colorize, built.lib.p2p_gray2rgb):
                f.restype = None
            _BUILT[flags] = built
        return built


def _pool(threads: int) -> ThreadPoolExecutor:
    """A pool with at least `threads` - 1 workers (the caller's thread takes a share too); it only
    grows, so batches of varying size do not start threads again."""
    global _POOL, _POOL_SIZE
    with _LOCK:
        if _POOL is None or _POOL_SIZE < threads - 1:
            old, _POOL = _POOL, ThreadPoolExecutor(max(1, threads - 1), thread_name_prefix="p2p-fused")
            _POOL_SIZE = max(1, threads - 1)
            if old is not None:
                old.shutdown(wait=False)  # its running calls finish; it takes no more
        return _POOL


def check_windows(images: torch.Tensor, top: torch.Tensor, left: torch.Tensor, mirror: torch.Tensor,
                  out_h: int, out_w: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """int32 / uint8 contiguous copies of the windows, after checking each fits its image."""
    if images.dtype != torch.uint8 or images.device.type != "cpu" or images.dim() != 4 or images.shape[1] != 3:
        raise ValueError(f"expected a uint8 CPU batch N x 3 x H x W, got {images.dtype} {tuple(images.shape)} "
                         f"on {images.device}")
    n, _, h, w = images.shape
    if out_h < 1 or out_w < 1:
        raise ValueError(f"window size {out_h} x {out_w} must be positive")
    top, left, mirror = (t.reshape(-1).cpu() for t in (top, left, mirror))
    if not (len(top) == len(left) == len(mirror) == n):
        raise ValueError(f"{n} images but {len(top)} / {len(left)} / {len(mirror)} window entries")
    if n and (int(top.min()) < 0 or int(left.min()) < 0 or int(top.max()) + out_h > h or int(left.max()) + out_w > w):
        raise ValueError(f"a {out_h} x {out_w} window at top {top.tolist()}, left {left.tolist()} does not fit "
                         f"{h} x {w} images")
    return (top.to(torch.int32).contiguous(), left.to(torch.int32).contiguous(),
            mirror.to(torch.uint8).contiguous())


def _need(ok: bool, what: str, t: torch.Tensor) -> None:
    if not ok:
        raise ValueError(f"expected {what}, got {t.dtype} {tuple(t.shape)} on {t.device}")


def _run_rows(fn, rows: int, args_before: tuple, args_after: tuple, threads: int) -> None:
    """fn(*args_before, row0, row1, *args_after) over [0, rows), split into `threads` ranges."""
    tasks = max(1, min(threads, rows // MIN_ROWS_PER_TASK))
    if tasks == 1:
        fn(*args_before, 0, rows, *args_after)
        return
    bounds = [rows * k // tasks for k in range(tasks + 1)]
    futures = [_pool(tasks).submit(fn, *args_before, bounds[k], bounds[k + 1], *args_after) for k in range(1, tasks)]
    fn(*args_before, bounds[0], bounds[1], *args_after)  # this thread takes the first range
    for f in futures:
        f.result()


def _launch(name: str, images: torch.Tensor, windows, out_h: int, out_w: int, tables: tuple[torch.Tensor, ...],
            outs: tuple[torch.Tensor, ...], threads: int | None, flags: tuple[str, ...]) -> None:
    top, left, mirror = check_windows(images, *windows, out_h, out_w)
    n = images.shape[0]
    for t, size in zip(tables, (256, 9)):
        _need(t.dtype == torch.float32 and t.is_contiguous() and t.device.type == "cpu" and t.numel() == size,
              f"a table of {size} contiguous float32 values on the CPU", t)
    for o, c in zip(outs, (1, 2 if name == "colorize" else 3)):
        _need(o.dtype == torch.float32 and o.is_contiguous() and o.device.type == "cpu"
              and tuple(o.shape) == (n, c, out_h, out_w), f"a contiguous float32 CPU output {(n, c, out_h, out_w)}", o)
    if n == 0:
        return
    fn = getattr(library(flags).lib, f"p2p_{name}")
    sn, sc, sy, sx = images.stride()
    before = (images.data_ptr(), sn, sc, sy, sx, top.data_ptr(), left.data_ptr(), mirror.data_ptr(), out_h, out_w)
    after = tuple(t.data_ptr() for t in tables) + tuple(o.data_ptr() for o in outs)
    # the tensors above stay referenced until every call has returned
    _run_rows(fn, n * out_h, before, after, threads or torch.get_num_threads())


def colorize(images: torch.Tensor, windows, out_h: int, out_w: int, table: torch.Tensor, matrix: torch.Tensor,
             threads: int | None = None, flags: tuple[str, ...] = COMPILE_FLAGS) -> tuple[torch.Tensor, torch.Tensor]:
    n = images.shape[0]
    l_norm = torch.empty((n, 1, out_h, out_w), dtype=torch.float32)
    ab_norm = torch.empty((n, 2, out_h, out_w), dtype=torch.float32)
    _launch("colorize", images, windows, out_h, out_w, (table, matrix), (l_norm, ab_norm), threads, flags)
    return l_norm, ab_norm


def gray2rgb(images: torch.Tensor, windows, out_h: int, out_w: int, table: torch.Tensor,
             threads: int | None = None, flags: tuple[str, ...] = COMPILE_FLAGS) -> tuple[torch.Tensor, torch.Tensor]:
    n = images.shape[0]
    gray = torch.empty((n, 1, out_h, out_w), dtype=torch.float32)
    rgb = torch.empty((n, 3, out_h, out_w), dtype=torch.float32)
    _launch("gray2rgb", images, windows, out_h, out_w, (table,), (gray, rgb), threads, flags)
    return gray, rgb
