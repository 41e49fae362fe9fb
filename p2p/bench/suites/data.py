"""`p2p bench data`: input pipelines to model-ready L/ab against the seed-style baseline."""

from __future__ import annotations

import argparse

from p2p.bench.suite_io import SuiteOutput, counts, names, skipped_lines, write_json_to


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--source", required=True,
                   help="shard folder made by 'p2p shard' (its manifest names the originals)")
    p.add_argument("--json", default=None, help="write results here (JSON)")
    p.add_argument("--batch-size", type=int, default=16, help="images per batch (default 16, as the baseline)")
    p.add_argument("--images", type=int, default=512, help="images per timed round (default 512)")
    p.add_argument("--backends", default="wds,dali,nvjpeg,folder",
                   help="comma-separated p2p backends to measure besides the baseline (default "
                   "wds,dali,nvjpeg,folder; nvjpeg runs on cuda:0 and is recorded as skipped without CUDA)")
    p.add_argument("--workers", default=None,
                   help="wds DataLoader worker counts, comma-separated (default 0,1,2,<cores>)")
    p.add_argument("--dali-threads", default="1,2", help="DALI CPU thread counts (default 1,2)")
    p.add_argument("--main-threads", type=int, default=0,
                   help="torch threads of this process, which runs the Lab step (default: the cores "
                   "left over by the loader workers, at least 1)")
    p.add_argument("--image-size", type=int, default=256, help="model input size (default 256)")
    p.add_argument("--load-size", type=int, default=0, help="loader size (default: the shards' stored size)")
    p.add_argument("--repeats", type=int, default=3, help="timed rounds per row (default 3)")
    p.add_argument("--quick", action="store_true", help="a smoke run: 2 batches per round, one round, "
                   "worker counts 0 and 1, DALI 1 thread")


def run(args, out: SuiteOutput) -> int:
    from p2p.bench.data import DataOptions, run_data

    options = DataOptions(batch_size=args.batch_size, images=args.images, backends=names(args.backends),
                          workers=counts(args.workers, "--workers") if args.workers else None,
                          dali_threads=counts(args.dali_threads, "--dali-threads"), main_threads=args.main_threads,
                          image_size=args.image_size, load_size=args.load_size, repeats=args.repeats,
                          quick=args.quick)
    # rewritten after every row: a run cut at a time limit keeps the rows it measured
    payload = run_data(args.source, options, out.say,
                       partial=(lambda part: write_json_to(args.json, part)) if args.json else None)
    write_json_to(args.json, payload)
    c, rows = payload["config"], payload["results"]
    columns = ("name", "stage", "workers", "main_threads", "img_per_s", "ratio")
    if any(r.get("gpu_mem_peak_mb") is not None for r in rows):
        columns += ("gpu_mem_peak_mb", "gpu_mem_used_mb")
    out.table(f"input pipelines to model-ready L/ab ({c['image_size']}px, batch {c['batch_size']}, "
              f"{c['cores']} cores)", rows, columns)
    skipped_lines(out, rows)
    build = c.get("kernel_compile_s")
    out.say(f"device step: {c['device_step']}" + (f" (built or loaded in {build:.2f} s)" if build is not None else "")
            + f"; JPEG decode: {c['decoder']}")
    pipelines = [r for r in rows if r["backend"] not in ("baseline", "device-step") and r["stage"] == "model-ready"
                 and r.get("img_per_s")]
    best = max(pipelines, key=lambda r: r["img_per_s"], default=None)
    if best is not None:
        out.say(f"best: {best['name']} at {best['img_per_s']:.0f} img/s = {best['ratio']:.2f}x the baseline")
    return 0
