"""CPU decode and crop of stored JPEG samples: what the wds backend (and the benchmark) run per
sample, kept here so that every caller makes the same pixels (the nvjpeg backend cuts its
GPU-decoded images with the same `sample_window`).

Decode is libjpeg-turbo's accurate (islow) IDCT through `simplejpeg`, to a 3 x H x W uint8
view of H x W x 3 pixels: on the shards' JPEGs the same pixels as `torchvision.io.decode_jpeg`
and PIL (both libjpeg-turbo islow too), with less overhead per call than either (`p2p bench
decode` compares them, DALI's CPU decoder and the fast-IDCT options, which move pixels by more
than one level and are not used). Without simplejpeg, or for a JPEG it refuses (CMYK),
torchvision decodes. Shards made by `p2p shard` already have their short side at the load
size, so the usual path is decode + one copy of the crop window into the batch; other stored
sizes are resized (bilinear, antialiased, uint8) first. PIL is the fallback for data
torchvision cannot read (e.g. a PNG someone packed by hand), through p2p.data.images's reader:
a shard member is as untrusted as any image file (format from the bytes, size from the header
before decoding).

Random crop windows come from (seed, epoch, key) alone: the same sample gets the same window
whichever rank, worker or batch position reads it.
"""

from __future__ import annotations

import hashlib
import random

import numpy as np
import torch
from torchvision.io import ImageReadMode, decode_jpeg  # imported before DataLoader workers fork

from p2p.data.images import DEFAULT_MAX_PIXELS, check_geometry, open_image, read_rgb, short_side_size, sniff_format
from p2p.data.plan import mix_seed


def key_seed(key: str) -> int:
    """A stable 64-bit number from a sample key (Python's hash() changes between runs)."""
    return int.from_bytes(hashlib.blake2b(key.encode("utf-8"), digest_size=8).digest(), "big")


def crop_window(h: int, w: int, size: int, seed: int, epoch: int, key: str | None) -> tuple[int, int]:
    """(top, left) of a size x size window: random from (seed, epoch, key), or the centre when
    `key` is None (validation)."""
    if key is None:
        return (h - size) // 2, (w - size) // 2
    rng = random.Random(mix_seed(seed, epoch, key_seed(key)))
    return rng.randint(0, h - size), rng.randint(0, w - size)


def is_jpeg(data: bytes) -> bool:
    """Whether `data` starts like a JPEG file (the SOI marker)."""
    return data[:2] == b"\xff\xd8"


try:
    import simplejpeg
except ImportError:  # an optional speed-up: torchvision decodes the same pixels
    simplejpeg = None


def jpeg_decoder() -> str:
    """The CPU JPEG decoder of this process, as metrics and bench rows record it."""
    return "simplejpeg" if simplejpeg is not None else "torchvision"


def decoder_fallback_notice() -> str | None:
    """The notice for a run or benchmark whose CPU decodes fall back to torchvision, else None."""
    if simplejpeg is not None:
        return None
    return ("simplejpeg is not installed: JPEGs are decoded by torchvision.io.decode_jpeg (the same pixels, "
            "more overhead per image), not the decoder p2p's loaders are measured with; pip install simplejpeg")


def jpeg_header_check(data, max_pixels: int = DEFAULT_MAX_PIXELS) -> None:
    """Raise ImageRejected when JPEG bytes declare more pixels (or a longer strip) than any
    reader decodes, from the header alone: libjpeg-turbo and nvJPEG allocate the whole image
    before the first row."""
    if simplejpeg is not None:
        try:
            h, w, _, _ = simplejpeg.decode_jpeg_header(data, strict=False)
        except (ValueError, KeyError):  # a header it cannot read (KeyError: an unknown colour space)
            pass  # Pillow's parser decides, and says why
        else:
            check_geometry(w, h, max_pixels)
            return
    open_image(bytes(data), max_pixels).close()


def decode_rgb(data, max_pixels: int = DEFAULT_MAX_PIXELS) -> torch.Tensor:
    """Image bytes (JPEG, or another format of p2p.data.images.FORMATS) -> 3 x H x W uint8 RGB.
    The format comes from the bytes and the size from the header, checked before decoding
    (ImageRejected, a ValueError); corrupt data raises RuntimeError (torchvision) or
    ImageRejected."""
    if isinstance(data, torch.Tensor):
        data = data.numpy().tobytes()
    if sniff_format(bytes(data[:32])) != "JPEG":  # PNG and the rest: Pillow, that plugin only
        arr = np.asarray(read_rgb(bytes(data), max_pixels))
        return torch.from_numpy(arr.copy()).permute(2, 0, 1)
    jpeg_header_check(data, max_pixels)
    if simplejpeg is not None:
        try:
            return torch.from_numpy(simplejpeg.decode_jpeg(data, "RGB")).permute(2, 0, 1)
        except (ValueError, KeyError):  # corrupt, or a kind it does not convert: torchvision decides
            pass
    return decode_jpeg(torch.frombuffer(bytearray(data), dtype=torch.uint8), mode=ImageReadMode.RGB)


def resize(img: torch.Tensor, h: int, w: int) -> torch.Tensor:
    """3 x H x W uint8 -> 3 x h x w uint8, bilinear with antialias (torchvision's uint8 path)."""
    if img.shape[-2:] == (h, w):
        return img
    from torchvision.transforms.v2 import functional as TF

    return TF.resize(img, [h, w], antialias=True)


def short_side_to(img: torch.Tensor, size: int) -> torch.Tensor:
    """Resize so the short side is `size` (the geometry of the folder backend and `p2p shard`)."""
    h, w = img.shape[-2:]
    if min(h, w) == size:
        return img
    nw, nh = short_side_size(w, h, size)
    return resize(img, nh, nw)


def sample_window(img: torch.Tensor, load_size: int, paired: bool, seed: int, epoch: int,
                  key: str | None) -> torch.Tensor:
    """The batch entry of a decoded 3 x H x W image, on whatever device it is: paired A|B images
    resized whole to load_size x 2*load_size; single images with their short side at load_size,
    then a square window (random from (seed, epoch, key); the centre when key is None). Often a
    view of `img`."""
    if paired:
        return resize(img, load_size, 2 * load_size)
    img = short_side_to(img, load_size)
    h, w = img.shape[-2:]
    top, left = crop_window(h, w, load_size, seed, epoch, key)
    return img[:, top:top + load_size, left:left + load_size]


def fill_sample(out: torch.Tensor, data, load_size: int, paired: bool, seed: int, epoch: int,
                key: str | None, max_pixels: int = DEFAULT_MAX_PIXELS) -> None:
    """Decode `data` on the CPU into `out` (3 x load_size x load_size, or x 2*load_size when
    paired), cut as `sample_window` cuts."""
    window = sample_window(decode_rgb(data, max_pixels), load_size, paired, seed, epoch, key)
    # decode_jpeg's 3 x H x W is a view of H x W x 3 pixels: numpy's single-threaded transposing
    # copy is faster than torch's here and never wakes torch's OpenMP pool in the main process
    np.copyto(out.numpy(), window.numpy())
