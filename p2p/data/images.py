"""Image files, the primitives every data path shares: which names count as images, listing
and opening them, and the short-side geometry of the resize to the load size (the folder
backend, the wds decode of stored shards and `p2p shard` all resize to it, each with its own
filter)."""

from __future__ import annotations

from pathlib import Path

# What `p2p shard`, the folder backend and `p2p predict` take for an image (by extension, any case)
IMAGE_EXTS = frozenset(
    ".jpg .jpeg .jpe .jfif .png .bmp .gif .tif .tiff .webp .ppm .pgm .pbm .pnm .tga".split()
)


def list_images(root: Path) -> list[Path]:
    """Every image-extension file under `root` (recursive), sorted."""
    return sorted(p for p in Path(root).rglob("*") if p.suffix.lower() in IMAGE_EXTS and p.is_file())


def open_rgb(path, short_side: int | None = None):
    """Decode with EXIF orientation applied, as RGB (a PIL image). With `short_side`, a JPEG much
    larger than needed is decoded at a reduced DCT scale (draft): about twice as fast, and the
    final resize still starts from at least `short_side` pixels."""
    from PIL import Image, ImageOps

    img = Image.open(path)
    if short_side and img.format == "JPEG" and min(img.size) >= 2 * short_side:
        img.draft("RGB", (short_side, short_side))
    return ImageOps.exif_transpose(img).convert("RGB")


def short_side_size(w: int, h: int, size: int) -> tuple[int, int]:
    """(w, h) scaled so that the short side is `size`: the long side is the exact ratio rounded
    (half to even), and at least `size`."""
    if w <= h:
        return size, max(size, round(h * size / w))
    return max(size, round(w * size / h)), size
