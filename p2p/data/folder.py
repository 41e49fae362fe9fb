"""The folder backend: image folders (COCO-style flat folders, trees, paired A|B images or A/ and
B/ folders) and the photographs embedded in scikit-image. For small data and the demo; big
data goes through shards (`p2p shard`, then the wds or dali backend).

Each sample is read with p2p.data.images.read_rgb (formats and the pixel limit), resized so the short side is `load_size` and cropped to a
load_size square (a random window in training, the centre in validation), then batched as
uint8 by DataLoader workers. Paired samples are resized per half to load_size x load_size, as
the official pix2pix does. Randomness per sample comes from (seed, epoch, index), so results
do not depend on the worker count.

Splits: the folder's train/ and val/ (or test/) subfolders, or else data.val_fraction of the
files by the rule `p2p shard` uses: `hash_unit` (p2p.data.shards.format) of the sample key, the
path relative to the folder (to A/ for A/ and B/ folders) without extension. The split is the
same on every machine, and a folder and the shards made from it hold out the same images.
"""

from __future__ import annotations

import os
import random
import warnings
from functools import lru_cache
from pathlib import Path
from typing import Iterator

import numpy as np
import torch
from PIL import Image

from p2p.data import Batch, LoaderArgs
from p2p.data.images import DEFAULT_MAX_PIXELS, IMAGE_EXTS, list_images, read_rgb, short_side_size
from p2p.data.plan import (RankOrders, batch_count, batches_per_epoch, continued_plan, epoch_permutation, mix_seed,
                           rank_order, val_batch_size)
from p2p.data.shards.format import hash_unit, sample_key
from p2p.data.workers import quiet_handover, watched
from p2p.errors import UsageError

# Real colour photographs inside the scikit-image wheel: the demo's data (nothing to download).
EMBEDDED_TRAIN = ("astronaut", "chelsea", "coffee", "hubble_deep_field", "immunohistochemistry",
                  "motorcycle_left", "retina", "rocket")
EMBEDDED_VAL = ("motorcycle_right",)


@lru_cache(maxsize=None)
def embedded_photo(name: str) -> np.ndarray:
    """H x W x 3 uint8 photo from skimage.data, loaded once per process."""
    import skimage.data as sd

    if name.startswith("motorcycle_"):
        left, right, _ = sd.stereo_motorcycle()
        img = left if name.endswith("left") else right
    else:
        img = getattr(sd, name)()
    return np.ascontiguousarray(img[..., :3])


def _resize_short(img: Image.Image, size: int) -> Image.Image:
    return img.resize(short_side_size(*img.size, size), Image.BICUBIC)


def _square(img: Image.Image, size: int, rng: random.Random | None) -> np.ndarray:
    w, h = img.size
    if rng is None:
        left, top = (w - size) // 2, (h - size) // 2
    else:
        left, top = rng.randint(0, w - size), rng.randint(0, h - size)
    return np.asarray(img.crop((left, top, left + size, top + size)))


class FolderSamples(torch.utils.data.Dataset):
    """Map-style dataset of uint8 CHW tensors at load_size (paired: load_size x 2*load_size)."""

    def __init__(self, items: list, load_size: int, paired: bool, seed: int, train: bool,
                 max_pixels: int = DEFAULT_MAX_PIXELS):
        self.items, self.load_size, self.paired, self.max_pixels = items, load_size, paired, max_pixels
        self.seed, self.train, self.epoch = seed, train, 0

    def __len__(self):
        return len(self.items)

    def _rng(self, index: int) -> random.Random | None:
        return random.Random(mix_seed(self.seed, self.epoch, index)) if self.train else None

    def load(self, index: int) -> np.ndarray:
        item, s = self.items[index], self.load_size
        if isinstance(item, tuple):  # (A path, B path)
            a, b = (read_rgb(p, self.max_pixels).resize((s, s), Image.BICUBIC) for p in item)
            return np.concatenate([np.asarray(a), np.asarray(b)], axis=1)
        if self.paired:  # A|B side by side: each half to s x s
            return np.asarray(read_rgb(item, self.max_pixels).resize((2 * s, s), Image.BICUBIC))
        return _square(_resize_short(read_rgb(item, self.max_pixels, s), s), s, self._rng(index))

    def __getitem__(self, index):
        # A file that fails to decode is replaced by its neighbour (and reported once) rather
        # than killing a long run; shards made by `p2p shard` never contain such files.
        for k in range(8):
            i = (index + k) % len(self.items)
            try:
                arr = self.load(i)
                return torch.from_numpy(np.array(arr, copy=True)).permute(2, 0, 1), str(self.key(i))
            except (OSError, ValueError, Image.DecompressionBombError) as e:
                warnings.warn(f"skipping unreadable image {self.items[i]}: {e}", stacklevel=1)
        raise UsageError(f"data: 8 unreadable images in a row starting at {self.items[index]}")

    def key(self, index: int) -> str:
        item = self.items[index]
        return str(item[0] if isinstance(item, tuple) else item)


class EmbeddedSamples(FolderSamples):
    """Random crops of the embedded photos: a random region (35-100% of the short side) at a
    random place, resized to load_size. Validation uses fixed crops of a held-out photo."""

    def __init__(self, names: tuple[str, ...], count: int, load_size: int, seed: int, train: bool):
        super().__init__(list(range(count)), load_size, False, seed, train)
        self.names = names

    def load(self, index: int) -> np.ndarray:
        rng = random.Random(mix_seed(self.seed, self.epoch if self.train else -1, index))
        photo = embedded_photo(self.names[index % len(self.names)])
        h, w = photo.shape[:2]
        side = int(min(h, w) * rng.uniform(0.35, 1.0))
        top, left = rng.randint(0, h - side), rng.randint(0, w - side)
        crop = Image.fromarray(photo[top:top + side, left:left + side])
        return np.asarray(crop.resize((self.load_size, self.load_size), Image.BICUBIC))

    def key(self, index: int) -> str:
        return f"{self.names[index % len(self.names)]}/{index}"


def split_items(root: Path, split: str, paired: bool, val_fraction: float) -> list:
    """Files (or (A, B) pairs) of one split: train/ and val/ (or test/) subfolders when the folder
    has them, otherwise a stable hash split with data.val_fraction."""
    sub = {"train": ("train",), "val": ("val", "test")}[split]
    if (root / "train").is_dir():
        for name in sub:
            if (root / name).is_dir():
                return _folder_items_flat(root / name, paired)
        raise UsageError(f"data.source={str(root)!r} has train/ but no val/ or test/ folder for validation; "
                         f"set data.val_source")
    items = _folder_items_flat(root, paired)
    if val_fraction <= 0:
        return items
    return [it for it in items if (hash_unit(_split_key(it, root)) < val_fraction) == (split == "val")]


def _split_key(item, root: Path) -> str:
    """The key `p2p shard` gives this file (or pair): its path relative to the folder (to A/
    for pairs) without extension, as a sample key."""
    path, base = (item[0], root / "A") if isinstance(item, tuple) else (item, root)
    return sample_key(os.path.splitext(path.relative_to(base).as_posix())[0])


def _folder_items_flat(root: Path, paired: bool) -> list:
    if paired and (root / "A").is_dir() and (root / "B").is_dir():
        a_files = {p.relative_to(root / "A").with_suffix(""): p for p in list_images(root / "A")}
        b_files = {p.relative_to(root / "B").with_suffix(""): p for p in list_images(root / "B")}
        common = sorted(set(a_files) & set(b_files))
        return [(a_files[k], b_files[k]) for k in common]
    return list_images(root)


class FolderLoader:
    """Deterministic DataLoader over FolderSamples / EmbeddedSamples (see p2p.data's contract)."""

    def __init__(self, source: str, split: str, rank: int, world: int, args: LoaderArgs, device=None):
        train = split == "train"
        self.batch_size = args.batch_size if train else val_batch_size(args.batch_size, args.val_images)
        self.seed, self.rank, self.world, self.train = args.seed, rank, world, train
        if source == "embedded":
            if args.paired:
                raise UsageError("task.name=paired needs paired data (A|B images or A/ and B/ folders); "
                                 "the embedded photos are single images")
            names = EMBEDDED_TRAIN if train else EMBEDDED_VAL
            self.samples = EmbeddedSamples(names, args.epoch_size if train else args.val_images, args.load_size,
                                           args.seed, train)
        else:
            items = split_items(Path(source), split, args.paired, args.val_fraction)
            if not items:
                raise UsageError(f"data.source={source!r}: no images for the {split} split "
                                 f"(looked for {', '.join(sorted(IMAGE_EXTS))})")
            if not train:
                items = items[: args.val_images]
            self.samples = FolderSamples(items, args.load_size, args.paired, args.seed, train, args.max_pixels)
        n = self.sample_count = len(self.samples)
        if train:
            self.batches_per_epoch = batches_per_epoch(n, self.batch_size, world, f"data.source={source!r}")
        else:  # validation: every image once, split over ranks; a rank may get a short batch
            self.indices = list(range(n))[rank::world]
            self.batches_per_epoch = batch_count(len(self.indices), self.batch_size)
        self.workers = args.workers
        self.pin = device is not None and torch.device(device).type == "cuda"
        self._continued: tuple[int, list[int]] | None = None  # (epoch, this rank's rest of it)

    def continue_epoch(self, epoch: int, history: list) -> None:
        """Epoch `epoch` goes on after what `history` read with other world or batch sizes
        (p2p.data.plan.continued_plan); batch indices of that epoch count from there."""
        # one permutation of all images (the folder order is global), then only this rank's part of the rest
        orders = RankOrders.of_permutation(epoch_permutation(len(self.samples), self.seed, epoch), history[0][0])
        plan, _ = continued_plan(orders, history, self.rank, self.world, self.batch_size)
        self._continued = (epoch, plan.tolist())

    def epoch_batches(self, epoch: int) -> int:
        """Batches in epoch `epoch` (fewer in an epoch continued with another world size)."""
        if self._continued is not None and self._continued[0] == epoch:
            return len(self._continued[1]) // self.batch_size
        return self.batches_per_epoch

    def epoch(self, epoch: int, start: int = 0) -> Iterator[Batch]:
        self.samples.epoch = epoch
        if self.train and self._continued is not None and self._continued[0] == epoch:
            order = self._continued[1]
        elif self.train:
            order = rank_order(len(self.samples), self.batch_size, self.seed, epoch, self.rank, self.world)
        else:
            order = self.indices
        order = order[start * self.batch_size:]
        if not order:
            return
        batches = [order[i:i + self.batch_size] for i in range(0, len(order), self.batch_size)]
        loader = torch.utils.data.DataLoader(
            self.samples, batch_sampler=batches, num_workers=self.workers, pin_memory=self.pin,
            collate_fn=_collate, worker_init_fn=quiet_handover,
            # Its own generator: otherwise DataLoader draws worker seeds from the global torch
            # RNG, and a resumed run's dropout masks would differ from an uninterrupted run's.
            generator=torch.Generator().manual_seed(mix_seed(self.seed, epoch, self.rank)))
        yield from watched(loader)  # a killed worker: one error naming it (p2p.data.workers)


def _collate(samples) -> Batch:
    images = torch.stack([s[0] for s in samples])
    return Batch(images, [s[1] for s in samples])
