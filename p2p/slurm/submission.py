"""Submitting: configs (one, or a sweep's cross product) checked here, before anything is
queued (a mistake costs a second, not a queue wait), then one `TrainJob` or one job array
through submitit, recorded in the registry. Returns records; prints nothing."""

from __future__ import annotations

import contextlib
import datetime
import io
import json
import math
import os
import shutil
import socket
import time
from dataclasses import dataclass, field
from pathlib import Path

from p2p.atomic import write_text
from p2p.config import Config, load_config, parse_override, split_args
from p2p.errors import UsageError
from p2p.run_folder import run_folder
from p2p.slurm.executor import make_executor, sbatch_refusal, tasks_per_node
from p2p.slurm.job import TrainJob
from p2p.slurm.registry import register
from p2p.slurm.sweep import parse_sweep, sweep_elements
from p2p.specs.tasks import TASKS


@dataclass
class Submission:
    """Everything about a submission that is known before sbatch runs."""

    base: Config  # the config without sweep values: slurm.*, the job name and log folder come from it
    configs: list[Config]  # one per job (array element)
    trees: list[dict]  # the same as plain dicts with absolute paths: what each TrainJob carries
    folder: Path  # submitit's folder: the job script, pickles and logs
    name: str  # the Slurm job name, p2p-<run.name>
    executor: object
    path: str | None = None  # the YAML preset, if any
    overrides: list[str] = field(default_factory=list)
    sweep: list[tuple[str, list[str]]] = field(default_factory=list)
    elements: list[tuple[str, dict[str, str]]] = field(default_factory=list)  # (run name, sweep point)
    notes: list[str] = field(default_factory=list)  # e.g. that a job resumes an existing run

    @property
    def tasks(self) -> int:
        return self.base.slurm.nodes * tasks_per_node(self.base)

    def run_dirs(self) -> list[Path]:
        return [run_folder(t["run"]["out_dir"], t["run"]["name"]) for t in self.trees]


def _absolute(path: str) -> str:
    return str(Path(path).expanduser().resolve()) if path else path


def _local_source(value: str) -> bool:
    return bool(value) and value != "embedded" and "://" not in value and not value.startswith("pipe:")


def resolved_tree(cfg: Config) -> dict:
    """The config as plain dicts, with paths made absolute: the job may start in another folder."""
    tree = cfg.to_dict()
    tree["run"]["out_dir"] = _absolute(tree["run"]["out_dir"])
    for key in ("source", "val_source"):
        if _local_source(tree["data"][key]):
            tree["data"][key] = _absolute(tree["data"][key])
    tree["slurm"]["folder"] = _absolute(tree["slurm"]["folder"])
    return tree


def check_data(cfg: Config) -> None:
    """Fail now, not after a queue wait: local data sources must exist and suit the backend."""
    from p2p.data import resolve_backend
    from p2p.specs.backends import BACKENDS

    d = cfg.data
    spec = BACKENDS.get(d.backend)
    if spec is not None and spec.needs_gpu and cfg.slurm.gpus_per_node == 0:
        raise UsageError(f"data.backend={d.backend} runs on GPUs, and slurm.gpus_per_node=0 asks for none: set "
                         f"slurm.gpus_per_node, or use data.backend=wds")
    # `auto` is resolved for the job's devices (the GPUs asked for; DALI as importable here)
    device = "cuda" if cfg.slurm.gpus_per_node else "cpu"
    for key, source in (("data.source", d.source), ("data.val_source", d.val_source)):
        if not _local_source(source):
            continue
        if not Path(source).exists():
            raise UsageError(f"{key}={source!r}: no such folder here (the job would fail after its queue "
                             f"wait; paths must be visible from the compute nodes too)")
        resolve_backend(source, d.backend, device, TASKS[cfg.task.name].input_kind)


def plan(args: list[str], sweep_items: list[str], dry_run: bool = False) -> Submission:
    """Load and check every config of a submission and build its executor; queue nothing."""
    path, overrides = split_args(args)
    base = load_config(path, overrides)
    sweep = parse_sweep(sweep_items)
    if sweep:
        elements = sweep_elements(base.run.name, sweep)
        configs = [load_config(path, overrides + [f"{k}={v}" for k, v in point.items()] + [f"run.name={name}"])
                   for name, point in elements]
    else:
        elements, configs = [], [base]
    for cfg in [base, *configs] if sweep else configs:  # a folder leaving run.out_dir: refused before sbatch
        run_folder(cfg.run.out_dir, cfg.run.name)
    for cfg in configs:
        check_data(cfg)
    notes = [f"note: {c.run_dir / 'checkpoints' / 'last.pt'} exists: the job resumes from it "
             f"(run.resume=false or another run.name starts over)"
             for c in configs if c.run.resume and (c.run_dir / "checkpoints" / "last.pt").exists()]
    trees = [resolved_tree(cfg) for cfg in configs]
    name = f"p2p-{base.run.name}"
    if base.slurm.folder:
        folder = Path(_absolute(base.slurm.folder))
    elif sweep:
        folder = run_folder(trees[0]["run"]["out_dir"], f"{base.run.name}-sweep") / "slurm"
    else:
        folder = run_folder(trees[0]["run"]["out_dir"], base.run.name) / "slurm"
    executor = make_executor(base, folder, name, dry_run=dry_run)
    return Submission(base, configs, trees, folder, name, executor, path, overrides, sweep, elements, notes)


def submit(sub: Submission) -> list[dict]:
    """Queue the job (the array, for a sweep), record it in the registry, write each sweep
    element's sweep.json; one record per job id. sbatch refusing it is a UsageError, and the
    folders this submission created are removed again."""
    new_dir = sub.folder  # the top-most folder this submission creates
    while not new_dir.parent.exists():
        new_dir = new_dir.parent
    existed = new_dir.exists()
    ex = sub.executor
    sbatch_from = time.time()  # the window Slurm's submit time must fall in (p2p.slurm.ownership)
    try:  # submitit echoes sbatch's stderr before raising: keep the error to one line
        with contextlib.redirect_stderr(io.StringIO()):
            if sub.sweep:
                with ex.batch():
                    jobs = [ex.submit(TrainJob(tree)) for tree in sub.trees]
            else:
                jobs = [ex.submit(TrainJob(sub.trees[0]))]
    except Exception as e:  # sbatch said no: bad partition, account, limits
        if not existed:
            shutil.rmtree(new_dir, ignore_errors=True)
        raise sbatch_refusal(e) from None

    window = [math.floor(sbatch_from), math.ceil(time.time())]
    now = datetime.datetime.now().isoformat(timespec="seconds")
    chdir = sub.base.slurm.extra.get("chdir")  # sbatch --chdir: the job's working directory instead
    workdir = os.path.normpath(os.path.join(os.getcwd(), str(chdir))) if chdir else os.getcwd()
    records = []
    for i, (job, tree, run_dir) in enumerate(zip(jobs, sub.trees, sub.run_dirs())):
        rec = {"job_id": str(job.job_id), "name": sub.name, "run_dir": str(run_dir), "folder": str(sub.folder),
               "stdout": str(job.paths.stdout), "stderr": str(job.paths.stderr), "tasks": sub.tasks,
               "nodes": sub.base.slurm.nodes, "max_steps": tree["train"]["max_steps"], "submitted": now,
               "host": socket.gethostname(), "cwd": os.getcwd(), "workdir": workdir, "submit_window": window}
        if sub.sweep:
            rec["sweep"] = {k: parse_override(f"{k}={v}")[1] for k, v in sub.elements[i][1].items()}
            run_dir.mkdir(parents=True, exist_ok=True)
            write_text(run_dir / "sweep.json", json.dumps(  # atomic: a full disk keeps the old one whole
                {"job_id": rec["job_id"], "index": i, "overrides": rec["sweep"], "base_overrides": sub.overrides,
                 "config": sub.path, "sweep": {k: vs for k, vs in sub.sweep}}, indent=2) + "\n")
        records.append(rec)
    register(records)
    return records
