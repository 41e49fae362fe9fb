"""The dali backend: NVIDIA DALI reads, decodes and crops shards made by `p2p shard`.

Pipeline (one per epoch; rebuilt so that its state depends only on (seed, epoch, rank))::

    fn.readers.webdataset(paths, index_paths, ext=["jpg"], shard_id=rank, num_shards=world,
                          stick_to_shard=True, random_shuffle=train, seed)
      -> fn.decoders.image          "mixed" on a GPU (nvJPEG; the hardware decoder takes
                                    hw_decoder_load of the work where the GPU has one;
                                    libjpeg-turbo's chroma upsampling: decoder_options),
                                    "cpu" without one (pipeline device_id=None)
      -> fn.resize                  only when the stored size is not data.load_size
      -> fn.crop_mirror_normalize   load_size square at fn.random.uniform positions (train),
                                    the centre (val); paired A|B: whole image; uint8, CHW
    keys: fn.get_property(jpg, "source_info") = "<tar path>:<offset>:<member name>", padded
          to the batch's longest with fn.pad; the key is the member name without extension.

    -> DALIGenericIterator: a torch tensor on the GPU (no host round trip) or the CPU.

Which samples a rank reads: DALI concatenates the samples of `paths` in order and gives shard
k of n the range [N*k//n, N*(k+1)//n) (loader.cc `start_index`); with stick_to_shard=True
the reader wraps inside that range instead of moving on to the next rank's. The paths are the
manifest's shards permuted by (seed, epoch) exactly as the wds backend does (p2p.data.plan), so
both backends give every rank the same samples in an epoch (in different orders).
batches_per_epoch is (N // world) // batch_size from the manifest counts (the smallest range's
whole batches) and each rank stops after that many. The shuffle is DALI's: a buffer of
initial_fill samples (1024, at most the rank's range) drawn at random; DALI keeps draws within
the epoch's range, so no sample repeats in an epoch.

A checkpoint made with another world or batch size mid-epoch is refused (its spec says
`continues_other_world=False`; p2p.train.position refuses): the reader shuffles inside each
rank's range, so the images the old ranks read are not known; the message says how to finish
the epoch with the old world size first. At an epoch boundary any world size resumes.

A split with fewer samples than processes (a tiny val set: DALI's reader needs one per
process) is read with the wds reader instead, with a warning saying so once.

Resume: `epoch(e, start)` runs the pipeline and discards `start` batches (DALI's checkpoints
would need a state saved at that very batch, and the training checkpoint holds only (epoch,
batch)). The cost is decoding those batches once per restart, at the pipeline's speed
(benchmarks/RESULTS.md has the figure for the middle of a COCO epoch); nvJPEG on a GPU decodes
faster. The wds backend skips without decoding.

Validation: the val shards in manifest order, no shuffle; each rank reads the head of its
range up to its share of data.val_images (the same samples the wds backend validates on),
centre crops, a short last batch.
"""

from __future__ import annotations

from typing import Iterator

import numpy as np
import torch

from p2p.data import Batch, LoaderArgs, warn_once
from p2p.data.plan import (batch_count, batches_per_epoch, mix_seed, rank_range, shard_order, val_batch_size,
                           val_plan)
from p2p.data.shards.index import split_name
from p2p.data.wds import open_split
from p2p.errors import UsageError
from p2p.specs.backends import BACKENDS

NEEDS = (f"data.backend=dali needs NVIDIA DALI, an optional extra: {BACKENDS['dali'].install}; "
         f"data.backend=nvjpeg decodes on the GPU without it")
SHUFFLE_BUFFER = 1024


def _import_dali():
    try:
        import nvidia.dali  # noqa: F401
        from nvidia.dali import fn, pipeline_def, types
        from nvidia.dali.plugin.pytorch import DALIGenericIterator
    except ImportError as e:
        raise UsageError(f"{NEEDS} ({e})") from None
    return fn, pipeline_def, types, DALIGenericIterator


def parse_source_info(info: str, paths: set[str]) -> tuple[str, int, str]:
    """(tar path, data offset, member name) of a DALI webdataset source_info string."""
    head, sep, name = info.rpartition(":")
    path, sep2, offset = head.rpartition(":")
    if sep and sep2 and path in paths and offset.isdigit():
        return path, int(offset), name
    for p in sorted(paths, key=len, reverse=True):  # a ':' inside the member name
        if info.startswith(p + ":"):
            offset, _, name = info[len(p) + 1:].partition(":")
            return p, int(offset), name
    raise ValueError(f"unexpected DALI source_info {info!r}")


def decoder_options(decoder: str) -> dict:
    """fn.decoders.image arguments beyond the device. mixed (nvJPEG): the hardware decoder takes
    hw_decoder_load of the work where the GPU has one, and `jpeg_fancy_upsampling=True` makes its
    chroma upsampling that of libjpeg-turbo, which the cpu backend and the wds/folder loaders
    use (DALI's default for mixed is plain replication: on 4:2:0 JPEGs its pixels differ from
    the other backends' and validation scores would not compare across backends)."""
    if decoder != "mixed":
        return {}
    return {"hw_decoder_load": 0.75, "jpeg_fancy_upsampling": True}


class DaliLoader:
    """Deterministic, rank-disjoint batches from a shard folder through DALI."""

    def __init__(self, source: str, split: str, rank: int, world: int, args: LoaderArgs, device=None):
        self.fn, self.pipeline_def, self.types, self.Iterator = _import_dali()
        self.train = split == "train"
        self.seed, self.rank, self.world = args.seed, rank, world
        self.load_size, self.threads = args.load_size, max(1, args.workers)
        self.paired = args.paired
        dev = torch.device(device) if device is not None else torch.device("cpu")
        self.device = dev
        self.gpu = dev.type == "cuda"
        self.device_id = (dev.index if dev.index is not None else torch.cuda.current_device()) if self.gpu else None
        what = f"data.source={source!r}"
        self.shards = shards = open_split(source, split, args)
        for shard in range(len(shards.tars)):  # DALI reads the index files itself: check them first
            shards.index(shard)  # (offsets and sizes inside the tar; UsageError otherwise)
        self.sample_count = shards.total
        self.stored_size = shards.stored_size
        lo, hi = rank_range(shards.total, rank, world)
        self.range_size = hi - lo
        if self.train:
            self.batch_size = args.batch_size
            self.batches_per_epoch = batches_per_epoch(shards.total, self.batch_size, world, what)
            self.count = self.batches_per_epoch * self.batch_size
        else:
            self.batch_size = val_batch_size(args.batch_size, args.val_images)
            self._val = val_plan(shards.counts, args.val_images, rank, world)
            self.count = len(self._val)
            self.batches_per_epoch = batch_count(self.count, self.batch_size)

    # No continue_epoch: its spec says it cannot continue an epoch on another world size (its
    # reader shuffles inside each rank's range), and p2p.train.position refuses in one line.

    def epoch_batches(self, epoch: int) -> int:
        return self.batches_per_epoch

    # ---- the pipeline ------------------------------------------------------------------------

    def pipeline_seed(self, epoch: int) -> int:
        return mix_seed(self.seed, epoch, self.rank, 0xDA11) % (2**31 - 1)

    def paths(self, epoch: int) -> tuple[list[str], list[str]]:
        """Tar and index paths in this epoch's order (training: permuted by (seed, epoch))."""
        order = shard_order(len(self.shards.tars), self.seed, epoch) if self.train else np.arange(len(self.shards.tars))
        return [self.shards.tars[i] for i in order], [self.shards.idxs[i] for i in order]

    def build(self, epoch: int):
        fn, types = self.fn, self.types
        tars, idxs = self.paths(epoch)
        seed = self.pipeline_seed(epoch)
        s, train, paired = self.load_size, self.train, self.paired
        resize = self.stored_size != s
        decoder = "mixed" if self.gpu else "cpu"

        @self.pipeline_def(batch_size=self.batch_size, num_threads=self.threads, device_id=self.device_id,
                           seed=seed, prefetch_queue_depth=2, exec_dynamic=True)
        def pipe():
            jpg = fn.readers.webdataset(
                paths=tars, index_paths=idxs, ext=["jpg"], shard_id=self.rank, num_shards=self.world,
                stick_to_shard=True, random_shuffle=train, pad_last_batch=False, seed=seed,
                initial_fill=max(1, min(SHUFFLE_BUFFER, self.range_size)), name="reader")
            info = fn.get_property(jpg, key="source_info")
            img = fn.decoders.image(jpg, device=decoder, output_type=types.RGB, **decoder_options(decoder))
            if paired:
                if resize:
                    img = fn.resize(img, resize_x=2 * s, resize_y=s, antialias=True)
                out = fn.crop_mirror_normalize(img, dtype=types.UINT8, output_layout="CHW")
            else:
                if resize:
                    img = fn.resize(img, resize_shorter=s, antialias=True)
                if train:
                    px, py = fn.random.uniform(range=(0.0, 1.0)), fn.random.uniform(range=(0.0, 1.0))
                elif not resize:  # the centre as the other backends round it: (w - s) // 2
                    px, py = self._centre(jpg, s)
                else:
                    px = py = 0.5
                out = fn.crop_mirror_normalize(img, crop=(s, s), crop_pos_x=px, crop_pos_y=py,
                                               dtype=types.UINT8, output_layout="CHW")
            return out, fn.pad(info, fill_value=0)

        p = pipe()
        p.build()
        return p

    def _centre(self, jpg, s: int):
        """crop_pos_x/y that put the window at ((h - s) // 2, (w - s) // 2), from the JPEG header
        (DALI's own centre, 0.5, rounds half a pixel the other way)."""
        from nvidia.dali import math as dmath

        fn, types = self.fn, self.types
        shape = fn.peek_image_shape(jpg)  # H, W, C without decoding

        def pos(extent):
            room = extent - s
            return fn.cast(room // 2, dtype=types.FLOAT) / fn.cast(dmath.max(room, 1), dtype=types.FLOAT)

        return pos(shape[1]), pos(shape[0])

    def _keys(self, raw: torch.Tensor, paths: set[str]) -> list[str]:
        keys = []
        for row in raw.cpu().numpy():
            info = bytes(row).rstrip(b"\0").decode("utf-8")
            keys.append(split_name(parse_source_info(info, paths)[2])[0])
        return keys

    def epoch(self, epoch: int, start: int = 0) -> Iterator[Batch]:
        """Batches start.. of the epoch; the first `start` are decoded and dropped (see above)."""
        if start >= self.batches_per_epoch or self.count == 0:
            return
        if self.shards.total < self.world:  # DALI needs a sample per shard_id: only tiny val sets
            warn_once(f"data.backend=dali: the {self.shards.split} split of data.source={self.shards.source!r} holds "
                      f"{self.shards.total} sample(s), fewer than the {self.world} processes DALI's reader needs one "
                      f"each of: this rank reads it with the wds reader (libjpeg-turbo on the CPU)")
            yield from self._wds_fallback(epoch, start)
            return
        pipe = self.build(epoch)
        it = self.Iterator([pipe], ["images", "keys"], size=-1, auto_reset=False, prepare_first_batch=False)
        paths = set(self.shards.tars)
        left = self.count
        try:
            for b in range(self.batches_per_epoch):
                out = next(it)[0]
                n = min(self.batch_size, left)
                left -= n
                if b < start:
                    continue
                images = out["images"][:n]
                keys = self._keys(out["keys"][:n], paths)
                yield Batch(images if self.gpu else images.contiguous(), keys)
        finally:
            del it, pipe

    def _wds_fallback(self, epoch: int, start: int) -> Iterator[Batch]:
        from p2p.data.wds import ShardBatches

        plan = self._val
        data = ShardBatches(self.shards, plan, self.batch_size, np.roll(plan, -1, axis=0), self.load_size,
                            self.paired, self.seed, epoch, False)
        for b in range(start, len(data)):
            batch = data[b]
            yield batch.to(self.device) if self.gpu else batch
