"""One sample, from source file(s) to stored JPEG bytes: what a shard worker does per item.

Every image is read through p2p.data.images (format from the bytes, size checked from the
header), decoded once (PIL), EXIF-rotated, converted to RGB by its `to_rgb` (alpha composited on
white, CMYK, palette and 16-bit converted), resized with Lanczos so its SHORT side is --size (the
pix2pix load size; the loader crops later) and stored as JPEG at --quality (4:4:4 chroma for
quality >= 90: colorization learns chroma, and 4:2:0 would halve its resolution). Paired A|B
data is stored as one side-by-side image per sample whose halves are each size x size.

Faults (unreadable, truncated, empty, non-image, grayscale where the task's shard filter keeps
colour only, too small, extreme aspect) raise `Skip` with a reason from
p2p.data.shards.format.REASONS, never anything else the writer would have to stop for.
"""

from __future__ import annotations

import io
from typing import Callable

from p2p.data.images import ImageRejected, decode_failure, open_image, short_side_size, to_rgb
from p2p.data.shards.format import MAX_ASPECT, REASONS
from p2p.data.shards.plan import OutputOptions
from p2p.data.shards.scan import Item
from p2p.specs.tasks import TASKS

GRAY_TOLERANCE = 3  # max |R-G|, |G-B| (0..255) at or below which an RGB image counts as gray
GRAY_MODES = frozenset(("1", "L", "LA", "La", "I", "I;16", "I;16L", "I;16B", "I;16N", "F"))


class Skip(Exception):
    """An input file that is left out, with a reason code (see REASONS) and a detail."""

    def __init__(self, reason: str, detail: str = ""):
        super().__init__(f"{reason}: {detail}")
        self.reason = reason
        self.detail = detail or REASONS.get(reason, "")


def _orientation(im) -> int:
    try:
        o = int(im.getexif().get(0x0112, 1))
    except Exception:
        return 1
    return o if 1 <= o <= 8 else 1


def max_chroma(im) -> int:
    """max(|R-G|, |G-B|) over the image; a subsample first (colour photos stop there)."""
    import numpy as np

    a = np.asarray(im)
    for view in (a[::7, ::7], a):
        v = view.astype(np.int16)
        c = int(max(np.abs(v[..., 0] - v[..., 1]).max(), np.abs(v[..., 1] - v[..., 2]).max()))
        if c > GRAY_TOLERANCE:
            return c
    return c


def load_rgb(path: str, target: Callable[[int, int], tuple[int, int]], check: Callable):
    """Open, check, draft, decode, EXIF-rotate and convert one image to RGB.
    `target(w, h)` is the size the caller will resize to (for JPEG draft mode); `check(w, h,
    mode)` may raise Skip before decoding. Returns (RGB image, info dict)."""
    from PIL import ImageOps

    try:
        im = open_image(path)
    except ImageRejected as e:
        raise Skip(e.reason, e.detail) from None
    with im:
        try:
            o = _orientation(im)
            w, h = im.size
            dw, dh = (h, w) if o >= 5 else (w, h)
            info = {"width": dw, "height": dh}
            if im.mode != "RGB":
                info["mode"] = im.mode
            if o != 1:
                info["orientation"] = o
            check(dw, dh, im.mode)
            if im.format == "JPEG":
                tw, th = target(dw, dh)
                if min(dw // tw, dh // th) >= 2:
                    im.draft(None, (th, tw) if o >= 5 else (tw, th))
            im.load()
            if o != 1:
                ImageOps.exif_transpose(im, in_place=True)
            rgb = to_rgb(im)
        except Skip:
            raise
        except Exception as e:
            failure = decode_failure(e)
            raise Skip(failure.reason, failure.detail) from None
        return rgb, info


def _keeps_colour_only(opts: OutputOptions) -> bool:
    return TASKS[opts.task].shard_filter == "colour"


def _check_single(opts: OutputOptions) -> Callable:
    colour_only = _keeps_colour_only(opts)

    def check(w, h, mode):
        if max(w, h) > MAX_ASPECT * min(w, h):
            raise Skip("extreme_aspect", f"{w}x{h}")
        if min(w, h) < opts.size and not opts.upscale_small:
            raise Skip("too_small", f"{w}x{h}, short side {min(w, h)} < {opts.size}")
        if colour_only and mode in GRAY_MODES:
            raise Skip("grayscale", f"mode {mode}")

    return check


def _check_square(opts: OutputOptions, side_by_side: bool) -> Callable:
    def check(w, h, mode):
        hw = w // 2 if side_by_side else w
        if side_by_side and w < h:
            raise Skip("not_side_by_side", f"{w}x{h} is narrower than tall")
        if min(hw, h) < opts.size and not opts.upscale_small:
            raise Skip("too_small", f"{w}x{h}: " + ("halves " if side_by_side else "")
                       + f"{hw}x{h}, short side {min(hw, h)} < {opts.size}")

    return check


def process_item(item: Item, opts: OutputOptions) -> tuple[bytes, dict, tuple[int, int], tuple[int, int]]:
    """One sample: (JPEG bytes, json meta, source (w, h), stored (w, h)). Raises Skip."""
    from PIL import Image

    key, shown, path, shown_b, path_b = item
    s = opts.size
    lanczos = Image.Resampling.LANCZOS
    upscaled = False
    if opts.paired is None:
        im, info = load_rgb(path, lambda w, h: short_side_size(w, h, s), _check_single(opts))
        ow, oh = short_side_size(info["width"], info["height"], s)
        upscaled = min(info["width"], info["height"]) < s
        if im.size != (ow, oh):
            im = im.resize((ow, oh), lanczos, reducing_gap=3.0)
        if _keeps_colour_only(opts):
            c = max_chroma(im)
            if c <= GRAY_TOLERANCE:
                raise Skip("grayscale", f"RGB without chroma (max |R-G|,|G-B| = {c})")
        out = im
    elif opts.paired == "side_by_side":
        im, info = load_rgb(path, lambda w, h: (2 * s, s), _check_square(opts, True))
        w, h = im.size
        half = w // 2
        upscaled = min(info["width"] // 2, info["height"]) < s
        out = Image.new("RGB", (2 * s, s))
        out.paste(im.resize((s, s), lanczos, box=(0, 0, half, h), reducing_gap=3.0), (0, 0))
        out.paste(im.resize((s, s), lanczos, box=(half, 0, w, h), reducing_gap=3.0), (s, 0))
    else:
        halves = []
        infos = []
        for side, p in (("A", path), ("B", path_b)):
            try:
                im, inf = load_rgb(p, lambda w, h: (s, s), _check_square(opts, False))
            except Skip as e:
                raise Skip(e.reason, f"{side}: {e.detail}" + ("" if side == "A" else f" ({shown_b})")) from None
            upscaled = upscaled or min(inf["width"], inf["height"]) < s
            halves.append(im if im.size == (s, s) else im.resize((s, s), lanczos, reducing_gap=3.0))
            infos.append(inf)
        out = Image.new("RGB", (2 * s, s))
        out.paste(halves[0], (0, 0))
        out.paste(halves[1], (s, 0))
        info = dict(infos[0])
        info["path_b"] = shown_b
        info.update({f"{k}_b": v for k, v in infos[1].items()})
    buf = io.BytesIO()
    out.save(buf, "JPEG", quality=opts.quality, subsampling=0 if opts.quality >= 90 else 2)
    meta = {"path": shown, **info}
    if upscaled:
        meta["upscaled"] = True
    return buf.getvalue(), meta, (info["width"], info["height"]), out.size
