"""Every benchmark into one folder (`p2p bench all`).

OUT/results.json holds `environment` (hardware, versions, the options of this run, date) and one
section per suite that has one in p2p.specs.suites (`data`, `lab`, `step`, `ranks`, `profile`:
the suite's `section` function runs it), each with the command that
reproduces it, its config and its rows (every row with `baseline` and `ratio`), or `skipped` /
`error` with the reason. OUT/report.md renders the tables and OUT/*.png the plots
(p2p.bench.report); OUT/profile/trace.json is the Chrome trace of the profiled run.

The sizes given here (image size, batch size, model widths and depth) go to every section that
has them; unset, each section uses its own defaults. The data section needs shards: without a
source, COCO-like JPEGs (64 by default, mixed sizes around 640x480 times `photo_scale`) are cut
from the photographs inside scikit-image into OUT/work/photos and packed with `p2p shard` into
OUT/work/shards at the load size for the image size, so the whole suite runs from a fresh clone
with no download. Sections run one after another in this process (ranks starts its own
processes); a section that fails is recorded with its error and the others still run.
"""

from __future__ import annotations

import importlib
import os
import shlex
import time
import traceback
from dataclasses import dataclass
from pathlib import Path

from p2p.bench.common import environment, write_json
from p2p.bench.workload import load_size_for
from p2p.errors import UsageError
from p2p import specs
from p2p.specs.suites import SUITES, sections

SECTIONS = sections()


@dataclass(frozen=True)
class AllOptions:
    """What `p2p bench all` is asked for; None sizes leave each section's own default."""

    out: str = "bench-out"
    quick: bool = False
    source: str | None = None  # shard folder for the data section (default: built in OUT/work)
    device: str = "auto"
    procs: tuple[int, ...] = (1, 2)  # the ranks section's process counts
    sections: tuple[str, ...] = SECTIONS
    image_size: int | None = None
    batch_size: int | None = None
    ngf: int | None = None
    ndf: int | None = None
    num_downs: int | None = None
    photos: int = 64  # JPEGs for the self-made shards
    photo_scale: float = 1.0  # their size relative to COCO's


def _load() -> float | None:
    try:
        return os.getloadavg()[0]
    except OSError:
        return None


def _cmd(*parts) -> str:
    return "p2p bench " + " ".join(shlex.quote(str(p)) for p in parts if p is not None and p != "")


def _flags(**values) -> list:
    """--key value for every value that is set (underscores become dashes)."""
    out = []
    for key, value in values.items():
        if value is not None:
            out += [f"--{key.replace('_', '-')}", value]
    return out


def _model_flags(sizes) -> list:
    if sizes.name == "custom":  # all three given: the named model no longer matters
        return _flags(ngf=sizes.ngf, ndf=sizes.ndf, num_downs=sizes.num_downs)
    return ["--model", sizes.name]


def data_section(o: AllOptions, out: Path, progress=print) -> dict:
    try:
        mod = importlib.import_module("p2p.bench.data")
    except ModuleNotFoundError as e:
        if e.name != "p2p.bench.data":
            raise
        return {"skipped": "p2p.bench.data is not in this build"}
    if not callable(getattr(mod, "run_data", None)):
        return {"skipped": "p2p.bench.data has no run_data(source, options) entry yet"}
    from p2p.bench.photos import build_shards

    image_size = o.image_size or mod.DataOptions.image_size
    source = Path(o.source) if o.source else build_shards(out / "work", o.photos, o.photo_scale,
                                                         load_size_for(image_size))
    options = mod.DataOptions(quick=o.quick, image_size=image_size,
                              batch_size=o.batch_size or mod.DataOptions.batch_size)
    payload = mod.run_data(str(source), options, progress)
    command = _cmd("data", "--source", source, "--quick" if o.quick else None,
                   *_flags(image_size=o.image_size, batch_size=o.batch_size), "--json", "data.json")
    return {"command": command, "config": payload["config"], "rows": payload["results"], "shards": str(source),
            "shards_built": None if o.source else "embedded photos -> COCO-like JPEGs -> p2p shard"}


def lab_section(o: AllOptions, out: Path, progress=print) -> dict:
    from p2p.bench.lab import run_lab
    from p2p.dist import resolve_device

    device = resolve_device(o.device).type
    size, images, repeats = o.image_size or 256, o.batch_size or 16, 3
    rows = run_lab(device=device, size=size, images=images, repeats=repeats, quick=o.quick)
    return {"command": _cmd("lab", "--device", device, "--size", size, "--images", images, "--repeats", repeats,
                            "--quick" if o.quick else None),
            "config": {"device": device, "size": size, "images": images, "repeats": repeats, "quick": o.quick},
            "rows": rows}


def step_section(o: AllOptions, out: Path, progress=print) -> dict:
    from p2p.bench.step import StepOptions, plan_step, run_step

    options = StepOptions(device=o.device, ngf=o.ngf, ndf=o.ndf, num_downs=o.num_downs, batch_size=o.batch_size,
                          image_size=o.image_size, quick=o.quick)
    p = plan_step(options)
    payload = run_step(options, progress)
    command = _cmd("step", "--device", p.device.type, *_model_flags(p.sizes), "--batch-size", p.batch_size,
                   "--image-size", p.image_size, "--steps", p.steps, "--warmup", p.warmup, "--repeats", p.repeats)
    return {"command": command, "config": payload["config"], "rows": payload["results"], "notes": payload["notes"]}


def ranks_section(o: AllOptions, out: Path, progress=print) -> dict:
    from p2p.bench.ranks import ScalingOptions, plan_scaling, run_scaling

    options = ScalingOptions(procs=o.procs, device=o.device, ngf=o.ngf, ndf=o.ndf, num_downs=o.num_downs,
                             batch_size=o.batch_size, image_size=o.image_size, quick=o.quick)
    p = plan_scaling(options)
    payload = run_scaling(options, progress)
    c = payload["config"]
    command = _cmd("ranks", "--procs", ",".join(map(str, c["procs"])), "--device", c["device"],
                   *_model_flags(p.sizes), "--batch-size", c["batch_per_process"], "--image-size", c["image_size"],
                   "--steps", c["steps_per_round"], "--warmup", c["warmup_steps"], "--repeats", c["rounds"],
                   "--threads", c["threads_per_process"], "--precision", c["precision"])
    return {"command": command, "config": c, "rows": payload["results"]}


def profile_overrides(o: AllOptions) -> list[str]:
    """The sizes as config overrides for the profiled run."""
    values = {"model.ngf": o.ngf, "model.ndf": o.ndf, "model.num_downs": o.num_downs, "train.batch_size": o.batch_size}
    if o.image_size:
        values.update({"data.image_size": o.image_size, "data.load_size": load_size_for(o.image_size)})
    if o.device != "auto":
        values["train.device"] = o.device
    return [f"{k}={v}" for k, v in values.items() if v is not None]


def profile_section(o: AllOptions, out: Path, progress=print) -> dict:
    from p2p.bench.profile import run_profile

    overrides = profile_overrides(o)
    payload = run_profile(overrides=overrides, quick=o.quick, out_dir=out / "profile", progress=progress)
    write_json(out / "profile" / "profile.json", payload)
    s = payload["summary"]
    command = _cmd("profile", "--steps", s["steps"], "--warmup", s["warmup_steps"], "--out", "profile", *overrides)
    return {"command": command, "config": payload["config"], "summary": s}


def command_line(o: AllOptions) -> str:
    """The `p2p bench all` command that repeats this run."""
    d = AllOptions()
    return _cmd("all", "--quick" if o.quick else None, "--out", o.out, *_flags(source=o.source),
                *(["--device", o.device] if o.device != d.device else []),
                *(["--procs", ",".join(map(str, o.procs))] if o.procs != d.procs else []),
                *(["--sections", ",".join(o.sections)] if o.sections != d.sections else []),
                *_flags(image_size=o.image_size, batch_size=o.batch_size, ngf=o.ngf, ndf=o.ndf,
                        num_downs=o.num_downs),
                *(["--photos", o.photos] if o.photos != d.photos else []),
                *(["--photo-scale", o.photo_scale] if o.photo_scale != d.photo_scale else []))


def run_all(o: AllOptions, progress=print, on_failure=None) -> dict:
    """Run the sections into o.out; returns the results (also in results.json), report.md
    written. A failed section has `error`; `on_failure(section, traceback text)` hears of it."""
    from p2p.bench.report import write_report
    from p2p.dist import resolve_device

    bad = [s for s in o.sections if s not in SECTIONS]
    if bad:
        raise UsageError(f"--sections: unknown section {bad[0]!r}; choose from {', '.join(SECTIONS)}")
    resolve_device(o.device)  # a GPU asked for and absent is a usage error before any section runs
    out = Path(o.out)
    out.mkdir(parents=True, exist_ok=True)
    env = environment()
    env["load_average"] = _load()
    env["config"] = {"quick": o.quick, "device": o.device, "sections": list(o.sections),
                     "procs": ",".join(map(str, o.procs)), "source": o.source, "out": str(out),
                     "image_size": o.image_size, "batch_size": o.batch_size, "ngf": o.ngf, "ndf": o.ndf,
                     "num_downs": o.num_downs, "photos": o.photos, "photo_scale": o.photo_scale}
    results: dict = {"command": command_line(o), "environment": env}
    t_all = time.perf_counter()
    for name in o.sections:
        progress(f"== {name} ==")
        load, t0 = _load(), time.perf_counter()
        try:
            sec = specs.load(SUITES[name].section)(o, out, progress)
        except Exception as e:  # one broken section must not lose the others' results
            if on_failure is not None:
                on_failure(name, traceback.format_exc())
            sec = {"error": f"{type(e).__name__}: {e}"[:2000]}
        sec["seconds"] = time.perf_counter() - t0
        sec["load_average"] = load
        results[name] = sec
        write_json(out / "results.json", results)  # partial results survive a later crash
    results["seconds"] = time.perf_counter() - t_all
    write_json(out / "results.json", results)
    write_report(results, out)
    return results
