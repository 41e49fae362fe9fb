"""JPEG decoders on a shard folder's own JPEGs, one core each (`p2p bench decode --source SHARDS`).

Rows, measured in turn in every round of this one process (so load hits them alike), single
threaded, bytes already in memory, decoded to H x W x 3 RGB uint8:

* torchvision `decode_jpeg` (libjpeg-turbo, accurate islow IDCT): the reference pixels, and
  the baseline of the ratios (what the wds backend used before simplejpeg);
* PIL `Image.open(...).convert("RGB")` (libjpeg-turbo);
* simplejpeg (libjpeg-turbo through TurboJPEG), accurate, and with `fastdct` and
  `fastdct + fastupsample`;
* DALI `decoders.image` on the CPU, 1 thread, reading the same shards (`readers.webdataset`:
  its row includes reading, which is small next to decoding), when DALI is installed.

Each row has img/s per core (median of rounds), the largest pixel difference from the
reference over every measured image and the share of pixels that differ; a decoder keeps the
pixels when it is within 1 level everywhere. `p2p.data.decode` uses the fastest that does.
"""

from __future__ import annotations

import io
import os
import statistics
import time

import numpy as np
import torch

from p2p.bench.common import environment, with_ratios
from p2p.errors import UsageError

BASELINE = "torchvision decode_jpeg (accurate; reference pixels)"


def _decoders(datas: list[bytes]) -> dict:
    from PIL import Image
    from torchvision.io import ImageReadMode, decode_jpeg

    tensors = [torch.frombuffer(bytearray(d), dtype=torch.uint8) for d in datas]
    out = {
        BASELINE: lambda i: decode_jpeg(tensors[i], mode=ImageReadMode.RGB).permute(1, 2, 0).numpy(),
        "PIL": lambda i: np.asarray(Image.open(io.BytesIO(datas[i])).convert("RGB")),
    }
    try:
        import simplejpeg
    except ImportError:
        return out
    out["simplejpeg (accurate)"] = lambda i: simplejpeg.decode_jpeg(datas[i], "RGB")
    out["simplejpeg fastdct"] = lambda i: simplejpeg.decode_jpeg(datas[i], "RGB", fastdct=True)
    out["simplejpeg fastdct + fastupsample"] = lambda i: simplejpeg.decode_jpeg(datas[i], "RGB", fastdct=True,
                                                                                fastupsample=True)
    return out


def _dali_rate(source: str, count: int, repeats: int) -> float | None:
    """img/s of DALI's CPU decoder with 1 thread over `count` shard images (None without DALI)."""
    try:
        from nvidia.dali import fn, pipeline_def, types
    except ImportError:
        return None
    from p2p.data.wds import ShardSet

    shards = ShardSet(source, "train")
    batch = 16

    @pipeline_def(batch_size=batch, num_threads=1, device_id=None, prefetch_queue_depth=1)
    def pipe():
        jpg = fn.readers.webdataset(paths=list(shards.tars), index_paths=list(shards.idxs), ext=["jpg"], name="reader")
        return fn.decoders.image(jpg, device="cpu", output_type=types.RGB)

    p = pipe()
    p.build()
    p.run()  # warm-up
    rates = []
    for _ in range(repeats):
        t0, n = time.perf_counter(), 0
        while n < count:
            p.run()
            n += batch
        rates.append(n / (time.perf_counter() - t0))
    del p
    return statistics.median(rates)


def run_decode(source: str, images: int = 200, repeats: int = 5) -> dict:
    """{environment, config, results} for the decoders on the first `images` train JPEGs."""
    from p2p.bench.data import baseline_items
    from p2p.data.shards import read_manifest

    try:
        manifest = read_manifest(source)
    except (FileNotFoundError, ValueError) as e:
        raise UsageError(f"--source {source}: not a shard folder made by 'p2p shard' ({e})") from None
    if images < 1 or repeats < 1:
        raise UsageError("--images and --repeats must be >= 1")
    # the shards' own JPEGs (not the originals): what the loaders decode
    datas, _ = baseline_items(source, {}, images)
    if not datas:
        raise UsageError(f"--source {source}: no train samples")
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        decoders = _decoders(datas)
        reference = [decoders[BASELINE](i).copy() for i in range(len(datas))]
        rows = []
        for name, decode in decoders.items():
            worst, differing, pixels = 0, 0, 0
            for i, ref in enumerate(reference):
                diff = np.abs(np.asarray(decode(i)).astype(np.int16) - ref)
                worst, differing, pixels = max(worst, int(diff.max())), differing + int((diff > 0).sum()), pixels + diff.size
            rows.append({"name": name, "max_abs_diff": worst, "differing_share": differing / pixels,
                         "keeps_pixels": worst <= 1, "rates": []})
        for _ in range(repeats):  # every decoder once per round, in turn
            for row, decode in zip(rows, decoders.values()):
                t0 = time.perf_counter()
                for i in range(len(datas)):
                    decode(i)
                row["rates"].append(len(datas) / (time.perf_counter() - t0))
        for row in rows:
            rates = row.pop("rates")
            row.update(img_per_s=statistics.median(rates), img_per_s_min=min(rates), img_per_s_max=max(rates))
        dali = _dali_rate(source, len(datas), repeats)
        if dali is not None:
            rows.append({"name": "DALI decoders.image cpu, 1 thread (with reading)", "img_per_s": dali,
                         "max_abs_diff": None, "differing_share": None, "keeps_pixels": None})
    finally:
        torch.set_num_threads(threads)
    from p2p.data import decode as used

    in_use = "simplejpeg (accurate)" if used.simplejpeg is not None else BASELINE
    for row in rows:
        row["used_by_loaders"] = row["name"] == in_use
    sizes = [r.shape[:2] for r in reference]
    config = {"source": os.path.abspath(source), "images": len(datas), "repeats": repeats, "threads": 1,
              "mean_pixels": float(np.mean([h * w for h, w in sizes])),
              "load_avg_at_end": [round(x, 2) for x in os.getloadavg()] if hasattr(os, "getloadavg") else None}
    return {"environment": environment(), "config": config, "results": with_ratios(rows, BASELINE)}
