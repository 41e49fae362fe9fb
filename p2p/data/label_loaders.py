"""Loaders for task.name=labels (p2p.label_task): the same batch contract as paired data, A|B
side by side, with the A half made of a label map (p2p.data.label_maps: id, boundary 0/255, zero).

- folder: pix2pixHD's layout (`train_label/`, `train_img/`, optional `train_inst/`; `val_*` or
  `test_*` for validation, else data.val_fraction of the train keys by `hash_unit`, the rule
  `p2p shard --task labels` uses). Maps are read by p2p.data.label_maps (PNG only), resized NEAREST to
  load_size x load_size, boundaries taken after the resize; the photo is read by read_rgb and
  resized bicubic, as the paired halves are.
- wds: shards of `p2p shard --task labels`: per sample `<key>.png` (the A half, lossless) and
  `<key>.jpg` (the photo). Both members are read at their index offsets; a stored size other than
  load_size is resized, NEAREST for the map.
- dali and nvjpeg decode JPEG members on the GPU and have no PNG path: their specs
  (p2p.specs.backends) have no `label_loader`, so they refuse the task in one line, and
  data.backend=auto picks wds for label shards on a GPU too.

Every batch is checked on the CPU, in the training process, before it goes to the device
(`LabelChecked`): an id >= task.label_nc, or a map the folder loader could not use (a colour
image, a size unlike its photo's), is one line naming the file (a UsageError: exit 2), never a
device-side assert. Worker processes cannot raise it as one line (DataLoader re-raises with a
traceback in the message), so the folder loader's workers mark such a sample in its key.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Iterator

import numpy as np
import torch

from p2p.data import Batch, LoaderArgs, warn_once
from p2p.data.folder import FolderLoader, FolderSamples
from p2p.data.plan import batch_count, batches_per_epoch, val_batch_size
from p2p.data.shards.format import hash_unit, sample_key
from p2p.data.wds import ShardBatches, ShardSet, WdsLoader
from p2p.errors import UsageError
from p2p.data.label_maps import LabelFiles, LabelMapError, check_batch_ids, label_files, load_a_half, split_folders

BAD = "\x00refused:"  # a key so marked carries the one-line reason a worker refused its sample


def label_folder_loader(source: str, split: str, rank: int, world: int, args: LoaderArgs, device=None):
    """The folder backend's loader for label maps (its spec's `label_loader`), with the id check."""
    return LabelChecked(LabelFolderLoader(source, split, rank, world, args, device), args.label_nc)


def label_wds_loader(source: str, split: str, rank: int, world: int, args: LoaderArgs, device=None):
    """The wds backend's loader for label shards (its spec's `label_loader`), with the id check."""
    return LabelChecked(LabelWdsLoader(source, split, rank, world, args, device), args.label_nc)


class LabelChecked:
    """A loader whose batches are checked for ids < label_nc (and refused samples) before they
    leave it; everything else is the wrapped loader's."""

    def __init__(self, loader, label_nc: int):
        self.loader, self.label_nc = loader, label_nc

    def __getattr__(self, name):
        return getattr(self.loader, name)

    def epoch(self, epoch: int, start: int = 0) -> Iterator[Batch]:
        for batch in self.loader.epoch(epoch, start):
            for key in batch.keys:
                if key.startswith(BAD):
                    raise UsageError(key[len(BAD):])
            check_batch_ids(batch.images, batch.keys, self.label_nc)  # a CPU pass over the ids, before the device
            yield batch


# ---------------------------------------------------------------------------------------------
# folder


def label_split_items(root, split: str, args: LoaderArgs) -> list[LabelFiles]:
    """The samples of `split`: val_*/test_* folders when there are, else the hash split of the
    train folders with data.val_fraction (p2p.data.folder's rule, on the same keys as shards)."""
    instances = args.instance_boundaries
    own = split == "train" or split_folders(Path(root), "val") is not None
    items, unpaired = label_files(root, split if own else "train", instances)
    for path, why in unpaired:
        warn_once(f"task labels: {path} is left out: {why}")
    if own:
        return items
    frac = args.val_fraction
    return [it for it in items if frac > 0 and hash_unit(sample_key(it.key)) < frac] if split == "val" else items


class LabelSamples(FolderSamples):
    """FolderSamples of LabelFiles: the A half from the maps, the photo as B, each s x s."""

    def __init__(self, items, load_size, seed, train, max_pixels, label_nc):
        super().__init__(items, load_size, True, seed, train, max_pixels)
        self.label_nc = label_nc

    def load(self, index: int) -> np.ndarray:
        from PIL import Image

        from p2p.data.images import read_rgb

        item, s = self.items[index], self.load_size
        photo = read_rgb(item.photo, self.max_pixels)
        a = load_a_half(item.label, item.inst, (s, s), self.label_nc, self.max_pixels, photo.size)
        return np.concatenate([a, np.asarray(photo.resize((s, s), Image.BICUBIC))], axis=1)

    def __getitem__(self, index):
        from PIL import Image

        try:
            arr = self.load(index)
        except LabelMapError as e:  # not skipped: the training process refuses it in one line
            s = self.load_size
            return torch.zeros((3, s, 2 * s), dtype=torch.uint8), f"{BAD}{self.items[index].label}: {e}"
        except (OSError, ValueError, Image.DecompressionBombError):
            return super().__getitem__(index)  # unreadable files: skipped and replaced, as for any folder
        return torch.from_numpy(np.array(arr, copy=True)).permute(2, 0, 1), self.key(index)

    def key(self, index: int) -> str:
        return str(self.items[index].label)


class LabelFolderLoader(FolderLoader):
    """FolderLoader over a pix2pixHD-layout folder (the plan, epochs and resume are its own)."""

    def __init__(self, source: str, split: str, rank: int, world: int, args: LoaderArgs, device=None):
        train = split == "train"
        if source == "embedded":
            raise UsageError("task.name=labels needs label maps and photos (pix2pixHD's train_label/, train_img/); "
                             "the embedded photos have none")
        self.batch_size = args.batch_size if train else val_batch_size(args.batch_size, args.val_images)
        self.seed, self.rank, self.world, self.train = args.seed, rank, world, train
        items = label_split_items(source, split, args)
        if not items:
            raise UsageError(f"data.source={source!r}: no label map with its photo for the {split} split")
        if not train:
            items = items[: args.val_images]
        self.samples = LabelSamples(items, args.load_size, args.seed, train, args.max_pixels, args.label_nc)
        n = len(self.samples)
        if train:
            self.batches_per_epoch = batches_per_epoch(n, self.batch_size, world, f"data.source={source!r}")
        else:
            self.indices = list(range(n))[rank::world]
            self.batches_per_epoch = batch_count(len(self.indices), self.batch_size)
        self.sample_count = n
        self.workers = args.workers
        self.pin = device is not None and torch.device(device).type == "cuda"
        self._continued = None


# ---------------------------------------------------------------------------------------------
# shards


class LabelShardSet(ShardSet):
    """ShardSet whose `read` gives (map PNG bytes, photo JPEG bytes) of a sample."""

    def map_index(self, shard: int) -> tuple[np.ndarray, np.ndarray]:
        """(png data offsets, sizes) of a shard's samples, in stored order."""
        cache = self.__dict__.setdefault("_maps", {})
        got = cache.get(shard)
        if got is None:
            from p2p.data.shards.index import read_index

            samples = read_index(self.idxs[shard], self.sizes[shard])
            offsets = np.zeros(len(samples), dtype=np.int64)
            sizes = np.zeros(len(samples), dtype=np.int64)
            for i, comps in enumerate(samples):
                for c in comps:
                    if c.ext == "png":
                        offsets[i], sizes[i] = c.offset, c.size
            got = cache[shard] = (offsets, sizes)
        return got

    def index(self, shard: int):
        got = super().index(shard)
        self.map_index(shard)  # parsed with the rest, before workers fork
        return got

    def read(self, shard: int, member: int) -> tuple[bytes, bytes]:
        photo = super().read(shard, member)  # opens this process's descriptor of the shard
        offsets, sizes = self.map_index(shard)
        size = int(sizes[member])
        data = os.pread(self._fds[shard], size, int(offsets[member]))
        if size == 0 or len(data) != size:
            raise OSError(f"no label map member, or a short read: {len(data)} of {size} bytes")
        return data, photo


def decode_label_sample(data: tuple[bytes, bytes], load_size: int, max_pixels: int) -> torch.Tensor:
    """(map PNG, photo JPEG) -> 3 x s x 2s uint8: the A half resized NEAREST, the photo bilinear."""
    from torch.nn import functional as F

    from p2p.data.decode import decode_rgb, resize
    from p2p.data.images import sniff_format

    png, jpg = data
    if sniff_format(png[:32]) != "PNG":
        raise ValueError("the label map member is not a PNG")
    a = decode_rgb(png, max_pixels)
    b = resize(decode_rgb(jpg, max_pixels), load_size, load_size)
    if a.shape[-2:] != (load_size, load_size):
        a = F.interpolate(a[None], size=(load_size, load_size), mode="nearest-exact")[0]
    return torch.cat([a, b], dim=-1)


class LabelShardBatches(ShardBatches):
    def _fill(self, out: torch.Tensor, pos: int, shard: int, member: int) -> str:
        def use(key, data):
            np.copyto(out.numpy(), decode_label_sample(data, self.load_size, self.shards.max_pixels).numpy())

        return self.first_good(pos, shard, member, use)


class LabelWdsLoader(WdsLoader):
    """WdsLoader over label shards: both members of every sample, A|B batches."""

    batches = LabelShardBatches

    def __init__(self, source: str, split: str, rank: int, world: int, args: LoaderArgs, device=None):
        super().__init__(source, split, rank, world, args, device)
        m = self.shards.manifest  # open_split has checked that it holds label shards
        what = f"data.source={source!r}"
        opts = m.get("options") if isinstance(m.get("options"), dict) else {}
        if args.instance_boundaries and not opts.get("instances"):
            raise UsageError(f"task.instance_boundaries needs shards with instance boundaries, and {what} has none "
                             f"(shard a folder with train_inst/)")
        old = self.shards
        self.shards = LabelShardSet(old.source, old.split, old.max_pixels)
        old.close()
        self.paired = True


def stored_side(png: bytes) -> int:
    """The height of a stored map (its side: stored maps are square), from its header."""
    from p2p.data.images import open_image

    with open_image(png) as im:
        return im.size[1]
