"""`p2p bench SUITE`: benchmarks with the seed-style baseline measured in the same run.

This module parses each suite's flags, prints its progress lines, tables and summary, writes
`--json` and sets the exit code; the measuring is p2p.bench, which never imports this. Exit
codes: 0 done, 1 `p2p bench all` had a section fail (the others still ran and are in its
results) or `p2p bench gpu-report` found a check that did not pass, 2 a usage error.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from p2p.cli import bench_memory as _memory
from p2p.cli.bench_output import counts, names, print_table, say, write_json_to
from p2p.errors import UsageError

MODEL_HELP = ("full: U-Net-256 (ngf 64, num_downs 8) + 70x70 PatchGAN (ndf 64); small: the demo's sizes "
              "(default: full on GPU, small on CPU)")


def add_model_arguments(p: argparse.ArgumentParser, model_help: str = MODEL_HELP) -> None:
    p.add_argument("--model", choices=("full", "small"), default=None, help=model_help)
    p.add_argument("--ngf", type=int, default=None, help="generator width, replacing the model's")
    p.add_argument("--ndf", type=int, default=None, help="discriminator width, replacing the model's")
    p.add_argument("--num-downs", type=int, default=None,
                   help="U-Net depth, replacing the model's (--image-size must be divisible by 2**N)")


# ---------------------------------------------------------------------------------------------
# data


def add_data_arguments(p: argparse.ArgumentParser) -> None:
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


def run_data_suite(args) -> int:
    from p2p.bench.data import DataOptions, run_data

    options = DataOptions(batch_size=args.batch_size, images=args.images, backends=names(args.backends),
                          workers=counts(args.workers, "--workers") if args.workers else None,
                          dali_threads=counts(args.dali_threads, "--dali-threads"), main_threads=args.main_threads,
                          image_size=args.image_size, load_size=args.load_size, repeats=args.repeats,
                          quick=args.quick)
    # rewritten after every row: a run cut at a time limit keeps the rows it measured
    payload = run_data(args.source, options, say, partial=(lambda part: write_json_to(args.json, part)) if args.json else None)
    write_json_to(args.json, payload)
    c, rows = payload["config"], payload["results"]
    columns = ("name", "stage", "workers", "main_threads", "img_per_s", "ratio")
    if any(r.get("gpu_mem_peak_mb") is not None for r in rows):
        columns += ("gpu_mem_peak_mb", "gpu_mem_used_mb")
    print_table(f"input pipelines to model-ready L/ab ({c['image_size']}px, batch {c['batch_size']}, "
                f"{c['cores']} cores)", rows, columns)
    for r in rows:
        if r.get("skipped"):
            print(f"  skipped {r['name']}: {r['skipped']}")
    build = c.get("kernel_compile_s")
    print(f"device step: {c['device_step']}" + (f" (built or loaded in {build:.2f} s)" if build is not None else "")
          + f"; JPEG decode: {c['decoder']}")
    pipelines = [r for r in rows if r["backend"] not in ("baseline", "device-step") and r["stage"] == "model-ready"
                 and r.get("img_per_s")]
    best = max(pipelines, key=lambda r: r["img_per_s"], default=None)
    if best is not None:
        print(f"best: {best['name']} at {best['img_per_s']:.0f} img/s = {best['ratio']:.2f}x the baseline")
    return 0


# ---------------------------------------------------------------------------------------------
# decode


def add_decode_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--source", required=True, help="shard folder made by 'p2p shard' (its JPEGs are decoded)")
    p.add_argument("--images", type=int, default=200, help="JPEGs per round (default 200)")
    p.add_argument("--repeats", type=int, default=5, help="rounds, median reported (default 5)")
    p.add_argument("--json", metavar="PATH", help="also write {environment, config, results} to PATH")


def run_decode_suite(args) -> int:
    from p2p.bench.decode import run_decode

    payload = run_decode(args.source, images=args.images, repeats=args.repeats)
    c = payload["config"]
    print_table(f"JPEG decode, one core, {c['images']} shard JPEGs of {c['mean_pixels'] / 1e3:.0f} kpixels",
                payload["results"], ("name", "img_per_s", "ratio", "max_abs_diff", "keeps_pixels", "used_by_loaders"))
    write_json_to(args.json, payload)
    return 0


# ---------------------------------------------------------------------------------------------
# lab


def add_lab_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--device", default="cpu", help="torch device for the p2p rows (default: cpu)")
    p.add_argument("--size", type=int, default=256, help="image side in pixels (default: 256)")
    p.add_argument("--images", type=int, default=16, help="images per batch (default: 16)")
    p.add_argument("--repeats", type=int, default=3, help="timed repeats, median reported (default: 3)")
    p.add_argument("--quick", action="store_true", help="no minimum time per repeat: a smoke test")
    p.add_argument("--json", metavar="PATH", help="also write {environment, results} to PATH")


def run_lab_suite(args) -> int:
    import torch

    from p2p.bench.common import environment
    from p2p.bench.lab import run_lab

    rows = run_lab(device=args.device, size=args.size, images=args.images, repeats=args.repeats, quick=args.quick)
    title = f"RGB -> Lab, {args.images} x {args.size}x{args.size} photos, {torch.get_num_threads()} threads"
    print_table(title, rows, columns=("name", "device", "img_per_s", "ratio", "max_abs_diff_vs_skimage"))
    for r in rows:
        if r.get("skipped"):
            print(f"  skipped {r['name']}: {r['skipped']}")
        elif "compile_s" in r:
            print(f"  {r['name']}: {r.get('implementation')}, compiled once in {r['compile_s']:.2f} s"
                  + (f", loaded from the cache in {r['load_s'] * 1000:.1f} ms" if "load_s" in r else ""))
    if args.json:
        write_json_to(args.json, {"environment": environment(), "results": rows})
    return 0


# ---------------------------------------------------------------------------------------------
# step


def add_step_arguments(p: argparse.ArgumentParser) -> None:
    from p2p.bench.step import MODES

    p.add_argument("--device", default="auto", help="auto (cuda when present), cpu or cuda")
    add_model_arguments(p)
    p.add_argument("--batch-size", type=int, default=None, help="images per step (default 64 on GPU, 8 on CPU)")
    p.add_argument("--image-size", type=int, default=None,
                   help="image side in pixels (default 256; 128 with --quick on CPU)")
    p.add_argument("--steps", type=int, default=None, help="steps per timed round (default 20 on GPU, 3 on CPU)")
    p.add_argument("--warmup", type=int, default=None, help="untimed steps per mode first (default 5 GPU, 1 CPU)")
    p.add_argument("--repeats", type=int, default=None, help="timed rounds, median reported (default 5 GPU, 3 CPU)")
    p.add_argument("--modes", default=None,
                   help=f"comma-separated subset of: {', '.join(MODES)} (baseline is always measured)")
    p.add_argument("--cpu-compile", action="store_true", help="also measure torch.compile on CPU (slow to build)")
    p.add_argument("--quick", action="store_true", help="fewer and shorter rounds (and 128px on CPU): a smoke run")
    p.add_argument("--json", metavar="PATH", help="also write {environment, config, results} to PATH")


def step_summary(payload: dict) -> str:
    rows = [r for r in payload["results"] if r.get("img_per_s") and "model_changes" not in r]  # same model only
    best = max(rows, key=lambda r: r["img_per_s"])
    c = payload["config"]
    line = (f"best: {best['name']} {best['img_per_s']:.1f} img/s = {best['ratio']:.2f}x the baseline "
            f"({c['model']} model, {c['image_size']}px, batch {c['batch_size']})")
    if best.get("mfu") is not None:
        line += f", MFU {100 * best['mfu']:.1f}%"
    return line


def run_step_suite(args) -> int:
    import torch

    from p2p.bench.step import StepOptions, plan_step, run_step

    options = StepOptions(device=args.device, model=args.model, ngf=args.ngf, ndf=args.ndf, num_downs=args.num_downs,
                          batch_size=args.batch_size, image_size=args.image_size, steps=args.steps,
                          warmup=args.warmup, repeats=args.repeats, modes=names(args.modes) if args.modes else None,
                          quick=args.quick, cpu_compile=args.cpu_compile)
    p = plan_step(options)
    say(f"bench step: {p.sizes.name} model, {p.image_size}px, batch {p.batch_size} on {p.device}, "
        f"{torch.get_num_threads()} threads, {p.repeats} rounds of {p.steps} steps")
    if p.device.type != "cuda":
        say("no GPU on this machine: GPU-only rows are recorded as skipped; no MFU")
    # rewritten after every mode built and every round: a run cut at a time limit keeps its figures
    payload = run_step(options, say, partial=(lambda part: write_json_to(args.json, part)) if args.json else None)
    shown = [{**r, "skipped": "yes" if r.get("skipped") else "",
              "gflop_per_img": r["flops_per_image"] / 1e9 if r.get("flops_per_image") else None}
             for r in payload["results"]]
    print_table(f"training step, {p.sizes.name} model, {p.image_size}px, batch {p.batch_size}, {p.device}",
                shown, columns=("name", "precision", "adam", "img_per_s", "step_ms", "ratio", "vs_p2p_default",
                                "gflop_per_img", "mfu", "skipped"))
    for r in payload["results"]:
        if r.get("skipped"):
            print(f"  skipped {r['name']}: {r['skipped']}")
    for note in payload["notes"]:
        print(f"note: {note}")
    print(step_summary(payload))
    write_json_to(args.json, payload)
    return 0


# ---------------------------------------------------------------------------------------------
# scaling


def add_scaling_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--procs", default="1,2", help="process counts, comma-separated (default 1,2)")
    p.add_argument("--device", default="auto", help="auto (cuda when present), cpu or cuda")
    add_model_arguments(p, "model sizes as in `p2p bench step` (default: full on GPU, small on CPU)")
    p.add_argument("--batch-size", type=int, default=None, help="images per process per step "
                   "(default 64 on GPU, 4 on CPU)")
    p.add_argument("--image-size", type=int, default=None, help="image side (default 256 GPU, 64 CPU)")
    p.add_argument("--steps", type=int, default=None, help="steps per timed round (default 20 GPU, 4 CPU)")
    p.add_argument("--warmup", type=int, default=None, help="untimed steps first (default 5 GPU, 2 CPU)")
    p.add_argument("--repeats", type=int, default=3, help="timed rounds, median reported (default 3)")
    p.add_argument("--threads", type=int, default=0,
                   help="torch/OpenMP threads per process (default: cores / the largest process count)")
    p.add_argument("--precision", choices=("fp32", "bf16", "fp16"), default=None,
                   help="autocast dtype (default bf16 on GPU, fp32 on CPU)")
    p.add_argument("--quick", action="store_true", help="short rounds: a smoke run")
    p.add_argument("--json", metavar="PATH", help="also write {environment, config, results} to PATH")


def run_scaling_suite(args) -> int:
    from p2p.bench.scaling import ScalingOptions, plan_scaling, run_scaling

    options = ScalingOptions(procs=counts(args.procs, "--procs"), device=args.device, model=args.model, ngf=args.ngf,
                             ndf=args.ndf, num_downs=args.num_downs, batch_size=args.batch_size,
                             image_size=args.image_size, steps=args.steps, warmup=args.warmup, repeats=args.repeats,
                             threads=args.threads, precision=args.precision, quick=args.quick)
    p = plan_scaling(options)
    say(f"bench scaling: {list(p.procs)} processes on {p.device}, {p.sizes.name} model, {p.image_size}px, "
        f"batch {p.batch_size} per process")
    payload = run_scaling(options, say)
    c = payload["config"]
    print_table(f"weak scaling ({c['backend']}, {c['threads_per_process']} thread(s) per process)",
                payload["results"],
                columns=("name", "global_batch", "img_per_s", "img_per_s_per_process", "efficiency", "ratio"))
    write_json_to(args.json, payload)
    return 0


# ---------------------------------------------------------------------------------------------
# profile


def add_profile_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("args", nargs="*", metavar="CONFIG.yaml | section.key=value",
                   help="the run to profile, as for `p2p train` (default: the demo on the embedded photos)")
    p.add_argument("--source", default=None, help="data.source: an image or shard folder (default: the config's)")
    p.add_argument("--steps", type=int, default=None, help="profiled steps (default 10; 4 with --quick)")
    p.add_argument("--warmup", type=int, default=None, help="unprofiled steps first (default 3; 2 with --quick)")
    p.add_argument("--top", type=int, default=15, help="operators in the table (default 15)")
    p.add_argument("--out", default="bench-out/profile", help="folder for trace.json and profile.json")
    p.add_argument("--json", metavar="PATH", help="the summary JSON (default: OUT/profile.json)")
    p.add_argument("--quick", action="store_true", help="fewer steps: a smoke run")


def run_profile_suite(args) -> int:
    from p2p.bench.profile import run_profile
    from p2p.config import split_args

    path, overrides = split_args(list(args.args))
    if args.source:
        overrides.append(f"data.source={args.source}")
    payload = run_profile(overrides=overrides, config_path=path, steps=args.steps, warmup=args.warmup,
                          quick=args.quick, out_dir=args.out, top=args.top, progress=say)
    s = payload["summary"]
    kind = "cuda" if s["top_ops_cuda"] else "cpu"
    print_table(f"top operators by self {kind.upper()} time ({s['steps']} steps)",
                s[f"top_ops_{kind}"], columns=("name", "calls", f"self_{kind}_ms", f"self_{kind}_share"))
    print(f"{s['img_per_s']:.1f} img/s with the profiler on; data wait {100 * s['data_wait_fraction']:.0f}% of "
          f"{s['wall_s']:.2f} s; trace: {s['trace']}")
    print(f"device step ({s['device_step']}): {s['device_step_ms']:.2f} ms a step, "
          f"{100 * s['device_step_share']:.1f}% of the step time")
    for r in s["per_rank"]:
        print(f"rank {r['rank']} on {r['host']}: step {1000 * r['step_s']:.1f} ms, data wait "
              f"{1000 * r['data_wait_s']:.1f} ms, CPU wait {1000 * r['cpu_wait_s']:.1f} ms")
    print(s["bottleneck"])
    write_json_to(args.json or Path(args.out) / "profile.json", payload)
    return 0


# ---------------------------------------------------------------------------------------------
# all, report


def add_all_arguments(p: argparse.ArgumentParser) -> None:
    from p2p.bench.all_bench import SECTIONS

    p.add_argument("--out", default="bench-out", help="output folder (default bench-out)")
    p.add_argument("--quick", action="store_true",
                   help="short settings for every section: a few minutes on a 2-core CPU")
    p.add_argument("--source", default=None,
                   help="shard folder for the data section (default: built from the embedded photos in OUT/work)")
    p.add_argument("--device", default="auto", help="auto (cuda when present), cpu or cuda")
    p.add_argument("--procs", default="1,2", help="process counts for the scaling section (default 1,2)")
    p.add_argument("--sections", default=",".join(SECTIONS),
                   help=f"comma-separated subset of {', '.join(SECTIONS)} (default: all)")
    p.add_argument("--image-size", type=int, default=None, help="image side for every section (default: each "
                   "section's own); the self-made shards are stored at its pix2pix load size (286 for 256)")
    p.add_argument("--batch-size", type=int, default=None,
                   help="batch for every section (lab: images per batch; default: each section's own)")
    p.add_argument("--ngf", type=int, default=None, help="generator width for step, scaling and profile")
    p.add_argument("--ndf", type=int, default=None, help="discriminator width for step, scaling and profile")
    p.add_argument("--num-downs", type=int, default=None, help="U-Net depth for step, scaling and profile")
    p.add_argument("--photos", type=int, default=64,
                   help="COCO-like JPEGs cut from the embedded photos for the data section's shards (default 64)")
    p.add_argument("--photo-scale", type=float, default=1.0,
                   help="their size relative to COCO's ~640x480 (default 1.0)")


def run_all_suite(args) -> int:
    from p2p.bench.all_bench import SECTIONS, AllOptions, run_all

    options = AllOptions(out=args.out, quick=args.quick, source=args.source, device=args.device,
                         procs=counts(args.procs, "--procs"), sections=names(args.sections), image_size=args.image_size,
                         batch_size=args.batch_size, ngf=args.ngf, ndf=args.ndf, num_downs=args.num_downs,
                         photos=args.photos, photo_scale=args.photo_scale)

    def failed(section: str, text: str) -> None:
        print(text, end="", file=sys.stderr, flush=True)

    results = run_all(options, say, failed)
    out = Path(args.out)
    print(f"wrote {out / 'results.json'}, {out / 'report.md'} and plots in {results['seconds']:.0f} s")
    failures = []
    for name in SECTIONS:
        sec = results.get(name) or {}
        if sec.get("skipped"):
            print(f"  {name}: skipped ({sec['skipped']})")
        elif sec.get("error"):
            print(f"  {name}: FAILED ({sec['error'].splitlines()[0]})")
            failures.append(name)
    if failures:
        print(f"p2p bench all: {len(failures)} section(s) failed: {', '.join(failures)}")
        return 1
    return 0


def add_report_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("results", metavar="DIR/results.json", help="a `p2p bench all` results file; report.md and "
                   "the plots are written next to it")


def run_report(args) -> int:
    import json

    from p2p.bench.report import write_report

    src = Path(args.results)
    try:
        results = json.loads(src.read_text())
    except (OSError, ValueError) as e:
        raise UsageError(f"{src}: not a readable results.json ({e})") from None
    print(write_report(results, src.parent))
    return 0


def add_scale_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--sizes", default=None, help="image counts N, comma-separated (default 1k,10k,100k; "
                   "with --simulate 1M,10M,100M)")
    p.add_argument("--work", default=None, help="images, shards and runs (reused: images are made once)")
    p.add_argument("--out", default=None, help="scale.json, scale.md and one PNG per figure")
    p.add_argument("--workers", type=int, default=2, help="p2p shard workers and loader workers (default 2)")
    p.add_argument("--batch-size", type=int, default=None, help="train.batch_size of the timed runs (default 8; "
                   "with --simulate 16)")
    p.add_argument("--timeout", type=float, default=600.0, help="seconds a training start may take (default 600)")
    p.add_argument("--simulate", action="store_true", help="no images: synthetic manifests and index files, one "
                   "rank's plan, index parse, start-up and world-size change at N samples and W ranks")
    p.add_argument("--worlds", default="8,64,1024", help="--simulate: world sizes W (default 8,64,1024)")
    p.add_argument("--changes", default="1024:512,64:96", help="--simulate: world-size changes OLD:NEW mid-epoch")
    p.add_argument("--shard-size", type=int, default=1000, help="--simulate: samples per shard (default 1000)")


def run_plan_scale_suite(args) -> int:
    from p2p.bench.plan_scale import options_from_text, run_plan_scale

    options = options_from_text(args.sizes, args.worlds, args.changes, args.shard_size, args.batch_size, args.work,
                                args.timeout)
    say(f"bench scale --simulate: N = {', '.join(f'{n:,}' for n in options.sizes)} samples, W = "
        f"{', '.join(map(str, options.worlds))}, in {options.work}")
    payload = run_plan_scale(options, args.out or "bench-plan-scale", say)
    missed = [t["target"] for t in payload["targets"] if not t["met"]]
    print("\n".join(payload["report"]))
    print(f"wrote plan-scale.json, plan-scale.md and plots in {payload['seconds']:.0f} s; targets missed: "
          f"{'; '.join(missed) if missed else 'none'}")
    return 0


def run_scale_suite(args) -> int:
    from p2p.bench.scale import FIGURES, ScaleOptions, run_scale

    if args.simulate:
        return run_plan_scale_suite(args)
    args.sizes, args.work = args.sizes or "1000,10000,100000", args.work or "bench-scale-work"
    args.out, args.batch_size = args.out or "bench-scale", args.batch_size or 8
    options = ScaleOptions(sizes=counts(args.sizes, "--sizes"), work=args.work, workers=args.workers,
                           batch_size=args.batch_size, timeout_s=args.timeout)
    say(f"bench scale: N = {', '.join(f'{n:,}' for n in options.sizes)} COCO-shaped images in {options.work}")
    payload = run_scale(options, args.out, say)
    rows = [{"name": what, **{f"N={r['n']}": r.get(key) for r in payload["results"]}}
            for key, (what, _) in FIGURES.items()]
    print_table("how p2p grows with the dataset", rows, ("name", *(f"N={r['n']}" for r in payload["results"])))
    bad = payload["super_linear"]
    print(f"wrote {Path(args.out) / 'scale.json'}, scale.md and plots in {payload['seconds']:.0f} s; super-linear: "
          f"{', '.join(bad) if bad else 'none'}")
    return 0


def add_gpu_report_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("folder", metavar="OUT", help="the output folder of benchmarks/gpu-check.sh (its parts.tsv); "
                   "gpu-check.json and summary.md are written into it")
    p.add_argument("--work", metavar="WORK", default=None, help="the check's work folder (the parts' files); "
                   "results.tar.gz is then written into OUT too (default: OUT holds the parts' files, e.g. "
                   "results.tar.gz unpacked there)")
    p.add_argument("--quiet", action="store_true", help="print one line, not the summary")


def run_gpu_report(args) -> int:
    from p2p.bench.gpu_check import write_report

    out = Path(args.folder)
    work = Path(args.work) if args.work else out
    for folder in (out, work):
        if not folder.is_dir():
            raise UsageError(f"{folder}: no such folder (give the OUT and WORK folders of benchmarks/gpu-check.sh)")
    result = write_report(work, out)
    if not args.quiet:
        print((out / "summary.md").read_text(), end="")
    print(f"wrote {out / 'gpu-check.json'} and {out / 'summary.md'}: "
          f"{'passed' if result['passed'] else 'not passed'}"
          + ("" if result["complete"] else f", did not finish: {', '.join(result['unfinished'])}"))
    return 0 if result["passed"] and result["complete"] else 1


SUITES = {
    "data": ("input pipelines (wds, dali, nvjpeg, folder) vs the per-image PIL + skimage baseline",
             add_data_arguments, run_data_suite),
    "decode": ("JPEG decoders on the shards, one core each: img/s and pixel differences", add_decode_arguments,
               run_decode_suite),
    "lab": ("RGB->Lab: p2p batched vs skimage per image", add_lab_arguments, run_lab_suite),
    "step": ("training step img/s: baseline vs each optimisation (and MFU on GPU)", add_step_arguments,
             run_step_suite),
    "scaling": ("weak scaling over processes (gloo on CPU, NCCL on GPUs)", add_scaling_arguments, run_scaling_suite),
    "profile": ("torch.profiler trace and top operators of a real run", add_profile_arguments, run_profile_suite),
    "memory": (_memory.HELP, _memory.add_memory_arguments, _memory.run_memory_suite),
    "scale": ("growth with the dataset: N COCO-shaped images sharded, planned, trained and resumed",
              add_scale_arguments, run_scale_suite),
    "all": ("everything above into one folder: results.json, report.md, plots", add_all_arguments, run_all_suite),
    "report": ("re-render report.md and the plots of a `p2p bench all` results.json", add_report_arguments,
               run_report),
    "gpu-report": ("summarise a benchmarks/gpu-check.sh folder into gpu-check.json and summary.md (exit 1 when "
                   "a check did not pass)", add_gpu_report_arguments, run_gpu_report),
}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="suite", metavar="SUITE", required=True)
    for name, (text, add, run_suite) in SUITES.items():
        p = sub.add_parser(name, help=text, description=text)
        add(p)
        p.set_defaults(run_suite=run_suite)


def run(args: argparse.Namespace) -> int:
    return int(args.run_suite(args) or 0)
