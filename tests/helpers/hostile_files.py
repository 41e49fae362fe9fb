"""Hostile and broken input files, made from scratch: an EPS named .jpg, JPEG/PNG headers that
declare far more pixels than they hold (decompression bombs), a 16-bit gray PNG, a thin strip,
a truncated JPEG; a recording `gs` put first on PATH (Pillow's EPS plugin runs Ghostscript
through PATH); a tiny generator saved as a bare state dict (what `p2p predict` and `p2p eval`
load in milliseconds); and the CLI run in-process with its exit code and output."""

from __future__ import annotations

import contextlib
import io
import os
import stat
import struct
import zlib
from pathlib import Path

import numpy as np
from PIL import Image

EPS = (b"%!PS-Adobe-3.0 EPSF-3.0\n%%BoundingBox: 0 0 64 64\n"
       b"newpath 0 0 moveto 64 64 lineto stroke\nshowpage\n%%EOF\n")


def photo_rgb(h: int = 64, w: int = 96, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:h, 0:w]
    base = np.stack([x * 255 // max(w - 1, 1), y * 255 // max(h - 1, 1), (x + y) * 127 // max(h + w - 2, 1)], -1)
    return np.clip(base + rng.integers(-20, 20, (h, w, 3)), 0, 255).astype(np.uint8)


def jpeg_bytes(arr: np.ndarray | None = None, quality: int = 90) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(photo_rgb() if arr is None else arr).save(buf, "JPEG", quality=quality)
    return buf.getvalue()


def png_bytes(arr: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, "PNG")
    return buf.getvalue()


def jpeg_bomb(side: int = 30000) -> bytes:
    """A small valid JPEG whose frame header (SOF0) declares side x side pixels."""
    data = bytearray(jpeg_bytes(photo_rgb(16, 16)))
    i = data.index(b"\xff\xc0")
    data[i + 5:i + 7] = side.to_bytes(2, "big")
    data[i + 7:i + 9] = side.to_bytes(2, "big")
    return bytes(data)


def png_bomb(side: int = 20000) -> bytes:
    """A PNG declaring side x side 1-bit pixels whose IDAT is a few kB of compressed zeros."""
    def chunk(tag: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + tag + body + struct.pack(">I", zlib.crc32(tag + body) & 0xFFFFFFFF)

    row = b"\x00" * (1 + (side + 7) // 8)
    comp = zlib.compressobj(9)
    idat = b"".join(comp.compress(row) for _ in range(256)) + comp.flush()  # the rest is missing
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", side, side, 1, 0, 0, 0, 0))
            + chunk(b"IDAT", idat) + chunk(b"IEND", b""))


def png_gray16(h: int = 48, w: int = 64) -> tuple[bytes, np.ndarray]:
    """A 16-bit grayscale PNG (a gradient over the whole 0..65535 range) and its 8-bit truth."""
    a16 = (np.linspace(0, 65535, h * w).reshape(h, w)).astype(np.uint16)
    buf = io.BytesIO()
    Image.fromarray(a16).save(buf, "PNG")
    return buf.getvalue(), np.rint(a16 / 257.0).astype(np.uint8)


def truncated_jpeg() -> bytes:
    data = jpeg_bytes()
    return data[: len(data) // 3]


def recording_gs(folder: Path) -> tuple[dict, Path]:
    """An environment whose PATH starts with a `gs` that only records that it ran: (env, log)."""
    folder.mkdir(parents=True, exist_ok=True)
    log = folder / "gs_calls.log"
    gs = folder / "gs"
    gs.write_text(f"#!/bin/sh\necho \"$@\" >> {log}\nexit 1\n")
    gs.chmod(gs.stat().st_mode | stat.S_IXUSR | stat.S_IXGRP | stat.S_IXOTH)
    return {"PATH": f"{folder}{os.pathsep}{os.environ.get('PATH', '')}"}, log


@contextlib.contextmanager
def path_first(folder: Path):
    """PATH with `folder` first, in this process (Pillow looks `gs` up when it needs it)."""
    old = os.environ.get("PATH", "")
    os.environ["PATH"] = f"{folder}{os.pathsep}{old}"
    try:
        yield
    finally:
        os.environ["PATH"] = old


def tiny_generator_file(path: Path, in_ch: int = 1, out_ch: int = 2, zero: bool = False) -> Path:
    """A small U-Net's state dict (what official weights look like): 1->2 is read as colorize.
    `zero`: every weight 0, so a colorize output is the input's lightness without colour."""
    import torch

    from p2p.models import GeneratorArch, build_generator

    torch.manual_seed(0)
    G = build_generator(GeneratorArch(in_ch, out_ch, num_downs=3, ngf=4))
    state = G.state_dict()
    if zero:
        state = {k: (torch.ones_like(v) if k.endswith("running_var") else torch.zeros_like(v)) for k, v in state.items()}
    torch.save(state, path)
    return path


def run_cli(*args) -> tuple[int, str, str]:
    """`p2p ARGS` in this process: (exit code, stdout, stderr)."""
    from p2p.cli import main

    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            code = main([str(a) for a in args])
        except SystemExit as e:  # argparse
            code = e.code if isinstance(e.code, int) else 2
    return code, out.getvalue(), err.getvalue()
