"""`p2p bench all [--quick] [--out DIR]`: every benchmark into one folder.

DIR/results.json holds `environment` (hardware, versions, the options of this run, date) and one
section per benchmark, `data`, `lab`, `step`, `scaling`, `profile`, each with the command that
reproduces it, its config and its rows (every row with `baseline` and `ratio`), or `skipped` /
`error` with the reason. DIR/report.md renders the tables and DIR/*.png the plots
(p2p.bench.report); DIR/profile/trace.json is the Chrome trace of the profiled run.

The data section needs shards: without --source, ~64 COCO-like JPEGs (mixed sizes around
640x480) are cut from the photographs inside scikit-image into DIR/work/photos and packed with
`p2p shard` into DIR/work/shards, so the whole suite runs from a fresh clone with no download.
Sections run one after another in this process (scaling starts its own processes); a section
that fails is recorded and the others still run (exit code 1 then).
"""

from __future__ import annotations

import argparse
import importlib
import os
import random
import shlex
import time
import traceback
from pathlib import Path

from p2p.bench.common import environment, write_json
from p2p.errors import UsageError

SECTIONS = ("data", "lab", "step", "scaling", "profile")

# COCO-like (w, h): landscape, portrait and square
COCO_SIZES = ((640, 480), (640, 427), (480, 640), (427, 640), (640, 512), (500, 375), (612, 612), (640, 360))


def _tiny(args) -> bool:
    return getattr(args, "tiny", False) or os.environ.get("P2P_BENCH_TINY") == "1"


def _load() -> float | None:
    try:
        return os.getloadavg()[0]
    except OSError:
        return None


def _cmd(*parts) -> str:
    return "p2p bench " + " ".join(shlex.quote(str(p)) for p in parts if p is not None and p != "")


# ---------------------------------------------------------------------------------------------
# data: shards from the embedded photos, then p2p.bench.data


def make_photo_folder(folder: Path, count: int = 64, scale: float = 1.0, seed: int = 0) -> list[Path]:
    """`count` COCO-named JPEGs: random crops of the embedded photos (p2p.data.folder), mirrored at
    random and resized to COCO's usual sizes times `scale`. Deterministic for a seed."""
    from PIL import Image

    from p2p.data.folder import EMBEDDED_TRAIN, EMBEDDED_VAL, embedded_photo

    folder.mkdir(parents=True, exist_ok=True)
    names = EMBEDDED_TRAIN + EMBEDDED_VAL
    rng = random.Random(seed)
    paths = []
    for i in range(count):
        photo = embedded_photo(names[i % len(names)])
        w, h = COCO_SIZES[rng.randrange(len(COCO_SIZES))]
        w, h = max(16, round(w * scale)), max(16, round(h * scale))
        ph, pw = photo.shape[:2]
        f = min(pw / w, ph / h) * rng.uniform(0.6, 1.0)  # a crop of the target's aspect
        cw, ch = max(1, int(w * f)), max(1, int(h * f))
        left, top = rng.randint(0, pw - cw), rng.randint(0, ph - ch)
        img = Image.fromarray(photo[top:top + ch, left:left + cw]).resize((w, h), Image.BICUBIC)
        if rng.random() < 0.5:
            img = img.transpose(Image.FLIP_LEFT_RIGHT)
        path = folder / f"{100000 + i:012d}.jpg"
        img.save(path, quality=90)
        paths.append(path)
    return paths


def build_shards(work: Path, tiny: bool) -> Path:
    """DIR/work/shards from DIR/work/photos (reused when already there)."""
    from p2p.data.shard import make_shards, read_manifest

    photos, shards = work / "photos", work / "shards"
    count, scale, size = (16, 0.25, 48) if tiny else (64, 1.0, 286)
    if not (photos.is_dir() and len(list(photos.glob("*.jpg"))) == count):
        make_photo_folder(photos, count, scale)
    try:
        m = read_manifest(shards)
        if m.get("complete", True) and (m.get("options") or {}).get("size") == size:
            return shards
    except (FileNotFoundError, ValueError):
        pass
    make_shards(photos, shards, size=size, val_fraction=0.0, force=True, workers=min(2, os.cpu_count() or 1))
    return shards


def data_section(args, out: Path) -> dict:
    try:
        mod = importlib.import_module("p2p.bench.data")
    except ModuleNotFoundError as e:
        if e.name != "p2p.bench.data":
            raise
        return {"skipped": "p2p.bench.data is not in this build"}
    if not (callable(getattr(mod, "run", None)) and callable(getattr(mod, "add_arguments", None))):
        return {"skipped": "p2p.bench.data has no run(args) / add_arguments(parser) entry yet"}
    tiny = _tiny(args)
    work = out / "work"
    source = Path(args.source) if args.source else build_shards(work, tiny)
    json_path = work / "data.json"
    argv = ["--source", str(source), "--json", str(json_path)]
    if tiny:
        argv += ["--quick", "--backends", "wds", "--workers", "0", "--image-size", "32", "--batch-size", "4"]
    elif args.quick:
        argv += ["--quick"]
    parser = argparse.ArgumentParser(prog="p2p bench data")
    mod.add_arguments(parser)
    ns = parser.parse_args(argv)
    if json_path.exists():
        json_path.unlink()
    rc = mod.run(ns)
    if rc not in (0, None) or not json_path.exists():
        raise RuntimeError(f"p2p bench data exited {rc} without writing {json_path}")
    import json

    payload = json.loads(json_path.read_text())
    shown = [a for a in argv if a not in ("--json", str(json_path))]
    return {"command": _cmd("data", *shown, "--json", "data.json"), "config": payload.get("config", {}),
            "rows": payload.get("results", []), "shards": str(source),
            "shards_built": None if args.source else "embedded photos -> COCO-like JPEGs -> p2p shard"}


# ---------------------------------------------------------------------------------------------
# the other sections


def lab_section(args, out: Path) -> dict:
    from p2p.bench.lab import run_lab

    tiny = _tiny(args)
    device = "cuda" if _cuda(args) else "cpu"
    size, images, repeats = (32, 4, 1) if tiny else (256, 16, 3)
    quick = args.quick or tiny
    rows = run_lab(device=device, size=size, images=images, repeats=repeats, quick=quick)
    return {"command": _cmd("lab", "--device", device, "--size", size, "--images", images, "--repeats", repeats,
                            "--quick" if quick else None),
            "config": {"device": device, "size": size, "images": images, "repeats": repeats, "quick": quick},
            "rows": rows}


def step_section(args, out: Path) -> dict:
    from p2p.bench.step import resolve_options, run_step

    ns = argparse.Namespace(device=args.device, model=None, batch_size=None, image_size=None, steps=None,
                            warmup=None, repeats=None, modes=None, quick=args.quick, cpu_compile=False,
                            tiny=_tiny(args))
    o = resolve_options(ns)
    payload = run_step(device=str(o["device"]), model=o["model"], batch_size=o["batch_size"],
                       image_size=o["image_size"], steps=o["steps"], warmup=o["warmup"], repeats=o["repeats"],
                       quick=o["quick"], tiny=o["tiny"], progress=_progress)
    command = _cmd("step", "--device", o["device"].type, "--model" if o["model"] != "tiny" else "--tiny",
                   o["model"] if o["model"] != "tiny" else None, "--batch-size", o["batch_size"],
                   "--image-size", o["image_size"], "--steps", o["steps"], "--warmup", o["warmup"],
                   "--repeats", o["repeats"])
    return {"command": command, "config": payload["config"], "rows": payload["results"], "notes": payload["notes"]}


def scaling_section(args, out: Path) -> dict:
    from p2p.bench.scaling import resolve_options, run_scaling

    ns = argparse.Namespace(procs=args.procs, device=args.device, model=None, batch_size=None, image_size=None,
                            steps=None, warmup=None, repeats=3, threads=0, precision=None, quick=args.quick,
                            tiny=_tiny(args))
    o = resolve_options(ns)
    payload = run_scaling(**o, progress=_progress)
    c = payload["config"]
    command = _cmd("scaling", "--procs", ",".join(map(str, c["procs"])), "--device", c["device"],
                   "--model" if o["model"] != "tiny" else "--tiny", o["model"] if o["model"] != "tiny" else None,
                   "--batch-size", c["batch_per_process"], "--image-size", c["image_size"], "--steps",
                   c["steps_per_round"], "--warmup", c["warmup_steps"], "--repeats", c["rounds"], "--threads",
                   c["threads_per_process"], "--precision", c["precision"])
    return {"command": command, "config": c, "rows": payload["results"]}


def profile_section(args, out: Path) -> dict:
    from p2p.bench.profile import TINY, run_profile

    tiny = _tiny(args)
    overrides = list(TINY) if tiny else []
    if args.device != "auto":
        overrides.append(f"train.device={args.device}")
    steps, warmup = (2, 1) if tiny else (4, 2) if args.quick else (10, 3)
    payload = run_profile(overrides=overrides, steps=steps, warmup=warmup, out_dir=out / "profile", progress=_progress)
    write_json(out / "profile" / "profile.json", payload)
    command = _cmd("profile", "--tiny" if tiny else None, "--steps", steps, "--warmup", warmup, "--out",
                   "profile", *([o for o in overrides if o not in TINY]))
    return {"command": command, "config": payload["config"], "summary": payload["summary"]}


def _cuda(args) -> bool:
    import torch

    return args.device == "cuda" or (args.device == "auto" and torch.cuda.is_available())


def _progress(text: str) -> None:
    print(text, flush=True)


RUNNERS = {"data": data_section, "lab": lab_section, "step": step_section, "scaling": scaling_section,
           "profile": profile_section}


# ---------------------------------------------------------------------------------------------
# the command


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--out", default="bench-out", help="output folder (default bench-out)")
    parser.add_argument("--quick", action="store_true",
                        help="short settings for every section: a few minutes on a 2-core CPU")
    parser.add_argument("--source", default=None,
                        help="shard folder for the data section (default: built from the embedded photos in OUT/work)")
    parser.add_argument("--device", default="auto", help="auto (cuda when present), cpu or cuda")
    parser.add_argument("--procs", default="1,2", help="process counts for the scaling section (default 1,2)")
    parser.add_argument("--sections", default=",".join(SECTIONS),
                        help=f"comma-separated subset of {', '.join(SECTIONS)} (default: all)")
    parser.add_argument("--tiny", action="store_true", help=argparse.SUPPRESS)  # tests: toy sizes everywhere


def run(args: argparse.Namespace) -> int:
    sections = [s.strip() for s in args.sections.split(",") if s.strip()]
    bad = [s for s in sections if s not in SECTIONS]
    if bad:
        raise UsageError(f"--sections: unknown section {bad[0]!r}; choose from {', '.join(SECTIONS)}")
    if args.device == "cuda":
        import torch

        if not torch.cuda.is_available():
            raise UsageError("--device cuda but no CUDA GPU is visible (check CUDA_VISIBLE_DEVICES)")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    tiny = _tiny(args)
    argv = ["all", "--quick" if args.quick else None, "--out", str(out),
            *(["--source", args.source] if args.source else []),
            *(["--device", args.device] if args.device != "auto" else []),
            *(["--procs", args.procs] if args.procs != "1,2" else []),
            *(["--sections", ",".join(sections)] if sections != list(SECTIONS) else []), "--tiny" if tiny else None]
    env = environment()
    env["load_average"] = _load()
    env["config"] = {"quick": args.quick, "tiny": tiny, "device": args.device, "sections": sections,
                     "procs": args.procs, "source": args.source, "out": str(out)}
    results: dict = {"command": _cmd(*argv), "environment": env}
    failed = []
    t_all = time.perf_counter()
    for name in sections:
        print(f"== {name} ==", flush=True)
        load, t0 = _load(), time.perf_counter()
        try:
            sec = RUNNERS[name](args, out)
        except Exception as e:  # one broken section must not lose the others' results
            traceback.print_exc()
            sec = {"error": f"{type(e).__name__}: {e}"[:2000]}
            failed.append(name)
        sec["seconds"] = time.perf_counter() - t0
        sec["load_average"] = load
        results[name] = sec
        write_json(out / "results.json", results)  # partial results survive a later crash
    results["seconds"] = time.perf_counter() - t_all
    write_json(out / "results.json", results)
    from p2p.bench.report import write_report

    report = write_report(results, out)
    print(f"wrote {out / 'results.json'}, {report} and plots in {time.perf_counter() - t_all:.0f} s")
    for name in SECTIONS:
        sec = results.get(name) or {}
        if sec.get("skipped"):
            print(f"  {name}: skipped ({sec['skipped']})")
        elif sec.get("error"):
            print(f"  {name}: FAILED ({sec['error'].splitlines()[0]})")
    if failed:
        print(f"p2p bench all: {len(failed)} section(s) failed: {', '.join(failed)}")
        return 1
    return 0


if __name__ == "__main__":
    _parser = argparse.ArgumentParser(prog="python -m p2p.bench.all_bench", description=__doc__.splitlines()[0])
    add_arguments(_parser)
    raise SystemExit(run(_parser.parse_args()))
