"""Builders of image folders for tests, made from the real photographs inside scikit-image.

No downloads: `skimage.data` ships colour photos (astronaut, coffee, chelsea, rocket,
hubble_deep_field, immunohistochemistry, stereo_motorcycle left/right, retina). Every builder
is deterministic for a given seed and returns what it wrote, so a test can compute what a
loader or `p2p shard` should produce.

    make_coco_like(dir, n=24, seed=0, scale=1.0)  flat folder of COCO-named JPEGs around 640x480
    add_faults(dir, side=320, small_side=40)       one file of every awkward kind (see FAULTS)
    make_paired(dir, n=6, size=256)                A|B side-by-side JPEGs (A = edges, B = photo)
    make_paired_folders(dir, n=6, size=256)        dir/A/x.jpg + dir/B/x.jpg matched by name
    photo_batch(n=2, size=48)                      a uint8 batch of real photos (a loader's output)
    folder_and_shards(root, n, seed, shard_mb)     root/images (small COCO-like) + root/shards of it

Used by the shard tests and meant for the loader / training tests too: keep them general.
"""

from __future__ import annotations

import io
import struct
import zlib
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import numpy as np
from PIL import Image

PHOTO_NAMES = (
    "astronaut",
    "coffee",
    "chelsea",
    "rocket",
    "hubble_deep_field",
    "immunohistochemistry",
    "motorcycle_left",
    "motorcycle_right",
    "retina",
)

# COCO-like output sizes (w, h): landscape, portrait and square, the shapes COCO mostly has.
COCO_SIZES = (
    (640, 480),
    (640, 427),
    (480, 640),
    (427, 640),
    (640, 512),
    (500, 375),
    (612, 612),
    (640, 360),
    (375, 500),
)


@lru_cache(maxsize=None)
def photos() -> dict[str, np.ndarray]:
    """The embedded colour photos, name -> HxWx3 uint8 (cached; treat as read-only)."""
    import skimage.data as d

    left, right, _ = d.stereo_motorcycle()
    out = {
        "astronaut": d.astronaut(),
        "coffee": d.coffee(),
        "chelsea": d.chelsea(),
        "rocket": d.rocket(),
        "hubble_deep_field": d.hubble_deep_field(),
        "immunohistochemistry": d.immunohistochemistry(),
        "motorcycle_left": left,
        "motorcycle_right": right,
        "retina": d.retina(),
    }
    for a in out.values():
        a.setflags(write=False)
    return out


def photo(i: int) -> np.ndarray:
    """The i-th photo (cycling through PHOTO_NAMES)."""
    return photos()[PHOTO_NAMES[i % len(PHOTO_NAMES)]]


def crop_resize(img: np.ndarray, size: tuple[int, int], rng: np.random.Generator | None = None,
                min_frac: float = 0.6) -> Image.Image:
    """A random crop of `img` with the aspect of `size` (w, h), resized to `size` (Lanczos).
    Without rng: the largest centred crop."""
    h, w = img.shape[:2]
    tw, th = size
    aspect = tw / th
    cw, ch = (w, round(w / aspect)) if w / h < aspect else (round(h * aspect), h)
    if rng is not None:
        f = rng.uniform(min_frac, 1.0)
        cw, ch = max(8, round(cw * f)), max(8, round(ch * f))
        x0 = int(rng.integers(0, w - cw + 1))
        y0 = int(rng.integers(0, h - ch + 1))
    else:
        x0, y0 = (w - cw) // 2, (h - ch) // 2
    im = Image.fromarray(np.ascontiguousarray(img[y0 : y0 + ch, x0 : x0 + cw]))
    return im.resize((tw, th), Image.Resampling.LANCZOS)


def coco_name(i: int) -> str:
    """COCO's file naming: 12-digit zero-padded id + .jpg."""
    return f"{i:012d}.jpg"


def make_coco_like(dir: str | Path, n: int = 24, seed: int = 0, scale: float = 1.0,
                   start: int = 1, quality: int = 90) -> list[Path]:
    """A flat folder of `n` JPEGs shaped like COCO: names 000000000001.jpg..., sizes around
    640x480 (landscape, portrait, square; see COCO_SIZES) times `scale` (e.g. scale=0.25 for
    fast tests: about 160x120), random crops of the embedded photos, 4:2:0 JPEG like cameras.
    Returns the paths, in name order."""
    dir = Path(dir)
    dir.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    paths = []
    for k in range(n):
        w, h = COCO_SIZES[int(rng.integers(len(COCO_SIZES)))]
        size = (max(8, round(w * scale)), max(8, round(h * scale)))
        im = crop_resize(photo(int(rng.integers(len(PHOTO_NAMES)))), size, rng)
        if rng.random() < 0.5:
            im = im.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
        p = dir / coco_name(start + k)
        im.save(p, "JPEG", quality=quality)
        paths.append(p)
    return paths


@dataclass(frozen=True)
class Fault:
    """An awkward file written by add_faults.

    skip_colorize / skip_other: the reason `p2p shard` records when it skips the file for
    --task colorize / for the other tasks (None = the file is a usable image and is kept).
    raw_size: the stored pixel size (w, h) before EXIF orientation, when it is an image."""

    name: str
    what: str
    skip_colorize: str | None
    skip_other: str | None
    raw_size: tuple[int, int] | None = None


def _png_rgb16(path: Path, arr16: np.ndarray) -> None:
    """Write a 16-bit-per-channel RGB PNG by hand (Pillow cannot write one)."""
    h, w, _ = arr16.shape
    raw = b"".join(b"\x00" + arr16[y].astype(">u2").tobytes() for y in range(h))

    def chunk(tag: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + tag + data + struct.pack(">I", zlib.crc32(tag + data))

    ihdr = struct.pack(">IIBBBBB", w, h, 16, 2, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(raw))
                     + chunk(b"IEND", b""))


def add_faults(dir: str | Path, side: int = 320, small_side: int = 40) -> dict[str, Fault]:
    """Add one file of every awkward kind to `dir`; returns {file name: Fault}.

    `side` is the short side of the usable odd images (keep it >= the --size under test);
    `small_side` the short side of the too-small image (keep it < --size).

    Unusable everywhere: zero_bytes.jpg (empty), truncated.jpg (JPEG cut in half),
    text_named.jpg (text with an image extension), notes.txt (not an image extension),
    small.jpg (short side `small_side`).
    Grayscale (skipped for colorize only): gray_L.jpg (mode L), gray_as_rgb.jpg (RGB without
    chroma), gray16.png (16-bit grayscale, mode I;16).
    Usable odd ones: cmyk.jpg, palette_transparent.png (P with transparency), rgba.png,
    rgb16.png (16-bit RGB), exif_rotated.jpg (raw landscape pixels with EXIF orientation 6 =
    displayed portrait).
    """
    dir = Path(dir)
    dir.mkdir(parents=True, exist_ok=True)
    w = round(side * 4 / 3)
    faults: list[Fault] = []

    def add(name, what, sc, so, raw_size=None):
        faults.append(Fault(name, what, sc, so, raw_size))

    (dir / "zero_bytes.jpg").write_bytes(b"")
    add("zero_bytes.jpg", "zero-byte file", "empty", "empty")

    buf = io.BytesIO()
    crop_resize(photo(1), (w, side)).save(buf, "JPEG", quality=90)
    (dir / "truncated.jpg").write_bytes(buf.getvalue()[: len(buf.getvalue()) // 2])
    add("truncated.jpg", "JPEG cut in half", "truncated", "truncated", (w, side))

    (dir / "text_named.jpg").write_text("this is not a JPEG\n" * 20)
    add("text_named.jpg", "text file named .jpg", "not_image", "not_image")

    (dir / "notes.txt").write_text("a note next to the images\n")
    add("notes.txt", "non-image extension", "not_image_ext", "not_image_ext")

    crop_resize(photo(2), (round(small_side * 4 / 3), small_side)).save(dir / "small.jpg", "JPEG", quality=90)
    add("small.jpg", f"short side {small_side}", "too_small", "too_small",
        (round(small_side * 4 / 3), small_side))

    rgb = crop_resize(photo(0), (w, side))
    rgb.convert("L").save(dir / "gray_L.jpg", "JPEG", quality=90)
    add("gray_L.jpg", "grayscale JPEG (mode L)", "grayscale", None, (w, side))

    rgb.convert("L").convert("RGB").save(dir / "gray_as_rgb.jpg", "JPEG", quality=90)
    add("gray_as_rgb.jpg", "gray photo stored as RGB JPEG", "grayscale", None, (w, side))

    g16 = (np.asarray(rgb.convert("L"), dtype=np.uint16) * 257).astype(np.uint16)
    Image.fromarray(g16).save(dir / "gray16.png")
    add("gray16.png", "16-bit grayscale PNG (I;16)", "grayscale", None, (w, side))

    crop_resize(photo(3), (w, side)).convert("CMYK").save(dir / "cmyk.jpg", "JPEG", quality=90)
    add("cmyk.jpg", "CMYK JPEG", None, None, (w, side))

    pal = crop_resize(photo(4), (w, side)).quantize(64)
    pal.info["transparency"] = 0  # palette index 0 is transparent
    pal.save(dir / "palette_transparent.png", transparency=0)
    add("palette_transparent.png", "palette PNG with transparency", None, None, (w, side))

    rgba = crop_resize(photo(5), (w, side)).convert("RGBA")
    a = np.full((side, w), 255, np.uint8)
    a[: side // 3] = 0  # top third transparent -> white after compositing
    rgba.putalpha(Image.fromarray(a))
    rgba.save(dir / "rgba.png")
    add("rgba.png", "RGBA PNG, top third transparent", None, None, (w, side))

    rgb16 = np.asarray(crop_resize(photo(6), (w, side)), dtype=np.uint16) * 257
    _png_rgb16(dir / "rgb16.png", rgb16)
    add("rgb16.png", "16-bit RGB PNG", None, None, (w, side))

    rot = crop_resize(photo(7), (w, side))  # stored landscape
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 CW to display: displayed portrait side x w
    rot.save(dir / "exif_rotated.jpg", "JPEG", quality=90, exif=exif.tobytes())
    add("exif_rotated.jpg", "EXIF orientation 6 (displayed portrait)", None, None, (w, side))

    return {f.name: f for f in faults}


def edges(img: np.ndarray) -> np.ndarray:
    """A black-on-white edge drawing of a photo (HxWx3 uint8): pix2pix's edges2photo input."""
    from skimage.color import rgb2gray
    from skimage.filters import sobel

    e = sobel(rgb2gray(img))
    e = 1.0 - np.clip(e / max(e.max(), 1e-6) * 3.0, 0, 1)
    g = (e * 255).astype(np.uint8)
    return np.repeat(g[..., None], 3, axis=2)


def make_pair(i: int, size: int, rng: np.random.Generator) -> tuple[Image.Image, Image.Image]:
    """(A, B) of one pair, both size x size: B = a crop of a photo, A = its edge drawing."""
    b = crop_resize(photo(i), (size, size), rng)
    a = Image.fromarray(edges(np.asarray(b)))
    return a, b


def make_paired(dir: str | Path, n: int = 6, size: int = 256, seed: int = 0) -> list[Path]:
    """`n` side-by-side A|B JPEGs (2*size x size, like pix2pix's facades/edges2* datasets):
    left half A = edges, right half B = photo. Names 0001.jpg... Returns the paths."""
    dir = Path(dir)
    dir.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    paths = []
    for i in range(n):
        a, b = make_pair(i, size, rng)
        ab = Image.new("RGB", (2 * size, size))
        ab.paste(a, (0, 0))
        ab.paste(b, (size, 0))
        p = dir / f"{i + 1:04d}.jpg"
        ab.save(p, "JPEG", quality=95)
        paths.append(p)
    return paths


def make_paired_folders(dir: str | Path, n: int = 6, size: int = 256, seed: int = 0,
                        b_size: int | None = None, unmatched: int = 0) -> tuple[list[Path], list[Path]]:
    """dir/A/0001.jpg + dir/B/0001.jpg ...: pairs matched by relative path (A = edges, B =
    photo). B may have another size (`b_size`) to test resizing. `unmatched` extra files in A
    that have no partner in B (A/unmatched_0.jpg ...). Returns (A paths, B paths)."""
    dir = Path(dir)
    (dir / "A").mkdir(parents=True, exist_ok=True)
    (dir / "B").mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    pa, pb = [], []
    for i in range(n):
        a, b = make_pair(i, size, rng)
        if b_size and b_size != size:
            b = b.resize((b_size, b_size), Image.Resampling.LANCZOS)
        name = f"{i + 1:04d}.jpg"
        a.save(dir / "A" / name, "JPEG", quality=95)
        b.save(dir / "B" / name, "JPEG", quality=95)
        pa.append(dir / "A" / name)
        pb.append(dir / "B" / name)
    for k in range(unmatched):
        a, _ = make_pair(k, size, rng)
        a.save(dir / "A" / f"unmatched_{k}.jpg", "JPEG", quality=95)
        pa.append(dir / "A" / f"unmatched_{k}.jpg")
    return pa, pb


def photo_batch(n: int = 2, size: int = 48):
    """n real photos (astronaut, coffee, chelsea) subsampled to size x size: a uint8 N x 3 x H x W
    torch batch, what every loader yields."""
    import torch

    from p2p.data.folder import embedded_photo

    imgs = [embedded_photo(name)[:size * 4:4, :size * 4:4] for name in ("astronaut", "coffee", "chelsea")[:n]]
    return torch.from_numpy(np.stack(imgs)).permute(0, 3, 1, 2).contiguous()


def folder_and_shards(root: str | Path, n: int, seed: int, shard_mb: float) -> Path:
    """root/images: n small COCO-like JPEGs (about 128x96), and root/shards: `p2p shard` of them
    at 40 px (10% val): the same images for the folder and the wds/dali backends."""
    from p2p.data.shards import make_shards

    root = Path(root)
    make_coco_like(root / "images", n=n, seed=seed, scale=0.2)
    make_shards(root / "images", root / "shards", size=40, val_fraction=0.1, shard_size_mb=shard_mb, workers=1)
    return root
