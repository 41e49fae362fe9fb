"""`p2p bench step`: training-step img/s, the baseline against each optimisation (and MFU on GPU)."""

from __future__ import annotations

import argparse

from p2p.bench.suite_io import SuiteOutput, names, skipped_lines, write_json_to

MODEL_HELP = ("full: U-Net-256 (ngf 64, num_downs 8) + 70x70 PatchGAN (ndf 64); small: the demo's sizes "
              "(default: full on GPU, small on CPU)")


def add_model_arguments(p: argparse.ArgumentParser, model_help: str = MODEL_HELP) -> None:
    """The model-size flags of the suites that train (step, ranks)."""
    p.add_argument("--model", choices=("full", "small"), default=None, help=model_help)
    p.add_argument("--ngf", type=int, default=None, help="generator width, replacing the model's")
    p.add_argument("--ndf", type=int, default=None, help="discriminator width, replacing the model's")
    p.add_argument("--num-downs", type=int, default=None,
                   help="U-Net depth, replacing the model's (--image-size must be divisible by 2**N)")


def add_arguments(p: argparse.ArgumentParser) -> None:
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


def summary(payload: dict) -> str:
    """The best same-model row against the baseline, in one line."""
    rows = [r for r in payload["results"] if r.get("img_per_s") and "model_changes" not in r]
    best = max(rows, key=lambda r: r["img_per_s"])
    c = payload["config"]
    line = (f"best: {best['name']} {best['img_per_s']:.1f} img/s = {best['ratio']:.2f}x the baseline "
            f"({c['model']} model, {c['image_size']}px, batch {c['batch_size']})")
    if best.get("mfu") is not None:
        line += f", MFU {100 * best['mfu']:.1f}%"
    return line


def run(args, out: SuiteOutput) -> int:
    import torch

    from p2p.bench.step import StepOptions, plan_step, run_step

    options = StepOptions(device=args.device, model=args.model, ngf=args.ngf, ndf=args.ndf, num_downs=args.num_downs,
                          batch_size=args.batch_size, image_size=args.image_size, steps=args.steps,
                          warmup=args.warmup, repeats=args.repeats, modes=names(args.modes) if args.modes else None,
                          quick=args.quick, cpu_compile=args.cpu_compile)
    p = plan_step(options)
    out.say(f"bench step: {p.sizes.name} model, {p.image_size}px, batch {p.batch_size} on {p.device}, "
            f"{torch.get_num_threads()} threads, {p.repeats} rounds of {p.steps} steps")
    if p.device.type != "cuda":
        out.say("no GPU on this machine: GPU-only rows are recorded as skipped; no MFU")
    # rewritten after every mode built and every round: a run cut at a time limit keeps its figures
    payload = run_step(options, out.say, partial=(lambda part: write_json_to(args.json, part)) if args.json else None)
    shown = [{**r, "skipped": "yes" if r.get("skipped") else "",
              "gflop_per_img": r["flops_per_image"] / 1e9 if r.get("flops_per_image") else None}
             for r in payload["results"]]
    out.table(f"training step, {p.sizes.name} model, {p.image_size}px, batch {p.batch_size}, {p.device}",
              shown, ("name", "precision", "adam", "img_per_s", "step_ms", "ratio", "vs_p2p_default",
                      "gflop_per_img", "mfu", "skipped"))
    skipped_lines(out, payload["results"])
    for note in payload["notes"]:
        out.say(f"note: {note}")
    out.say(summary(payload))
    write_json_to(args.json, payload)
    return 0
