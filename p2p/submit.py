"""`p2p submit`, `p2p jobs`, `p2p cancel`: training on Slurm through submitit.

    p2p submit [CONFIG.yaml] [key=value ...] [--wait [--timeout S]] [--sweep key=v1,v2 ...]
    p2p jobs [--json] [--last N]
    p2p cancel ID [ID ...]

`p2p submit` takes the same config and overrides as `p2p train` plus the `slurm.*` keys, checks
them here (a mistake costs a second, not a queue wait), and submits a `TrainJob` with submitit:
sbatch runs `srun --kill-on-bad-exit=1 python -m submitit.core._submit FOLDER` on every task,
which unpickles the job object and calls it.

In the job (`TrainJob.__call__`):
  1. rank and world come from Slurm: `submitit.helpers.TorchDistributedEnvironment().export()`
     turns SLURM_PROCID / SLURM_NTASKS / SLURM_LOCALID / the node list into the torch.distributed
     variables RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR (first node), MASTER_PORT (derived from
     the job id). `p2p.dist.detect` reads them like a torchrun launch; Accelerate then joins one
     process group (NCCL on GPUs, gloo on CPU).
  2. it calls the same `p2p.train.loop.train(cfg)` as `p2p train`.
  3. Preemption and time limits: Slurm sends SIGUSR2 `slurm.signal_delay_s` before the limit
     (and `scancel --signal=USR2 ID` does the same on demand). While training, the trainer's own
     handler (p2p.train.signals) lets every rank finish the step, rank 0 writes
     checkpoints/last.pt, and train() returns `preempted=True`. Rank 0 then calls the USR2
     handler that submitit installed (captured with `signal.getsignal` before training): it
     calls `TrainJob.checkpoint()`, which returns the same config (with run.resume=true) and a
     requeue count, pickles it over the submitted job, runs `scontrol requeue` and exits. Other
     ranks exit 0 (srun's --kill-on-bad-exit would otherwise kill rank 0 mid-requeue). The
     requeued job keeps its id, starts the same run folder again and resumes from last.pt:
     no step lost, none repeated. `slurm.max_requeues` bounds the requeues (preemptions and
     time limits together).
     A SIGTERM (scancel, or Slurm preempting with its own requeue) also saves last.pt, but
     the job then ends as failed/cancelled: `p2p submit` with the same run.name resumes it.

Jobs are recorded in a registry, one JSON line per job (or array element):
`$P2P_JOBS_REGISTRY`, else `${XDG_CACHE_HOME:-~/.cache}/p2p/jobs.jsonl`. `p2p jobs` reads it and
asks `sacct` (then `squeue`) for the states, so it works long after `p2p submit` exited.
Jobs are named `p2p-<run.name>` so squeue/sacct listings show them too.

Environment in the job: sbatch passes the submitting shell's environment on (Slurm's default
--export=ALL), so settings such as NCCL_SOCKET_IFNAME / GLOO_SOCKET_IFNAME (the network
interface the nodes reach each other on, e.g. ib0 or eth0, when the first one found is wrong)
or NCCL_DEBUG=INFO are set by exporting them before `p2p submit`. The job script itself exports
OMP_NUM_THREADS=slurm.cpus_per_task and TORCH_NCCL_ASYNC_ERROR_HANDLING=1 (unless set: a rank
that times out in a collective tears its process down, and srun --kill-on-bad-exit=1 then
ends the whole step instead of leaving the others hanging).
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import datetime
import io
import itertools
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import submitit
from submitit.helpers import Checkpointable, DelayedSubmission

from p2p.config import Config, from_tree, load_config, parse_override
from p2p.errors import UsageError
from p2p.train.entry import split_args

# Job states after which nothing more happens (sacct/squeue spelling).
TERMINAL = {"COMPLETED", "FAILED", "CANCELLED", "TIMEOUT", "NODE_FAIL", "OUT_OF_MEMORY", "BOOT_FAIL",
            "DEADLINE", "REVOKED", "SPECIAL_EXIT"}
# torch.distributed variables the job sets itself; values inherited from the submitting shell
# (e.g. `p2p submit` run inside a torchrun job) must not leak into it.
DIST_VARS = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT")
POLL_S = 1.5


# --------------------------------------------------------------------------- the job


class TrainJob(Checkpointable):
    """What runs on every task: a resolved config tree (plain dicts) and how often it was requeued."""

    def __init__(self, config: dict, requeues: int = 0):
        self.config = config
        self.requeues = requeues

    def __call__(self) -> dict:
        env = submitit.JobEnvironment()
        cpus = str(self.config["slurm"]["cpus_per_task"])
        os.environ.setdefault("OMP_NUM_THREADS", cpus)  # the job script exports it before Python starts
        os.environ.setdefault("TORCH_NCCL_ASYNC_ERROR_HANDLING", "1")
        for key in DIST_VARS:
            os.environ.pop(key, None)
        dist_env = submitit.helpers.TorchDistributedEnvironment().export(set_cuda_visible_devices=False)
        # submitit's USR2 handler (checkpoint + requeue); the trainer replaces it while it trains.
        requeue = signal.getsignal(signal.SIGUSR2)
        cfg = from_tree(self.config)
        print(f"p2p job {env.job_id}: rank {dist_env.rank}/{dist_env.world_size} on {socket.gethostname()}, "
              f"master {dist_env.master_addr}:{dist_env.master_port}, restart "
              f"{os.environ.get('SLURM_RESTART_COUNT', '0')} (requeues by p2p: {self.requeues}), "
              f"run folder {cfg.run_dir}, p2p from {Path(__file__).resolve().parent}", flush=True)

        from p2p.train.loop import TrainingError, train

        try:
            result = train(cfg)
        except (TrainingError, UsageError) as e:
            print(f"p2p job: error: {e}", file=sys.stderr, flush=True)
            raise
        if not result.preempted:
            # Finished: a USR2 arriving now (time limit) must not requeue a finished run.
            signal.signal(signal.SIGUSR2, signal.SIG_IGN)
            return {"step": result.step, "run_dir": result.run_dir, "metrics": result.last_metrics}
        return self._stopped(result, dist_env.rank, requeue)

    def _stopped(self, result, rank: int, requeue) -> dict:
        where = f"step {result.step} saved to {Path(result.run_dir) / 'checkpoints' / 'last.pt'}"
        if result.signal == "SIGTERM":
            raise RuntimeError(f"stopped by SIGTERM at {where}; the job was cancelled or preempted: "
                               f"the same `p2p submit` command (same run.name) resumes it")
        if rank != 0:
            print(f"p2p job: rank {rank} stopped ({result.signal}) at {where}; rank 0 requeues the job",
                  flush=True)
            # No result file (the job is not over), and exit 0: srun --kill-on-bad-exit=1 would
            # otherwise kill rank 0 before it requeued.
            sys.exit(0)
        if getattr(requeue, "__func__", None) is not submitit.core.job_environment.SignalHandler.checkpoint_and_try_requeue:
            raise RuntimeError(f"stopped by {result.signal} at {where}; not running under submitit, so "
                               f"nothing requeues it: run it again to resume")
        print(f"p2p job: {result.signal}: {where}; requeueing", flush=True)
        requeue(signal.SIGUSR2, None)  # -> self.checkpoint(), `scontrol requeue`, sys.exit
        raise RuntimeError("submitit returned from its requeue handler")  # rank 0 never gets here

    def checkpoint(self, *args, **kwargs) -> DelayedSubmission | None:
        """Called by submitit on rank 0 to requeue: the same run again; it resumes from last.pt."""
        limit = int(self.config["slurm"]["max_requeues"])
        if self.requeues >= limit:
            print(f"p2p job: not requeued: requeued {self.requeues} time(s) already (slurm.max_requeues="
                  f"{limit}); the checkpoint is saved, `p2p submit` with the same run.name continues",
                  file=sys.stderr, flush=True)
            return None
        config = copy.deepcopy(self.config)
        config["run"]["resume"] = True
        return DelayedSubmission(type(self)(config, self.requeues + 1))


# --------------------------------------------------------------------------- building jobs


def _absolute(path: str) -> str:
    return str(Path(path).expanduser().resolve()) if path else path


def resolved_tree(cfg: Config) -> dict:
    """The config as plain dicts, with paths made absolute: the job may start in another folder."""
    tree = cfg.to_dict()
    tree["run"]["out_dir"] = _absolute(tree["run"]["out_dir"])
    for key in ("source", "val_source"):
        value = tree["data"][key]
        if value and value != "embedded" and "://" not in value and not value.startswith("pipe:"):
            tree["data"][key] = _absolute(value)
    tree["slurm"]["folder"] = _absolute(tree["slurm"]["folder"])
    return tree


def check_data(cfg: Config) -> None:
    """Fail now, not after a queue wait: local data sources must exist and suit the backend."""
    from p2p.data import resolve_backend

    d = cfg.data
    for key, source in (("data.source", d.source), ("data.val_source", d.val_source)):
        if not source or source == "embedded" or "://" in source or source.startswith("pipe:"):
            continue
        if not Path(source).exists():
            raise UsageError(f"{key}={source!r}: no such folder here (the job would fail after its queue "
                             f"wait; paths must be visible from the compute nodes too)")
        resolve_backend(source, d.backend)


def parse_sweep(items: list[str]) -> list[tuple[str, list[str]]]:
    """`key=v1,v2` items -> [(key, [raw values])], keys unique."""
    sweep: dict[str, list[str]] = {}
    for item in items:
        if "=" not in item:
            raise UsageError(f"--sweep {item!r}: expected key=value1,value2,...")
        key, raw = item.split("=", 1)
        key = key.strip()
        values = [v.strip() for v in raw.split(",")]
        if not key or any(v == "" for v in values):
            raise UsageError(f"--sweep {item!r}: expected key=value1,value2,... with no empty value")
        if key.startswith("slurm.") or key == "run.name":
            raise UsageError(f"--sweep {key}: an array shares one sbatch script and names its run folders "
                             f"itself; sweep other keys")
        if key in sweep:
            raise UsageError(f"--sweep {key} given twice; list all values once: {key}=a,b,c")
        if len(set(values)) != len(values):
            raise UsageError(f"--sweep {item!r}: repeated value")
        sweep[key] = values
    return list(sweep.items())


def _safe(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9._=+-]", "_", text)


def sweep_elements(base_name: str, sweep: list[tuple[str, list[str]]]) -> list[tuple[str, dict[str, str]]]:
    """(run name, {key: raw value}) for each point of the cross product. The name lists the keys
    that vary, e.g. demo-optim.lr=0.0002 (all keys when none varies)."""
    varying = [k for k, vs in sweep if len(vs) > 1] or [k for k, _ in sweep]
    out, seen = [], set()
    for combo in itertools.product(*[vs for _, vs in sweep]):
        point = dict(zip([k for k, _ in sweep], combo))
        name = _safe("-".join([base_name] + [f"{k}={point[k]}" for k in varying]))
        while name in seen:
            name += "_"
        seen.add(name)
        out.append((name, point))
    return out


def setup_lines(cfg: Config) -> list[str]:
    """Shell lines the job script runs before srun (environment every task inherits)."""
    return [
        f"export OMP_NUM_THREADS={cfg.slurm.cpus_per_task}",
        "export TORCH_NCCL_ASYNC_ERROR_HANDLING=${TORCH_NCCL_ASYNC_ERROR_HANDLING:-1}",
    ]


def tasks_per_node(cfg: Config) -> int:
    s = cfg.slurm
    return s.tasks_per_node or s.gpus_per_node or 1


def make_executor(cfg: Config, folder: Path, name: str):
    if shutil.which("sbatch") is None or shutil.which("srun") is None:
        raise UsageError("Slurm is not available here (no sbatch/srun on PATH): run `p2p submit` on a login "
                         "node of the cluster, or `p2p train` to train on this machine")
    s = cfg.slurm
    ex = submitit.AutoExecutor(folder=folder, cluster="slurm", slurm_max_num_timeout=s.max_requeues)
    params = dict(
        name=name, nodes=s.nodes, tasks_per_node=tasks_per_node(cfg), cpus_per_task=s.cpus_per_task,
        timeout_min=s.time_min, slurm_signal_delay_s=s.signal_delay_s,
        slurm_array_parallelism=s.array_parallelism,
        # A task that dies ends the step (no rank left waiting in a collective); srun in Slurm
        # 22.05 does not inherit --cpus-per-task from the allocation, so pass it again.
        slurm_srun_args=["--kill-on-bad-exit=1", f"--cpus-per-task={s.cpus_per_task}"],
        slurm_setup=setup_lines(cfg),
    )
    if s.gpus_per_node:
        params["gpus_per_node"] = s.gpus_per_node
    if s.mem_gb:
        params["mem_gb"] = s.mem_gb
    for key in ("partition", "account", "qos", "constraint"):
        if getattr(s, key):
            params[f"slurm_{key}"] = getattr(s, key)
    extra = {k: v for k, v in s.extra.items() if v is not None and v is not False}
    if extra:
        params["slurm_additional_parameters"] = extra
    ex.update_parameters(**params)
    return ex


def _submit_error(e: Exception) -> UsageError:
    lines = [ln.strip() for ln in str(e).splitlines() if ln.strip()]
    why = next((ln for ln in lines if "error" in ln.lower() and "sbatch" in ln.lower()), lines[-1] if lines else repr(e))
    return UsageError(f"sbatch refused the job: {why}")


# --------------------------------------------------------------------------- registry


def registry_path() -> Path:
    if os.environ.get("P2P_JOBS_REGISTRY"):
        return Path(os.environ["P2P_JOBS_REGISTRY"])
    cache = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(cache) / "p2p" / "jobs.jsonl"


def register(records: list[dict]) -> None:
    path = registry_path()
    path.parent.mkdir(parents=True, exist_ok=True)
    text = "".join(json.dumps(r) + "\n" for r in records)
    with open(path, "a") as f:  # one O_APPEND write: submissions from several shells do not interleave
        f.write(text)


def read_registry() -> list[dict]:
    path = registry_path()
    if not path.exists():
        return []
    rows = []
    for line in path.read_text().splitlines():
        try:
            row = json.loads(line)
        except json.JSONDecodeError:
            continue
        if isinstance(row, dict) and "job_id" in row:
            rows.append(row)
    return rows


# --------------------------------------------------------------------------- Slurm queries


def _run(cmd: list[str], timeout: float = 30) -> subprocess.CompletedProcess:
    try:
        return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
    except (OSError, subprocess.TimeoutExpired) as e:
        return subprocess.CompletedProcess(cmd, 1, "", str(e))


def _array_ids(job_id: str) -> list[str]:
    """sacct ids such as 12, 12_3 or 12_[0-3%2] -> the ids they stand for."""
    m = re.fullmatch(r"(\d+)_\[([0-9,\-]+)(?:%\d+)?\]", job_id)
    if not m:
        return [job_id]
    out = []
    for part in m.group(2).split(","):
        lo, _, hi = part.partition("-")
        out += [f"{m.group(1)}_{i}" for i in range(int(lo), int(hi or lo) + 1)]
    return out


def query_states(ids: list[str]) -> dict[str, dict]:
    """{id: {state, exit_code, elapsed, nodes, restarts}} from sacct, then squeue for the rest."""
    if not ids:
        return {}
    base = sorted({i.split("_")[0] for i in ids})
    out: dict[str, dict] = {}
    proc = _run(["sacct", "-X", "-D", "-n", "-P", "-o", "JobID,State,ExitCode,Elapsed,NodeList", "-j", ",".join(base)])
    if proc.returncode == 0:
        for line in proc.stdout.splitlines():  # -D: every run of a requeued job, oldest first
            parts = line.split("|")
            if len(parts) < 5:
                continue
            for jid in _array_ids(parts[0]):
                state = parts[1].split()[0] if parts[1] else "UNKNOWN"
                prev = out.get(jid, {}).get("restarts", 0)  # each REQUEUED record is one requeue
                out[jid] = {"state": state, "exit_code": parts[2], "elapsed": parts[3], "nodes": parts[4],
                            "restarts": prev + (state == "REQUEUED")}
    missing = [i for i in ids if i not in out or out[i]["state"] in ("PENDING", "REQUEUED")]
    if missing:  # sacct lags behind the controller by a moment; squeue knows live jobs at once
        proc = _run(["squeue", "-h", "-t", "all", "-o", "%i|%T|%M|%N", "-j", ",".join(sorted({i.split("_")[0] for i in missing}))])
        if proc.returncode == 0:
            for line in proc.stdout.splitlines():
                parts = line.split("|")
                if len(parts) < 4:
                    continue
                for jid in _array_ids(parts[0]):
                    if jid in missing:
                        row = out.setdefault(jid, {"exit_code": "", "restarts": 0})
                        row.update(state=parts[1], elapsed=parts[2], nodes=parts[3])
    for i in ids:
        if i in out and out[i]["state"] == "REQUEUED":
            out[i]["state"] = "PENDING"  # requeued and not yet running again
    return out


def last_metrics(run_dir: str | Path) -> dict:
    """The last row of <run_dir>/metrics.jsonl (read from the end of the file), or {}."""
    path = Path(run_dir) / "metrics.jsonl"
    try:
        with open(path, "rb") as f:
            f.seek(0, os.SEEK_END)
            size = f.tell()
            f.seek(max(0, size - 16384))
            lines = f.read().decode(errors="replace").splitlines()
    except OSError:
        return {}
    for line in reversed(lines):
        try:
            row = json.loads(line)
        except json.JSONDecodeError:
            continue
        if isinstance(row, dict):
            return row
    return {}


def tail(path: str | Path, n: int = 20) -> list[str]:
    try:
        with open(path, "rb") as f:
            f.seek(0, os.SEEK_END)
            f.seek(max(0, f.tell() - 65536))
            return f.read().decode(errors="replace").splitlines()[-n:]
    except OSError:
        return []


# --------------------------------------------------------------------------- following jobs


def _console():
    from rich.console import Console

    console = Console(highlight=False)
    if not console.is_terminal:
        console = Console(highlight=False, width=200, soft_wrap=True)
    return console


def _progress_text(record: dict) -> tuple[str, str]:
    row = last_metrics(record["run_dir"])
    if not row:
        return "-", "-"
    step = f"{row.get('step', '?')}/{record.get('max_steps', '?')}"
    speed = f"{row['img_per_s']:.1f}" if isinstance(row.get("img_per_s"), (int, float)) else "-"
    return step, speed


def _table(records: list[dict], states: dict[str, dict], title: str | None = None):
    from rich.table import Table

    table = Table(title=title, title_justify="left")
    for col in ("job", "state", "requeues", "step", "img/s", "elapsed"):
        table.add_column(col, no_wrap=True)
    table.add_column("run folder", overflow="fold")
    for r in records:
        st = states.get(r["job_id"], {})
        step, speed = _progress_text(r)
        table.add_row(r["job_id"], st.get("state", "PENDING"), str(st.get("restarts", 0)), step, speed,
                      st.get("elapsed", "-"), r["run_dir"])
    return table


def show_failure(console, record: dict, state: dict) -> None:
    console.print(f"[red]job {record['job_id']} {state.get('state')}[/] (exit code {state.get('exit_code') or '?'}, "
                  f"ran {state.get('elapsed') or '?'}), run folder {record['run_dir']}")
    shown = False
    for task in range(int(record.get("tasks", 1))):
        for key in ("stderr", "stdout"):
            log = Path(record[key])  # task 0's log; task N writes <id>_N_log.*
            path = log.with_name(re.sub(r"_0_log\.(out|err)$", rf"_{task}_log.\1", log.name))
            lines = tail(path, 20)
            if not lines or (task and not any(("Error" in ln or "error" in ln) for ln in lines)):
                continue
            console.print(f"[bold]last lines of {path}:[/]")
            for ln in lines:
                console.print(f"  {ln}", markup=False)
            shown = True
            break  # stderr holds the traceback; stdout only when stderr is empty
    if not shown:
        console.print(f"no log output; see {record['stderr']} and {record['stdout']}")


def follow(records: list[dict], timeout: float | None) -> int:
    """Poll until every job ended; 0 only if all COMPLETED. A rich live table on a terminal,
    a plain line per change otherwise (logs, CI)."""
    console = _console()
    ids = [r["job_id"] for r in records]
    t0 = time.monotonic()
    last: dict[str, tuple] = {}
    live = None
    if console.is_terminal:
        from rich.live import Live

        live = Live(_table(records, {}), console=console, refresh_per_second=2, transient=False)
        live.start()
    try:
        while True:
            states = query_states(ids)
            now = time.monotonic()
            for r in records:
                if r["job_id"] not in states:
                    # squeue knows a job from the moment sbatch returns: one that neither squeue
                    # nor sacct knows for two minutes is lost (e.g. the controller's state was reset).
                    states[r["job_id"]] = {"state": "UNKNOWN" if now - t0 > 120 else "PENDING", "restarts": 0}
                st = states[r["job_id"]]
                if live is None:
                    step, speed = _progress_text(r)
                    key = (st["state"], st.get("restarts", 0))
                    prev = last.get(r["job_id"])
                    if prev is None or prev[0] != key or (step != prev[1] and now - prev[2] >= 5):
                        extra = f" step {step} ({speed} img/s)" if step != "-" else ""
                        restarts = f" after {key[1]} requeue(s)" if key[1] else ""
                        console.print(f"job {r['job_id']}: {st['state']}{restarts}{extra}")
                        last[r["job_id"]] = (key, step, now)
            if live is not None:
                live.update(_table(records, states))
            done = [states[i]["state"] in (TERMINAL | {"UNKNOWN"}) for i in ids]
            if all(done):
                break
            if timeout is not None and now - t0 > timeout:
                running = [i for i, d in zip(ids, done) if not d]
                console.print(f"[yellow]stopped waiting after {timeout:g} s; still running: {', '.join(running)} "
                              f"(follow with `p2p jobs`, stop with `p2p cancel {' '.join(running)}`)")
                return 124
            time.sleep(POLL_S)
    except KeyboardInterrupt:
        console.print(f"stopped waiting; the job(s) keep running: `p2p jobs` shows them, "
                      f"`p2p cancel {' '.join(ids)}` stops them")
        return 130
    finally:
        if live is not None:
            live.stop()
    failed = [r for r in records if states[r["job_id"]]["state"] != "COMPLETED"]
    for r in records:
        if r not in failed:
            step, _ = _progress_text(r)
            console.print(f"[green]job {r['job_id']} COMPLETED[/] (ran {states[r['job_id']].get('elapsed', '?')}, "
                          f"step {step}): {r['run_dir']}")
    for r in failed:
        show_failure(console, r, states[r["job_id"]])
    return 1 if failed else 0


# --------------------------------------------------------------------------- p2p submit


def add_submit_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("args", nargs="*", metavar="CONFIG.yaml | section.key=value",
                        help="as for `p2p train`: an optional preset, then overrides, including slurm.* "
                             "(slurm.nodes=2 slurm.gpus_per_node=4 slurm.partition=gpu slurm.time_min=240 ...)")
    parser.add_argument("--sweep", nargs="+", action="extend", default=[], metavar="KEY=V1,V2",
                        help="submit the cross product of these values as one job array, one run folder "
                             "per element (run.name gets -KEY=VALUE appended); at most "
                             "slurm.array_parallelism run at once")
    parser.add_argument("--wait", action="store_true",
                        help="follow the job(s) until they end; exit 0 only if all COMPLETED, and show the "
                             "end of the log of any that did not")
    parser.add_argument("--timeout", type=float, default=None, metavar="S",
                        help="with --wait: stop waiting after S seconds (exit 124; the jobs keep running)")


def run_submit(args) -> int:
    if args.timeout is not None and not args.wait:
        raise UsageError("--timeout only applies with --wait")
    path, overrides = split_args(args.args)
    base = load_config(path, overrides)
    sweep = parse_sweep(args.sweep)
    if sweep:
        elements = sweep_elements(base.run.name, sweep)
        configs = [load_config(path, overrides + [f"{k}={v}" for k, v in point.items()] + [f"run.name={name}"])
                   for name, point in elements]
    else:
        elements, configs = [], [base]
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
        folder = Path(trees[0]["run"]["out_dir"]) / f"{base.run.name}-sweep" / "slurm"
    else:
        folder = Path(trees[0]["run"]["out_dir"]) / base.run.name / "slurm"
    ex = make_executor(base, folder, name)

    new_dir = folder  # the top-most folder this submission creates, removed again if sbatch says no
    while not new_dir.parent.exists():
        new_dir = new_dir.parent
    existed = new_dir.exists()
    try:  # submitit echoes sbatch's stderr before raising: keep the error to one line
        with contextlib.redirect_stderr(io.StringIO()):
            if sweep:
                with ex.batch():
                    jobs = [ex.submit(TrainJob(tree)) for tree in trees]
            else:
                jobs = [ex.submit(TrainJob(trees[0]))]
    except Exception as e:  # sbatch said no: bad partition, account, limits
        if not existed:
            shutil.rmtree(new_dir, ignore_errors=True)
        raise _submit_error(e) from None

    now = datetime.datetime.now().isoformat(timespec="seconds")
    tasks = base.slurm.nodes * tasks_per_node(base)
    records = []
    for i, (job, tree) in enumerate(zip(jobs, trees)):
        run_dir = str(Path(tree["run"]["out_dir"]) / tree["run"]["name"])
        rec = {"job_id": str(job.job_id), "name": name, "run_dir": run_dir, "folder": str(folder),
               "stdout": str(job.paths.stdout), "stderr": str(job.paths.stderr), "tasks": tasks,
               "nodes": base.slurm.nodes, "max_steps": tree["train"]["max_steps"], "submitted": now,
               "host": socket.gethostname(), "cwd": os.getcwd()}
        if sweep:
            rec["sweep"] = {k: parse_override(f"{k}={v}")[1] for k, v in elements[i][1].items()}
            Path(run_dir).mkdir(parents=True, exist_ok=True)
            (Path(run_dir) / "sweep.json").write_text(json.dumps(
                {"job_id": rec["job_id"], "index": i, "overrides": rec["sweep"], "base_overrides": overrides,
                 "config": path, "sweep": {k: vs for k, vs in sweep}}, indent=2) + "\n")
        records.append(rec)
    register(records)

    world = f"{base.slurm.nodes} node(s) x {tasks_per_node(base)} task(s)"
    if sweep:
        array_id = records[0]["job_id"].split("_")[0]
        print(f"submitted job {array_id} (array of {len(records)}, at most {base.slurm.array_parallelism} at once; "
              f"{world} each) as {name}")
        for rec, (_, point) in zip(records, elements):
            point = " ".join(f"{k}={v}" for k, v in point.items())
            print(f"  {rec['job_id']}  {point}\n      run folder {rec['run_dir']}\n      log {rec['stderr']}")
    else:
        rec = records[0]
        print(f"submitted job {rec['job_id']} ({world}) as {name}")
        print(f"  run folder {rec['run_dir']}")
        print(f"  stdout     {rec['stdout']}")
        print(f"  stderr     {rec['stderr']}" + (" (task 0; other tasks: <id>_<task>_log.*)" if tasks > 1 else ""))
    for note in notes:
        print(note)
    sys.stdout.flush()
    if not args.wait:
        return 0
    return follow(records, args.timeout)


# --------------------------------------------------------------------------- p2p jobs


def add_jobs_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("ids", nargs="*", metavar="ID", help="only these jobs (an array id selects its elements)")
    parser.add_argument("--json", action="store_true", help="print a JSON list instead of a table")
    parser.add_argument("--last", type=int, default=20, metavar="N", help="the N most recent submissions (default 20)")


def _select(rows: list[dict], ids: list[str]) -> list[dict]:
    return [r for r in rows if r["job_id"] in ids or r["job_id"].split("_")[0] in ids]


def _unregistered_p2p_jobs(known: set[str], ids: list[str] | None) -> list[dict]:
    """Jobs named p2p* that Slurm knows but the registry does not (e.g. from slurm/train.sbatch):
    this user's jobs in squeue, or the given ids (sacct too)."""
    import getpass

    found: dict[str, str] = {}
    cmds = [["squeue", "-h", "-t", "all", "-o", "%i|%j"] + (["-j", ",".join(ids)] if ids else ["-u", getpass.getuser()])]
    if ids:
        cmds.append(["sacct", "-X", "-n", "-P", "-o", "JobID,JobName", "-j", ",".join(ids)])
    for cmd in cmds:
        proc = _run(cmd)
        for line in proc.stdout.splitlines() if proc.returncode == 0 else []:
            jid, _, name = line.partition("|")
            for j in _array_ids(jid.strip()):
                if name.startswith("p2p") and j not in known:
                    found.setdefault(j, name)
    rows = []
    for jid, name in sorted(found.items()):
        show = _run(["scontrol", "show", "job", "-o", jid]).stdout
        paths = dict(re.findall(r"\b(StdOut|StdErr|WorkDir)=(\S+)", show))
        rows.append({"job_id": jid, "name": name, "run_dir": "", "stdout": paths.get("StdOut"),
                     "stderr": paths.get("StdErr", paths.get("StdOut")), "max_steps": None,
                     "note": "not submitted by p2p submit: run folder unknown"})
    return rows


def run_jobs(args) -> int:
    rows = read_registry()
    known = {r["job_id"] for r in rows}
    if args.ids:
        rows = _select(rows, args.ids)
        others = [i for i in args.ids if not _select(rows, [i])]
        rows += _unregistered_p2p_jobs(known, others) if others else []
        unknown = [i for i in args.ids if not _select(rows, [i])]
        if unknown:
            raise UsageError(f"unknown job id {', '.join(unknown)}: Slurm knows no p2p job by that id "
                             f"(registry {registry_path()})")
    else:
        rows = rows[-args.last:] if args.last > 0 else rows
        rows += _unregistered_p2p_jobs(known, None)
    states = query_states([r["job_id"] for r in rows])
    out = []
    for r in rows:
        st = states.get(r["job_id"], {})
        row = last_metrics(r["run_dir"]) if r["run_dir"] else {}
        out.append({
            "job_id": r["job_id"], "name": r.get("name", ""), "state": st.get("state", "UNKNOWN"),
            "exit_code": st.get("exit_code", ""), "elapsed": st.get("elapsed", ""), "nodes": st.get("nodes", ""),
            "restarts": st.get("restarts", 0), "step": row.get("step"), "max_steps": r.get("max_steps"),
            "img_per_s": row.get("img_per_s"), "metrics": row, "run_dir": r["run_dir"],
            "stdout": r.get("stdout"), "stderr": r.get("stderr"), "submitted": r.get("submitted"),
            "sweep": r.get("sweep"), **({"note": r["note"]} if "note" in r else {}),
        })
    if args.json:
        print(json.dumps(out, indent=2))
        return 0
    console = _console()
    if not out:
        console.print(f"no p2p jobs yet (registry {registry_path()}); submit one with `p2p submit`")
        return 0
    from rich.table import Table

    table = Table(title=f"p2p jobs ({registry_path()})", title_justify="left")
    wide = console.width >= 150  # narrower terminals get the log paths below the table
    for col in ("job", "state", "requeues", "step", "img/s", "elapsed"):
        table.add_column(col, no_wrap=True)
    for col in ("name", "run folder", "log (stderr)") if wide else ("run folder",):
        table.add_column(col, overflow="fold")
    colors = {"COMPLETED": "green", "RUNNING": "cyan", "PENDING": "yellow"}
    for o in out:
        color = colors.get(o["state"], "red")
        step = "-" if o["step"] is None else f"{o['step']}/{o['max_steps']}"
        speed = "-" if o["img_per_s"] is None else f"{o['img_per_s']:.1f}"
        cells = [o["job_id"], f"[{color}]{o['state']}[/]", str(o["restarts"]), step, speed, o["elapsed"] or "-"]
        folder = o["run_dir"] or "?"
        table.add_row(*cells, *((o["name"], folder, o["stderr"] or "-") if wide else (folder,)))
    console.print(table)
    if not wide:
        for o in out:
            console.print(f"log {o['job_id']}: {o['stderr']}", soft_wrap=True)
    return 0


# --------------------------------------------------------------------------- p2p cancel


def add_cancel_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("ids", nargs="+", metavar="ID",
                        help="job ids from `p2p submit` / `p2p jobs` (an array id cancels every element)")


def _slurm_name(job_id: str) -> str | None:
    proc = _run(["sacct", "-X", "-n", "-P", "-o", "JobName", "-j", job_id])
    names = proc.stdout.split() if proc.returncode == 0 else []
    if not names:
        proc = _run(["squeue", "-h", "-t", "all", "-o", "%j", "-j", job_id])
        names = proc.stdout.split() if proc.returncode == 0 else []
    return names[0] if names else None


def run_cancel(args) -> int:
    rows = read_registry()
    for job_id in args.ids:
        if not re.fullmatch(r"\d+(_\d+)?", job_id):
            raise UsageError(f"{job_id!r} is not a Slurm job id (like 1234 or 1234_0); see `p2p jobs`")
    targets = []
    for job_id in args.ids:
        mine = _select(rows, [job_id])
        name = mine[0].get("name") if mine else _slurm_name(job_id)
        if not mine and not (name or "").startswith("p2p"):
            why = "not a p2p job" if name else "Slurm does not know it"
            raise UsageError(f"unknown job id {job_id}: {why} (see `p2p jobs`)")
        targets.append((job_id, name, mine))
    status = 0
    for job_id, name, mine in targets:
        states = query_states([job_id])
        state = states.get(job_id, {}).get("state")
        if state is None and mine:
            elems = query_states([r["job_id"] for r in mine])
            live = [s["state"] for s in elems.values() if s["state"] not in TERMINAL]
            state = live[0] if live else (next(iter(elems.values()))["state"] if elems else None)
        if state in TERMINAL:
            print(f"job {job_id} ({name}) already ended: {state}; nothing to cancel")
            continue
        proc = _run(["scancel", job_id])
        if proc.returncode != 0:
            print(f"p2p cancel: error: scancel {job_id} failed: {(proc.stderr or proc.stdout).strip()}", file=sys.stderr)
            status = 1
            continue
        where = f"; run folder {mine[0]['run_dir']}" if len(mine) == 1 else ""
        print(f"cancelled job {job_id} ({name}, was {state or 'unknown'}): a running trainer saves "
              f"checkpoints/last.pt on the way out; `p2p submit` with the same run.name resumes it{where}")
    return status
