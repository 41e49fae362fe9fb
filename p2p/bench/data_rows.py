"""The rows each data backend adds to `p2p bench data` (p2p.bench.data runs them): one function
per backend, named by its spec's `bench_rows` (p2p.specs.backends), so a new backend brings
its rows with its registration. Each is called with the `DataBench` of the run (the config,
the timing function, the row list) and its spec.
"""

from __future__ import annotations

from pathlib import Path

import torch

from p2p.errors import UsageError


def endless(make_iter):
    """Batches from make_iter(epoch) for epoch 0, 1, ...: one continuing stream."""
    epoch = 0
    while True:
        got = False
        for item in make_iter(epoch):
            got = True
            yield item
        if not got:
            raise UsageError("bench data: a pipeline produced no batch")
        epoch += 1


def stream(bench, values: dict, device=None):
    """An endless stream of the configured backend's train batches, with `values` set."""
    from p2p.config import with_values
    from p2p.data import build_loader

    return endless(build_loader(with_values(bench.cfg, values), "train", 0, 1, device).epoch)


def counted_rows(bench, spec, counts: list[int], what: str) -> int:
    """A model-ready row at each of `counts` data.workers (`what` they are), then the loader
    alone at the most (where the time goes); returns the most."""
    b, n = bench, spec.name
    for c in counts:
        b.timed(f"{n} {what}={c}", n, c, stream(b, {"data.backend": n, "data.workers": c}), True, b.threads_for(c))
    most = max(counts)
    if not b.quick:
        b.timed(f"{n} {what}={most}, loader only (uint8 {b.load}px)", n, most,
                stream(b, {"data.backend": n, "data.workers": most}), False, 1)
    return most


def wds_rows(bench, spec) -> None:
    """wds at each worker count, the loader alone at the most, then the most as threads."""
    b, n = bench, spec.name
    w = counted_rows(b, spec, b.worker_counts, "workers")
    if w > 0:  # data.worker_kind=thread: the same decode in threads of this process
        threads = {"data.backend": n, "data.workers": w, "data.worker_kind": "thread"}
        b.timed(f"{n} threads={w}", n, w, stream(b, threads), True, b.threads_for(w), worker_kind="thread")
        if not b.quick:
            b.timed(f"{n} threads={w}, loader only (uint8 {b.load}px)", n, w, stream(b, threads), False, 1,
                    worker_kind="thread")


def dali_rows(bench, spec) -> None:
    """dali on the CPU at each thread count and the loader alone; on a GPU, DALI's mixed decoder."""
    t = counted_rows(bench, spec, bench.dali_threads, "cpu threads")
    if torch.cuda.is_available():
        dali_mixed_rows(bench, spec, t)


def dali_mixed_rows(bench, spec, threads: int) -> None:
    """DALI's mixed decoder on the GPU: nvJPEG decode and the crop in DALI, the device step on
    the GPU (batches never leave it); model-ready, then the loader alone (the decode rate at the
    stored size)."""
    b, gpu = bench, torch.device("cuda", torch.cuda.current_device())
    values = {"data.backend": spec.name, "data.workers": threads}
    b.timed(f"dali mixed (nvJPEG) threads={threads}", "dali_mixed", threads, stream(b, values, gpu), True,
            b.default_threads, device=gpu)
    b.timed(f"dali mixed (nvJPEG) threads={threads}, loader only (uint8 {b.load}px on {gpu})", "dali_mixed",
            threads, stream(b, values, gpu), False, b.default_threads, device=gpu)


def nvjpeg_rows(bench, spec) -> None:
    """The nvjpeg rows on cuda:0 (model-ready, then the loader alone), or one row that says why
    they cannot run here. Its workers only read files: two are plenty (one with --quick)."""
    from p2p.config import with_values
    from p2p.data import loader_args
    from p2p.data.nvjpeg import NvjpegDecoder, NvjpegLoader

    b, n = bench, spec.name
    name = f"{n} (GPU decode)"
    try:
        decoder = NvjpegDecoder(torch.device("cuda", 0) if torch.cuda.is_available() else None)
    except UsageError as e:  # no CUDA, or a torchvision without nvJPEG
        b.rows.append({"name": name, "backend": n, "stage": "model-ready", "skipped": str(e),
                       "img_per_s": None})
        b.progress(f"  {name}: skipped ({e})")
        return
    w = 1 if b.quick else min(2, b.cores)
    args, dev = loader_args(with_values(b.cfg, {"data.workers": w})), decoder.device

    def batches():  # one decoder (its probe done once) for both rows
        return endless(NvjpegLoader(b.source, "train", 0, 1, args, dev, decoder).epoch)

    b.timed(f"{n} workers={w} (decode, crop and Lab on {dev})", n, w, batches(), True, b.threads_for(w),
            device=dev)
    if not b.quick:
        b.timed(f"{n} workers={w}, loader only (uint8 {b.load}px on {dev})", n, w, batches(), False, 1,
                device=dev)


def folder_rows(bench, spec) -> None:
    """folder on the original images, when the manifest's (hash-split) source folder still exists."""
    b, n = bench, spec.name
    src = b.manifest.get("source")
    if not (src and Path(src).is_dir() and b.manifest.get("options", {}).get("split_mode") == "hash"):
        b.progress(f"  {n} skipped: the manifest's source folder is gone (or has train/ val/ folders)")
        return
    w = min(2, b.cores) if not b.quick else 1
    b.timed(f"{n} workers={w} (originals)", n, w,
            stream(b, {"data.backend": n, "data.source": src, "data.workers": w}), True, b.threads_for(w))
