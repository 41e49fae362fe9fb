"""The nvjpeg backend: the wds reader without its CPU decode; nvJPEG decodes every batch on the GPU
in one call, through the torchvision that ships with torch (no DALI needed).

What runs where
---------------
DataLoader workers run the wds backend's reader (p2p.data.wds: the same ShardSet, epoch plan,
DDP split and replacement of unreadable samples) but only read: a batch becomes its JPEG files
as stored, back to back in one buffer with their end offsets (`JpegBatch`), a few pickled
megabytes through the worker's pipe. A member that is not a JPEG (a PNG packed by hand) takes
the wds path instead, decoded on the worker's CPU.

The main process hands the batch's files to `torchvision.io.decode_jpeg(files, device="cuda")`,
one batched nvJPEG call (the GPU's hardware JPEG decoder for baseline JPEGs where it has one,
CUDA kernels otherwise), then cuts each image's load_size window on the GPU with
p2p.data.decode's `sample_window`, as the wds workers cut theirs on the CPU: a resize only when
the stored size differs, the window random per (seed, epoch, key) in training and the centre in
validation, paired A|B images resized whole. The stacked windows are the batch: uint8
N x 3 x H x W, already on the device, with its keys.

The same as wds: the plan, hence the DDP split, the order, batches_per_epoch and the resume
position (`epoch(e, start)` reads nothing before batch `start`), the keys and the windows. The
pixels are nvJPEG's, not libjpeg-turbo's: within one level of them (tests/test_gpu.py); a resize
on the GPU runs in float32 where the CPU's runs in fixed point.

A JPEG that nvJPEG rejects: the batch is decoded again file by file, and each file that still
fails goes the wds way on the CPU (libjpeg-turbo; a sample that is corrupt there too is reported
and replaced by the same deterministic spare sample as in wds).

Streams (torchvision/csrc/io/image/cuda/decode_jpegs_cuda.cpp): torchvision decodes on a stream
of its own, makes the caller's current stream wait for it and returns once the decode is done,
but allocates the images on the current stream. `NvjpegDecoder` calls it with a stream of its
own current and marks the images as used on the caller's stream, so the caching allocator cannot
hand an image's memory to the next decode while a crop of it is still queued there.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass, field
from typing import Iterator

import torch
from torchvision.io import ImageReadMode, decode_jpeg

from p2p.data import Batch, LoaderArgs
from p2p.data.decode import is_jpeg, jpeg_header_check, sample_window
from p2p.data.wds import ShardBatches, WdsLoader
from p2p.errors import UsageError


def no_cuda_reason(device) -> str | None:
    """Why the nvjpeg backend cannot run on `device`, or None."""
    if device is not None and torch.device(device).type == "cuda" and torch.cuda.is_available():
        return None
    where = ("this machine has no CUDA GPU" if not torch.cuda.is_available() else
             f"this process runs on {device or 'cpu'} (train.device=cpu?)")
    return (f"data.backend=nvjpeg decodes JPEGs on a CUDA GPU, and {where}; use data.backend=wds "
            f"(libjpeg-turbo in the loader workers)")


class NvjpegDecoder:
    """torchvision's batched nvJPEG decode onto one CUDA device; on any other device it refuses
    with one line."""

    def __init__(self, device):
        why = no_cuda_reason(device)
        if why:
            raise UsageError(why)
        dev = torch.device(device)
        self.device = torch.device("cuda", dev.index if dev.index is not None else torch.cuda.current_device())
        self.stream = torch.cuda.Stream(self.device)
        self._probe()

    def _probe(self) -> None:
        """Decode a tiny JPEG now: a torchvision built without nvJPEG fails here, in one line,
        not in the middle of the first epoch."""
        from torchvision.io import encode_jpeg

        try:
            self([encode_jpeg(torch.zeros(3, 8, 8, dtype=torch.uint8))])
        except RuntimeError as e:
            raise UsageError(f"data.backend=nvjpeg: torchvision cannot decode JPEGs on {self.device} "
                             f"({str(e).splitlines()[0] if str(e) else type(e).__name__}); use data.backend=wds "
                             f"or dali") from None

    def __call__(self, files: list[torch.Tensor]) -> list[torch.Tensor]:
        """JPEG files (1-D uint8 CPU tensors) -> 3 x H x W uint8 RGB images on the device, ready
        for work queued on the current stream. Raises RuntimeError when one file fails."""
        consumer = torch.cuda.current_stream(self.device)
        with torch.cuda.stream(self.stream):
            images = decode_jpeg(files, mode=ImageReadMode.RGB, device=self.device)
        consumer.wait_stream(self.stream)
        for image in images:
            image.record_stream(consumer)
        return images


@dataclass
class JpegBatch:
    """What a worker sends for a batch: its samples' JPEG files, not decoded."""

    first: int  # the epoch position of its first sample
    keys: list[str]
    blob: bytearray  # the JPEG files back to back
    ends: list[int]  # where each sample's file ends in `blob` (samples in `pixels` have none)
    pixels: dict[int, torch.Tensor] = field(default_factory=dict)  # non-JPEG samples, decoded on the CPU

    def files(self) -> list[tuple[int, torch.Tensor]]:
        """(index in the batch, its file as a 1-D uint8 CPU tensor viewing `blob`) of each JPEG."""
        if not self.blob:
            return []
        buf = torch.frombuffer(self.blob, dtype=torch.uint8)
        out, start = [], 0
        for i, end in enumerate(self.ends):
            if i not in self.pixels:
                out.append((i, buf[start:end]))
            start = end
        return out


class NotJpeg(Exception):
    """A member that is no JPEG: it takes the wds path (not one of the errors that mark a sample
    corrupt, so p2p.data.wds's replacement loop lets it through)."""


class ShardJpegs(ShardBatches):
    """The wds reader's dataset, whose item b is batch b's JPEG files as stored (a JpegBatch)."""

    writes_into_ring = False  # files of any length: pickled through the worker's pipe

    def __getitem__(self, b: int) -> JpegBatch:
        first = b * self.batch_size
        rows = self.plan[first:first + self.batch_size]
        batch = JpegBatch(first, [], bytearray(), [])
        for i, (shard, member) in enumerate(rows.tolist()):
            found = []

            def keep(key: str, data: bytes) -> None:
                if not is_jpeg(data):
                    raise NotJpeg
                # the size from the header before nvJPEG allocates it (ImageRejected: skipped and replaced)
                jpeg_header_check(data, self.shards.max_pixels)
                found.append(data)

            try:
                key = self.first_good(first + i, shard, member, keep)
                batch.blob += found[-1]
            except NotJpeg:
                key, batch.pixels[i] = self.decode_on_cpu(first + i)
            batch.keys.append(key)
            batch.ends.append(len(batch.blob))
        return batch

    def decode_on_cpu(self, pos: int) -> tuple[str, torch.Tensor]:
        """The sample at epoch position `pos` the wds way (libjpeg-turbo or PIL on this CPU, and
        the same replacement when it is corrupt): its key and its batch entry."""
        out = torch.empty(self.shape[1:], dtype=torch.uint8)
        shard, member = (int(v) for v in self.plan[pos])
        return self._fill(out, pos, shard, member), out


class NvjpegLoader(WdsLoader):
    """The wds loader whose workers only read, with nvJPEG decoding each batch on the GPU (see
    the module docstring). `decoder` maps a list of JPEG files to decoded images on its
    `device`; the default is nvJPEG on `device`, which must be a CUDA device."""

    batches = ShardJpegs

    def __init__(self, source: str, split: str, rank: int, world: int, args: LoaderArgs, device=None,
                 decoder=None):
        self.decoder = decoder if decoder is not None else NvjpegDecoder(device)
        super().__init__(source, split, rank, world, args, device)
        self.pin = False  # the workers send files, which nvJPEG stages itself
        self.device = self.decoder.device

    def epoch(self, epoch: int, start: int = 0) -> Iterator[Batch]:
        on_cpu: list[ShardJpegs] = []  # this epoch's dataset in this process, made on first need
        for jpegs in super().epoch(epoch, start):
            yield self.decode(jpegs, epoch, on_cpu)

    def decode(self, jpegs: JpegBatch, epoch: int, on_cpu: list) -> Batch:
        keys = list(jpegs.keys)
        files = jpegs.files()
        images = self._decode_files([f for _, f in files])
        windows: list[torch.Tensor | None] = [None] * len(keys)
        for (i, _), image in zip(files, images):
            if image is not None:
                windows[i] = sample_window(image, self.load_size, self.paired, self.seed, epoch,
                                           keys[i] if self.train else None)
        for i, pixels in jpegs.pixels.items():
            windows[i] = pixels.to(self.device)
        for i in [i for i, w in enumerate(windows) if w is None]:
            warnings.warn(f"nvJPEG could not decode sample {keys[i]!r}: decoding it on the CPU", stacklevel=2)
            if not on_cpu:
                on_cpu.append(self.dataset(epoch))
            keys[i], pixels = on_cpu[0].decode_on_cpu(jpegs.first + i)
            windows[i] = pixels.to(self.device)
        return Batch(torch.stack(windows), keys)

    def _decode_files(self, files: list[torch.Tensor]) -> list[torch.Tensor | None]:
        """One batched decode; when it fails (it returns nothing then), file by file, with None
        for each file that fails alone."""
        if not files:
            return []
        try:
            return list(self.decoder(files))
        except RuntimeError:
            out = []
            for f in files:
                try:
                    out.append(self.decoder([f])[0])
                except RuntimeError:
                    out.append(None)
            return out
