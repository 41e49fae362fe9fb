"""`p2p submit`, `p2p jobs`, `p2p cancel`: training on Slurm (the library is p2p.slurm).

    p2p submit [CONFIG.yaml] [key=value ...] [--wait [--timeout S] | --dry-run] [--sweep key=v1,v2 ...]
    p2p jobs [ID ...] [--json] [--last N]
    p2p cancel ID [ID ...]

`p2p submit` takes the same config and overrides as `p2p train` plus the `slurm.*` keys, checks
them all before queueing anything, and submits a `p2p.slurm.job.TrainJob` with submitit.
`--wait` follows the jobs (a live table on a terminal, a line per change otherwise) and exits 0
only if all COMPLETED, 124 when --timeout ran out, 1 otherwise with the end of their logs.
"""

from __future__ import annotations

import argparse
import json
import sys
import time

from p2p.errors import UsageError
from p2p.slurm import jobs, sacct
from p2p.slurm.executor import submission_script, tasks_per_node
from p2p.slurm.registry import registry_path
from p2p.slurm.submission import Submission, plan, submit

POLL_S = 1.5
# A running job prints a progress line at most this often when followed without a terminal.
PROGRESS_EVERY_S = 5


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
    parser.add_argument("--dry-run", action="store_true",
                        help="check everything and print the sbatch script that would be submitted (the "
                             "array script for a sweep); queue nothing, create nothing, need no Slurm here")


def _world(sub: Submission) -> str:
    return f"{sub.base.slurm.nodes} node(s) x {tasks_per_node(sub.base)} task(s)"


def _point(point: dict[str, str]) -> str:
    return " ".join(f"{k}={v}" for k, v in point.items())


def run_submit(args) -> int:
    if args.timeout is not None and not args.wait:
        raise UsageError("--timeout only applies with --wait")
    if args.dry_run and args.wait:
        raise UsageError("--dry-run submits nothing, so there is nothing to --wait for")
    sub = plan(args.args, args.sweep, dry_run=args.dry_run)
    if args.dry_run:
        return dry_run(sub)
    records = submit(sub)
    if sub.sweep:
        array_id = records[0]["job_id"].split("_")[0]
        print(f"submitted job {array_id} (array of {len(records)}, at most {sub.base.slurm.array_parallelism} "
              f"at once; {_world(sub)} each) as {sub.name}")
        for rec, (_, point) in zip(records, sub.elements):
            print(f"  {rec['job_id']}  {_point(point)}\n      run folder {rec['run_dir']}\n      log {rec['stderr']}")
    else:
        rec = records[0]
        print(f"submitted job {rec['job_id']} ({_world(sub)}) as {sub.name}")
        print(f"  run folder {rec['run_dir']}")
        print(f"  stdout     {rec['stdout']}")
        print(f"  stderr     {rec['stderr']}" + (" (task 0; other tasks: <id>_<task>_log.*)" if sub.tasks > 1 else ""))
    for note in sub.notes:
        print(note)
    sys.stdout.flush()
    if not args.wait:
        return 0
    return follow(records, args.timeout)


def dry_run(sub: Submission) -> int:
    """`p2p submit --dry-run`: the script on stdout (as sbatch would get it), what it is on stderr."""
    what = f"an array of {len(sub.trees)}, {_world(sub)} each" if sub.elements else _world(sub)
    print(f"p2p submit --dry-run: nothing queued; sbatch would get this script for job {sub.name} ({what}), "
          f"logs in {sub.folder}", file=sys.stderr)
    for run_dir, (_, point) in zip(sub.run_dirs(), sub.elements):
        print(f"  {_point(point)}: run folder {run_dir}", file=sys.stderr)
    if not sub.elements:
        print(f"  run folder {sub.run_dirs()[0]}", file=sys.stderr)
    for note in sub.notes:
        print(note, file=sys.stderr)
    sys.stdout.write(submission_script(sub.executor, len(sub.trees)))
    sys.stdout.flush()
    return 0


# --------------------------------------------------------------------------- following jobs


def _console():
    from rich.console import Console

    console = Console(highlight=False)
    if not console.is_terminal:
        console = Console(highlight=False, width=200, soft_wrap=True)
    return console


def _progress_text(record: dict) -> tuple[str, str]:
    row = sacct.last_metrics(record["run_dir"])
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
    logs = sacct.failure_logs(record)
    for path, lines in logs:
        console.print(f"[bold]last lines of {path}:[/]")
        for ln in lines:
            console.print(f"  {ln}", markup=False)
    if not logs:
        console.print(f"no log output; see {record['stderr']} and {record['stdout']}")


def _print_changes(console, records: list[dict], states: dict[str, dict], last: dict, now: float) -> None:
    """Without a terminal: a line when a job's state changes, and its progress now and then."""
    for r in records:
        st = states[r["job_id"]]
        step, speed = _progress_text(r)
        key = (st["state"], st.get("restarts", 0))
        prev = last.get(r["job_id"])
        if prev is None or prev[0] != key or (step != prev[1] and now - prev[2] >= PROGRESS_EVERY_S):
            extra = f" step {step} ({speed} img/s)" if step != "-" else ""
            restarts = f" after {key[1]} requeue(s)" if key[1] else ""
            console.print(f"job {r['job_id']}: {st['state']}{restarts}{extra}")
            last[r["job_id"]] = (key, step, now)


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
            now = time.monotonic()
            states = sacct.submitted_states(ids, now - t0)
            if live is None:
                _print_changes(console, records, states, last, now)
            else:
                live.update(_table(records, states))
            done = [sacct.ended(states[i]) for i in ids]
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


# --------------------------------------------------------------------------- p2p jobs


def add_jobs_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("ids", nargs="*", metavar="ID", help="only these jobs (an array id selects its elements)")
    parser.add_argument("--json", action="store_true", help="print a JSON list instead of a table")
    parser.add_argument("--last", type=int, default=20, metavar="N", help="the N most recent submissions (default 20)")


def run_jobs(args) -> int:
    out = jobs.job_status(jobs.find_jobs(args.ids, args.last))
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


def run_cancel(args) -> int:
    status = 0
    for target in jobs.cancel_targets(args.ids):
        result = jobs.cancel(target)
        job_id, name = target.job_id, target.name
        if result.already_ended:
            print(f"job {job_id} ({name}) already ended: {result.state}; nothing to cancel")
        elif not result.done:
            print(f"p2p cancel: error: scancel {job_id} failed: {result.error}", file=sys.stderr)
            status = 1
        else:
            where = f"; run folder {target.registered[0]['run_dir']}" if len(target.registered) == 1 else ""
            print(f"cancelled job {job_id} ({name}, was {result.state or 'unknown'}): a running trainer saves "
                  f"checkpoints/last.pt on the way out; `p2p submit` with the same run.name resumes it{where}")
    return status
