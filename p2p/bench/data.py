"""Input pipelines, from stored images to model-ready tensors (`p2p bench data --source SHARDS`).

Every row measures images/s from files on disk to what the generator and discriminator eat: for
colorization the normalised L and ab, image_size x image_size, float32, on the training device
(here the CPU). For the p2p backends that is the loader's uint8 load_size batches plus the
training loop's own device-side step (`Task.prepare`: random crop to image_size, flip, the uint8
lookup-table Lab conversion, normalisation), run in this process as the loop runs it.

Rows, all on the same images, measured one after another in this process:

* baseline: the seed-style pipeline. A torch Dataset whose __getitem__ opens the ORIGINAL JPEG
  with PIL, applies torchvision Resize((256, 256)) and RandomHorizontalFlip, converts with
  skimage.color.rgb2lab and normalises L/50 - 1, ab/110; DataLoader(num_workers=2,
  batch_size=16). The originals are found through the shard folder's manifest (`source`) and
  each sample's json (`path`); when they are gone, the baseline decodes the shard's JPEGs.
* device step only: `Task.prepare` on one fixed batch, no loading, at 1 thread and at the core
  count, fused (p2p.fused: the C kernel) and eager (torch ops), with ms per image per core:
  the ceiling of every p2p row on a CPU-only machine, where this step shares the cores with
  decoding (on a GPU it runs on the GPU);
* wds at several worker counts (default 0, 1, 2 and the core count), plus the loader alone
  (uint8 batches, no device step) at the most workers; then the most workers as threads of
  this process (`data.worker_kind=thread`), model-ready and the loader alone;
* dali on the CPU at several thread counts (default 1 and 2), plus the loader alone, when DALI
  is installed;
* nvjpeg on a GPU (cuda:0): workers read the JPEG files, nvJPEG decodes each batch and the crop
  and Lab step run on the GPU; plus the loader alone. Both record GPU memory: `gpu_mem_peak_mb`
  (torch's allocator) and `gpu_mem_used_mb` (the whole device, nvJPEG's own buffers included).
  Without CUDA the row is kept with `skipped` and the reason;
* folder on the original images, when the manifest's source folder still exists.

The loader-alone rows are the CPU work a GPU node's cores do per image (the device step then
runs on the GPU), against the baseline that does all of its work on CPU cores. Whenever a GPU
is present (and DALI installed) two `dali_mixed` rows follow the dali ones: DALI's mixed
decoder (nvJPEG, the crop in the pipeline) with the device step on the GPU, model-ready and
the loader alone (`p2p.bench.data_rows.dali_mixed_rows`). Each backend's rows are its spec's `bench_rows`
(p2p.specs.backends), in the order `--backends` names them.

Each row: one untimed warm-up round (worker start-up, first batches), then `repeats` timed
rounds of `images` images each from one continuing stream of batches (epochs follow each other
as in training, so small sets loop over epochs and an epoch's worker start-up is counted);
img_per_s is the median round. In the pipeline rows the device step runs as `p2p train` runs it
on a CPU, one batch ahead in a background thread (p2p.data.prefetch), so decoding (in the
workers) and converting overlap. The device step runs with `main_threads` torch threads
(default: the cores the loader's workers or DALI threads leave, at least 1). The result has the
environment, the config and the rows with their ratio to the baseline.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from p2p.bench.common import environment, gpu_memory_mb, measure, with_ratios
from p2p.bench.data_rows import endless
from p2p.bench.data_rows import stream as stream_of
from p2p.errors import UsageError
from p2p.specs import load as load_ref
from p2p.specs.backends import BACKENDS

BASELINE = "seed-style PIL + skimage Dataset (baseline)"


@dataclass(frozen=True)
class DataOptions:
    """What the data benchmark is asked for (`p2p bench data`'s flags)."""

    batch_size: int = 16  # as the baseline
    images: int = 512  # per timed round
    backends: tuple[str, ...] = BACKENDS.names()  # p2p backends besides the baseline (each its spec's bench_rows)
    workers: tuple[int, ...] | None = None  # wds worker counts (default 0, 1, 2, cores)
    dali_threads: tuple[int, ...] = (1, 2)  # DALI CPU thread counts
    main_threads: int = 0  # torch threads for the device step (0 = the cores the loader leaves, >= 1)
    image_size: int = 256  # model input size
    load_size: int = 0  # loader size (0 = the shards' stored size)
    repeats: int = 3  # timed rounds per row
    quick: bool = False  # 2 batches per round, one round, workers 0 and 1, DALI 1 thread


# ---------------------------------------------------------------------------------------------
# the baseline


class SeedStyleDataset(torch.utils.data.Dataset):
    """The seed's per-image pipeline: PIL open, Resize((256,256)), RandomHorizontalFlip,
    skimage rgb2lab, L/50 - 1 and ab/110, all in __getitem__."""

    def __init__(self, items: list, size: int = 256):
        from torchvision import transforms

        self.items = items  # paths, or JPEG bytes when the originals are gone
        self.transform = transforms.Compose([transforms.Resize((size, size)), transforms.RandomHorizontalFlip()])

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, i: int):
        import io

        from PIL import Image
        from skimage.color import rgb2lab

        item = self.items[i]
        img = Image.open(item if isinstance(item, str) else io.BytesIO(item)).convert("RGB")
        img = np.asarray(self.transform(img))
        lab = rgb2lab(img).astype(np.float32)
        lab_t = torch.from_numpy(lab).permute(2, 0, 1)
        L = lab_t[[0], ...] / 50.0 - 1.0
        ab = lab_t[[1, 2], ...] / 110.0
        return L, ab


def _repeat(batch):
    while True:
        yield batch


# ---------------------------------------------------------------------------------------------
# the images


def _sample_jsons(source: str, limit: int) -> list[dict]:
    """The json member of the first `limit` train samples (manifest order), via the index."""
    from p2p.data.wds import ShardSet
    from p2p.data.shards.index import read_index

    shards = ShardSet(source, "train")
    out = []
    for tar, idx in zip(shards.tars, shards.idxs):
        with open(tar, "rb") as f:
            for comps in read_index(idx):
                for c in comps:
                    if c.ext == "json":
                        f.seek(c.offset)
                        out.append(json.loads(f.read(c.size)))
                if len(out) >= limit:
                    return out
    return out


def baseline_items(source: str, manifest: dict, limit: int) -> tuple[list, str]:
    """(items for SeedStyleDataset, what they are): original JPEG paths when the manifest's
    source folder still has them, else the shards' JPEG bytes."""
    src = manifest.get("source")
    metas = _sample_jsons(source, limit)
    if src and Path(src).is_dir():
        paths = [str(Path(src) / m["path"]) for m in metas if "path" in m]
        paths = [p for p in paths if os.path.isfile(p)]
        if paths:
            return paths, f"original JPEGs under {src}"
    from p2p.data.wds import ShardSet

    shards = ShardSet(source, "train")
    items = []
    for s, c in enumerate(shards.counts.tolist()):
        for m in range(c):
            items.append(shards.read(s, m))
            if len(items) >= limit:
                return items, "shard JPEGs (the originals are gone)"
    return items, "shard JPEGs (the originals are gone)"


# ---------------------------------------------------------------------------------------------
# rows


@dataclass
class DataBench:
    """One `p2p bench data` run, as each backend's rows (p2p.bench.data_rows) see it."""

    cfg: object  # the Config every row's loader is built from (with its own data.* values)
    source: str
    manifest: dict
    load: int  # the loader's size
    quick: bool
    cores: int
    worker_counts: list[int]  # wds
    dali_threads: list[int]
    main_threads: int  # asked for (0: the cores the loader leaves)
    default_threads: int
    timed: object  # timed(name, backend, workers, stream, prepare, threads, device=None, **extra): one row
    rows: list[dict]
    progress: object

    def threads_for(self, workers: int) -> int:
        """torch threads for the device step: those asked for, else the cores the loader leaves."""
        return self.main_threads if self.main_threads > 0 else max(1, self.cores - workers)


def _fitting_depth(size: int, depth: int) -> int:
    """The largest U-Net depth up to `depth` that `size` allows: this benchmark builds no model,
    but a config is only valid when its image size fits its model."""
    while depth > 0 and size % (2 ** depth):
        depth -= 1
    return depth


def run_data(source: str, options: DataOptions = DataOptions(), progress=print, partial=None) -> dict:
    """Measure every row on the shards in `source`; returns {environment, config, results}.
    `partial`, when given, gets {environment, config, results so far, partial: true} after each
    row, so a run cut at a time limit keeps the rows it measured."""
    from p2p.augment import step_generator
    from p2p.config import load_config, with_values
    from p2p.data.prefetch import PreparedBatches, prepares_ahead
    from p2p.data.shards import read_manifest
    from p2p.data import importable
    from p2p.data.decode import decoder_fallback_notice, jpeg_decoder
    from p2p.tasks import build_task

    o = options
    try:
        manifest = read_manifest(source)
    except (FileNotFoundError, ValueError) as e:
        raise UsageError(f"--source {source}: not a shard folder made by 'p2p shard' ({e})") from None
    if o.batch_size < 1 or o.images < 1 or o.repeats < 1:
        raise UsageError("--batch-size, --images and --repeats must be >= 1")
    cores = os.cpu_count() or 1
    load_avg = [round(x, 2) for x in os.getloadavg()] if hasattr(os, "getloadavg") else None
    quick, bs = o.quick, o.batch_size
    images = 2 * bs if quick else o.images
    repeats = 1 if quick else o.repeats
    rounds = -(-images // bs)  # batches per round
    worker_counts = list(o.workers) if o.workers else [0, 1] if quick else sorted({0, 1, 2, cores})
    dali_threads = [1] if quick else list(o.dali_threads)
    stored = (manifest.get("options") or {}).get("size") or 286
    load = o.load_size or stored
    size = min(o.image_size, load)
    if manifest.get("task") == "paired":
        raise UsageError("bench data measures single-image shards (colorize); these are paired A|B shards")

    defaults = load_config()
    cfg = with_values(defaults, {
        "data.source": source, "data.load_size": load, "data.image_size": size, "data.val_fraction": 0.0,
        "train.batch_size": bs, "model.num_downs": _fitting_depth(size, defaults.model.num_downs)})
    task = build_task(cfg.task)  # the fused device step (cfg.data.device_step), eager where it cannot build
    eager_task = build_task(cfg.task, "eager")
    device_step = task.device_step.implementation(torch.device("cpu"))  # builds (or loads) the kernel now
    default_threads = torch.get_num_threads()
    timing = {"warmup": 1, "repeats": repeats}
    rows: list[dict] = []
    env, folder = environment(), os.path.abspath(source)
    if fallback := decoder_fallback_notice():
        progress(f"notice: {fallback}")

    def timed(name: str, backend: str, workers: int | None, stream, prepare: bool, threads: int, device=None,
              row_task=None, ahead: bool = True, **extra) -> None:
        """One row. `device` is where its batches arrive (None: the CPU), synchronised on and, for
        a GPU, its memory recorded. With `prepare`, the device step runs as `p2p train` runs it:
        on a CPU one batch ahead in a background thread (p2p.data.prefetch), unless `ahead` is
        False."""
        row_task = row_task or task
        where = torch.device(device) if device is not None else torch.device("cpu")
        cuda = where.type == "cuda"
        if cuda:
            torch.cuda.reset_peak_memory_stats(where)

        def prep(batch, s: int):
            return row_task.prepare(batch.images, size, step_generator(0, 0, s), flip=True,
                                    crop_gen=step_generator(0, 0, s, 1))

        ahead = ahead and prepares_ahead(row_task, where)
        source = PreparedBatches(((0, 0, b) for b in stream), prep, 0, ahead=ahead) if prepare else None
        ran_ahead = source is not None and source.pool is not None  # what the row records: what ran

        def one_round() -> int:
            n = 0
            for _ in range(rounds):
                if source is not None:
                    n += next(source)[2][0].shape[0]
                    continue
                batch = next(stream)
                if isinstance(batch, (tuple, list)):  # the baseline's (L, ab)
                    n += batch[0].shape[0]
                else:  # loader only: uint8 load_size batches
                    n += batch.images.shape[0]
            return n

        torch.set_num_threads(threads)
        try:
            r = measure(one_round, device=device, **timing)
            if cuda:
                r.update(device=str(device), **gpu_memory_mb(device))
        finally:
            if source is not None:
                source.close()
            torch.set_num_threads(default_threads)
            if hasattr(stream, "close"):  # stop its workers / pipeline before the next row
                stream.close()
        row = {"name": name, "backend": backend, "workers": workers, "main_threads": threads,
               "stage": "model-ready" if prepare or backend == "baseline" else "loader only",
               "device_step": row_task.device_step.implementation(where) if prepare else None,
               **extra, **r}
        if prepare and backend != "device-step":
            row["prepare_ahead"] = ran_ahead
        if BACKENDS.get(backend) is not None and BACKENDS[backend].cpu_jpeg_decoder:  # p2p.data.decode
            row["decoder"] = jpeg_decoder()
        rows.append(row)
        progress(f"  {name}: {r['img_per_s']:.1f} img/s")
        if partial is not None and any(x["name"] == BASELINE for x in rows):
            partial({"environment": env, "config": {"source": folder, "partial": True},
                     "results": with_ratios([dict(x) for x in rows], BASELINE), "partial": True})

    # the baseline, on the same images
    items, what = baseline_items(source, manifest, max(images, 4 * bs))
    if not items:
        raise UsageError(f"--source {source}: no train samples")
    ds = SeedStyleDataset(items, 256)

    base_bs = min(16, len(ds))  # the seed's batch of 16 (fewer only for a tiny image set)

    def baseline_epoch(epoch: int):
        g = torch.Generator().manual_seed(epoch)
        return torch.utils.data.DataLoader(ds, batch_size=base_bs, shuffle=True, num_workers=2, generator=g,
                                           drop_last=True)

    progress(f"bench data: {source} (stored {stored}px, load {load}, image {size}); baseline reads {what}")
    timed(BASELINE, "baseline", 2, endless(baseline_epoch), False, default_threads, batch_size=base_bs)

    # the device-side step alone (no loading): the ceiling of every p2p row on this device
    if not quick:
        fixed = next(stream_of(cfg, {"data.backend": "wds", "data.workers": 0}))
        for t in sorted({1, cores}):
            for which, row_task in (("fused", task), ("eager", eager_task)):
                timed(f"device step only, {which} (crop + Lab, {t} thread{'s' if t > 1 else ''})", "device-step",
                      None, _repeat(fixed), True, t, row_task=row_task, ahead=False, stage="device step only")
                rows[-1]["ms_per_image_per_core"] = 1000 * t / rows[-1]["img_per_s"]

    bench = DataBench(cfg, source, manifest, load, quick, cores, worker_counts, dali_threads, o.main_threads,
                      default_threads, timed, rows, progress)
    for spec in map(BACKENDS.__getitem__, o.backends):  # each backend's own rows (its spec's bench_rows)
        if spec.package and not importable(spec.package):
            progress(f"  {spec.name} skipped: it needs {spec.package} ({spec.install})")
            continue
        try:
            load_ref(spec.bench_rows)(bench, spec)
        except UsageError as e:
            if not spec.package:  # an optional extra that cannot run here is a skip; others are errors
                raise
            progress(f"  {spec.name} skipped: {e}")

    rows = with_ratios(rows, BASELINE)
    config = {"source": os.path.abspath(source), "stored_size": stored, "load_size": load, "image_size": size,
              "batch_size": bs, "images_per_round": rounds * bs, "repeats": repeats, "quick": quick,
              "baseline_reads": what, "train_samples": int(sum(s["count"] for s in manifest["train"]["shards"])),
              "baseline_size": 256, "cores": cores, "task": "colorize", "load_avg_at_start": load_avg,
              "load_avg_at_end": [round(x, 2) for x in os.getloadavg()] if hasattr(os, "getloadavg") else None,
              "device_step": device_step, "kernel_compile_s": task.device_step.compile_s.get("cpu"),
              "decoder": jpeg_decoder()}
    if decoder_fallback_notice():
        config["notices"] = [decoder_fallback_notice()]
    return {"environment": env, "config": config, "results": rows}
