"""Image files, the primitives every data path shares: which names count as images, listing
them, THE function that reads one (`read_rgb`; `open_image` for its header), and the short-side
geometry of the resize to the load size (the folder backend, the wds decode of stored shards
and `p2p shard` all resize to it, each with its own filter).

Images come from elsewhere (datasets, shards, a user's folder) and are not trusted. Every
reader (the folder, wds and nvjpeg loaders, validation, `p2p eval`, `p2p predict`, `p2p shard`)
goes through `open_image`, which
- tells the format from the first bytes, never from the name, and admits only `FORMATS`
  (JPEG, PNG, WebP, BMP, TIFF): Pillow is then asked for that one plugin, so a file can never
  reach a decoder p2p did not choose (an EPS named .jpg would otherwise run Ghostscript);
- reads the size from the header and refuses, before any pixel is decoded, more than
  `max_pixels` pixels (`data.max_pixels`, default `DEFAULT_MAX_PIXELS` = 8192 x 8192) or a long
  side more than `MAX_ASPECT` times the short one (a strip whose short side is resized up to the
  load size would be a huge image);
- refuses what is not a regular file (a FIFO would block) and zero-byte files.
A refusal is an `ImageRejected` (a ValueError) with a `reason` code: the loaders skip the sample
with a warning, `p2p shard` records the reason in its manifest, `p2p predict` and `p2p eval`
print one line per skipped file. `to_rgb` is the one conversion of modes to 8-bit RGB.
"""

from __future__ import annotations

import io
import os
import re
import stat
from pathlib import Path

from p2p.limits import DEFAULT_MAX_PIXELS

# What `p2p shard`, the folder backend and `p2p predict` list as images (by extension, any case);
# what they decode is decided by the bytes (`FORMATS`).
IMAGE_EXTS = frozenset(".jpg .jpeg .jpe .jfif .png .bmp .tif .tiff .webp".split())
MAX_ASPECT = 10.0  # long side / short side above this is refused (a strip, not a photo)

# Pillow plugin name -> the signatures that start such a file (WebP: RIFF, 4 size bytes, WEBP)
FORMATS = {
    "JPEG": (b"\xff\xd8\xff",),
    "PNG": (b"\x89PNG\r\n\x1a\n",),
    "WEBP": (),
    "BMP": (b"BM",),
    "TIFF": (b"II*\x00", b"MM\x00*", b"II+\x00", b"MM\x00+"),
}
REJECT_REASONS = {
    "empty": "zero-byte file",
    "unreadable": "cannot be opened (permissions, I/O error, not a regular file)",
    "not_image": "content is not an image p2p reads",
    "unsupported_format": "an image format p2p does not decode (p2p reads JPEG, PNG, WebP, BMP and TIFF)",
    "too_large": "more pixels than data.max_pixels",
    "extreme_aspect": f"long side more than {MAX_ASPECT:g}x the short side",
    "truncated": "image data ends early",
    "decode_error": "image data is corrupt or in an unsupported variant",
}
# Other formats recognised only to name them in the message (never decoded)
_FOREIGN = ((b"%!PS", "PostScript/EPS"), (b"\xc5\xd0\xd3\xc6", "EPS"), (b"GIF8", "GIF"), (b"%PDF", "PDF"),
            (b"\x00\x00\x00\x0cjP  ", "JPEG 2000"), (b"\xffO\xffQ", "JPEG 2000"), (b"8BPS", "PSD"),
            (b"P1", "PNM"), (b"P2", "PNM"), (b"P3", "PNM"), (b"P4", "PNM"), (b"P5", "PNM"), (b"P6", "PNM"),
            (b"icns", "ICNS"), (b"\x00\x00\x01\x00", "ICO"), (b"DDS ", "DDS"), (b"qoif", "QOI"))


class ImageRejected(ValueError):
    """An image file p2p will not decode: `reason` is a key of REJECT_REASONS, the message says
    what was found."""

    def __init__(self, reason: str, detail: str = ""):
        super().__init__(detail or REJECT_REASONS.get(reason, reason))
        self.reason = reason
        self.detail = detail or REJECT_REASONS.get(reason, "")


def list_images(root: Path) -> list[Path]:
    """Every image-extension file under `root` (recursive), sorted."""
    return sorted(p for p in Path(root).rglob("*") if p.suffix.lower() in IMAGE_EXTS and p.is_file())


def sniff_format(head: bytes) -> str | None:
    """The key of FORMATS whose signature `head` (the first 16 bytes or more) starts with."""
    if head[:4] == b"RIFF" and head[8:12] == b"WEBP":
        return "WEBP"
    for name, signatures in FORMATS.items():
        if signatures and head.startswith(signatures):
            return name
    return None


def _not_allowed(head: bytes) -> ImageRejected:
    for sig, name in _FOREIGN:
        if head.startswith(sig):
            return ImageRejected("unsupported_format", f"{name} data, which p2p does not decode "
                                                       f"(p2p reads JPEG, PNG, WebP, BMP and TIFF)")
    return ImageRejected("not_image", f"not an image p2p reads (starts with {head[:8]!r})")


def check_geometry(w: int, h: int, max_pixels: int = DEFAULT_MAX_PIXELS) -> None:
    """Raise ImageRejected for a size no reader should decode (from the header, before decoding)."""
    if w < 1 or h < 1:
        raise ImageRejected("decode_error", f"{w}x{h}: no pixels")
    if w * h > max_pixels:
        raise ImageRejected("too_large", f"{w}x{h} = {w * h} pixels, more than data.max_pixels={max_pixels}")
    if max(w, h) > MAX_ASPECT * min(w, h):
        raise ImageRejected("extreme_aspect", f"{w}x{h}")


def _pillow(max_pixels: int):
    """PIL.Image, with its own bomb limit at least ours: ours is the one that applies, checked
    right after the header is read."""
    import warnings

    from PIL import Image

    if Image.MAX_IMAGE_PIXELS is not None and Image.MAX_IMAGE_PIXELS < max_pixels:
        Image.MAX_IMAGE_PIXELS = max_pixels
    # Pillow's warnings about a malformed file ("Truncated File Read", skipped TIFF tags, its bomb
    # warning below our limit) would add lines to the one line per skipped file. Added only when
    # missing: adding a filter resets every module's warned-once registry.
    if not any(f[0] == "ignore" and f[3] is not None and f[3].pattern == _PIL_MODULES for f in warnings.filters):
        warnings.filterwarnings("ignore", module=_PIL_MODULES)
    return Image


_PIL_MODULES = r"PIL\."


def _source(source) -> tuple[object, bytes]:
    """(what Pillow opens, the first bytes) of a path or of bytes; refuses non-regular and empty
    files before opening them (a FIFO would block the reader)."""
    if isinstance(source, (bytes, bytearray, memoryview)):
        data = bytes(source)
        if not data:
            raise ImageRejected("empty")
        return io.BytesIO(data), data[:32]
    path = os.fspath(source)
    try:
        st = os.stat(path)
        if not stat.S_ISREG(st.st_mode):
            raise ImageRejected("unreadable", "not a regular file (a folder, fifo, socket or device)")
        if st.st_size == 0:
            raise ImageRejected("empty")
        with open(path, "rb") as f:
            head = f.read(32)
    except OSError as e:
        raise ImageRejected("unreadable", e.strerror or str(e)) from None
    return path, head


def open_image(source, max_pixels: int = DEFAULT_MAX_PIXELS):
    """A path or bytes -> a PIL image whose header has been read and checked (format from the
    bytes, size and aspect within bounds), nothing decoded yet. Raises ImageRejected."""
    fp, head = _source(source)
    fmt = sniff_format(head)
    if fmt is None:
        raise _not_allowed(head)
    Image = _pillow(max_pixels)
    from PIL import UnidentifiedImageError

    try:
        im = Image.open(fp, formats=[fmt])
    except Image.DecompressionBombError as e:  # Pillow's own check, at twice its limit (>= ours)
        found = re.search(r"\((\d+) pixels\)", str(e))
        raise ImageRejected("too_large", f"{found.group(1) if found else 'more'} pixels, more than "
                                         f"data.max_pixels={max_pixels}") from None
    except UnidentifiedImageError:
        raise ImageRejected("decode_error", f"starts like {fmt} but its header is not valid {fmt}") from None
    except OSError as e:  # an errno: the file system's; none: Pillow's complaint about the data
        raise ImageRejected("unreadable" if e.errno else "decode_error", e.strerror or str(e)) from None
    except Exception as e:  # malformed headers raise all sorts (SyntaxError, struct.error, ...)
        raise ImageRejected("decode_error", f"{type(e).__name__}: {e}") from None
    try:
        check_geometry(*im.size, max_pixels)
    except ImageRejected:
        im.close()
        raise
    return im


def to_rgb(im):
    """Any PIL mode to 8-bit RGB, the one conversion every reader uses: alpha composited on white,
    16/32-bit gray scaled to 8 bits (a 16-bit PNG's 65535 is 255), palette, CMYK and the rest by
    Pillow's conversion."""
    from PIL import Image

    m = im.mode
    if m == "RGB":
        return im
    if m in ("RGBA", "LA", "PA", "RGBa", "La") or "transparency" in im.info:
        rgba = im.convert("RGBA")
        bg = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        bg.alpha_composite(rgba)
        return bg.convert("RGB")
    if m.startswith("I") or m == "F":
        import numpy as np

        a = np.asarray(im)
        if m.startswith("I;16"):
            a = a.astype(np.float32) / 257.0
        elif m == "F":
            a = a.astype(np.float32)
            a = a * 255.0 if a.size and np.nanmax(a) <= 1.0 else a
        else:  # "I": 32-bit; 16-bit PNGs open as I with values up to 65535
            a = a.astype(np.float64)
            top = float(a.max()) if a.size else 0.0
            a = a / 257.0 if 255 < top <= 65535 else (a * (255.0 / top) if top > 65535 else a)
        g = np.clip(np.rint(np.nan_to_num(a)), 0, 255).astype(np.uint8)
        return Image.fromarray(g).convert("RGB")
    return im.convert("RGB")  # L, 1, P, CMYK, YCbCr, LAB, HSV


def decoded(im, short_side: int | None = None):
    """Decode an image from `open_image`: JPEG draft when much larger than `short_side`, EXIF
    orientation, `to_rgb`. Raises ImageRejected (truncated or corrupt data)."""
    from PIL import ImageOps

    try:
        with im:
            if short_side and im.format in ("JPEG", "MPO") and min(im.size) >= 2 * short_side:
                im.draft("RGB", (short_side, short_side))
            im.load()
            return to_rgb(ImageOps.exif_transpose(im))
    except Exception as e:
        raise decode_failure(e) from None


def decode_failure(error: Exception) -> ImageRejected:
    """What an exception raised while decoding an opened image means (Pillow raises all sorts
    for corrupt data): truncated, too large, or corrupt."""
    from PIL import Image

    if isinstance(error, ImageRejected):
        return error
    if isinstance(error, Image.DecompressionBombError):
        return ImageRejected("too_large", str(error))
    if isinstance(error, OSError):
        return ImageRejected("truncated" if "truncated" in str(error) else "decode_error", str(error))
    return ImageRejected("decode_error", f"{type(error).__name__}: {error}")


def read_rgb(source, max_pixels: int = DEFAULT_MAX_PIXELS, short_side: int | None = None):
    """THE way p2p reads an image file (a path or its bytes): `open_image`'s checks, then decoded
    with EXIF orientation applied, as 8-bit RGB (a PIL image). With `short_side`, a JPEG much
    larger than needed is decoded at a reduced DCT scale (draft): about twice as fast, and the
    final resize still starts from at least `short_side` pixels. Raises ImageRejected."""
    return decoded(open_image(source, max_pixels), short_side)


def short_side_size(w: int, h: int, size: int) -> tuple[int, int]:
    """(w, h) scaled so that the short side is `size`: the long side is the exact ratio rounded
    (half to even), and at least `size`."""
    if w <= h:
        return size, max(size, round(h * size / w))
    return max(size, round(w * size / h)), size
