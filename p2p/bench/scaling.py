"""`p2p bench scaling`: weak scaling of the training step over processes.

For each N in --procs, N real processes are started with torchrun (`python -m
torch.distributed.run --nproc-per-node N`), each running this module's worker: p2p's own DDP
set-up (p2p.dist.start: gloo on CPU, NCCL on GPUs; p2p.train.wrap.wrap_models, fused Adam) and
`train_step` on a synthetic batch of the same size in every process (weak scaling: the global
batch grows with N). Every process uses --threads torch/OpenMP threads (default: cores /
largest N, so the largest run does not oversubscribe the machine and every N gets the same
per-process resources). After warm-up, each round starts at a barrier and ends when the slowest
process is done: global img/s = N x batch x steps / that time. Rows: procs, img_per_s (global),
img_per_s_per_process, efficiency = per-process img/s at N / at 1, ratio = global speed-up
over the 1-process row (the baseline). On GPUs each process gets its own GPU; an N larger
than the GPU count is recorded as skipped.

Run directly as `python -m p2p.bench.scaling [options]`.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

from p2p.bench.common import environment, print_table, write_json
from p2p.errors import UsageError

BASELINE = "1 process"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _row_name(n: int) -> str:
    return "1 process" if n == 1 else f"{n} processes"


def _child_env(threads: int) -> dict:
    env = dict(os.environ)
    for k in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT", "GROUP_RANK",
              "TORCHELASTIC_RUN_ID"):
        env.pop(k, None)
    root = str(Path(__file__).resolve().parents[2])  # works from a clone without `pip install`
    env["PYTHONPATH"] = root + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    env.update(OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads), PYTHONUNBUFFERED="1")
    return env


def launch(n: int, worker_args: list[str], threads: int, timeout: float) -> dict:
    """Start N processes with torchrun, return rank 0's result."""
    with tempfile.TemporaryDirectory(prefix="p2p-scaling-") as tmp:
        result = Path(tmp) / "result.json"
        cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", str(n),
               "--master-addr", "127.0.0.1", "--master-port", str(_free_port()),
               "-m", "p2p.bench.scaling", "--worker", "--result", str(result), *worker_args]
        t0 = time.perf_counter()
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=_child_env(threads))
        if proc.returncode != 0 or not result.exists():
            tail = (proc.stderr or proc.stdout).strip().splitlines()[-15:]
            raise RuntimeError(f"torchrun with {n} processes exited {proc.returncode}:\n" + "\n".join(tail))
        out = json.loads(result.read_text())
        out["launch_s"] = time.perf_counter() - t0
        return out


def run_scaling(procs=(1, 2), device="auto", model="tiny", batch_size=4, image_size=32, steps=4, warmup=2,
                repeats=3, threads=0, precision="fp32", timeout=600, progress=print) -> dict:
    """Measure each N in `procs`; returns {environment, config, results}."""
    from p2p.bench.step import model_sizes

    procs = sorted(set(int(n) for n in procs))
    if not procs or procs[0] < 1:
        raise UsageError("--procs: process counts must be >= 1, e.g. 1,2")
    if 1 not in procs:
        procs.insert(0, 1)  # efficiency and ratio are against 1 process
    cuda = device == "cuda" or (device == "auto" and torch.cuda.is_available())
    if device == "cuda" and not torch.cuda.is_available():
        raise UsageError("--device cuda but no CUDA GPU is visible")
    gpus = torch.cuda.device_count() if cuda else 0
    cores = os.cpu_count() or 1
    threads = threads or max(1, cores // max(procs))
    ngf, num_downs, ndf = model_sizes(model)
    if image_size % (2 ** num_downs):
        raise UsageError(f"--image-size {image_size}: must be divisible by {2 ** num_downs} for --model {model}")
    worker_args = ["--device", "cuda" if cuda else "cpu", "--model", model, "--batch-size", str(batch_size),
                   "--image-size", str(image_size), "--steps", str(steps), "--warmup", str(warmup),
                   "--repeats", str(repeats), "--precision", precision]
    rows = []
    for n in procs:
        row = {"name": _row_name(n), "procs": n, "threads_per_process": threads, "batch_per_process": batch_size,
               "global_batch": n * batch_size, "backend": "nccl" if cuda else "gloo"}
        if cuda and n > gpus:
            row["skipped"] = f"needs {n} GPUs, this machine has {gpus}"
        elif not cuda and n * threads > cores:
            row["oversubscribed"] = f"{n} x {threads} threads on {cores} cores"
        if "skipped" not in row:
            try:
                out = launch(n, worker_args, threads, timeout)
                row.update(img_per_s=out["img_per_s"], img_per_s_per_process=out["img_per_s"] / n,
                           img_per_s_min=min(out["rounds"]), img_per_s_max=max(out["rounds"]),
                           rounds=out["rounds"], rank_img_per_s=out["rank_img_per_s"], launch_s=out["launch_s"],
                           torch_threads=out["torch_threads"], world_size=out["world_size"])
            except (RuntimeError, subprocess.TimeoutExpired) as e:
                row["skipped"] = f"failed: {str(e)[:600]}"
        rows.append(row)
        if "skipped" in row:
            progress(f"  {row['name']}: skipped ({row['skipped'].splitlines()[0]})")
        else:
            progress(f"  {row['name']}: {row['img_per_s']:.1f} img/s global, "
                     f"{row['img_per_s_per_process']:.1f} per process")
    base = rows[0].get("img_per_s_per_process")
    for row in rows:
        row["baseline"] = BASELINE
        ok = base and row.get("img_per_s")
        row["ratio"] = row["img_per_s"] / rows[0]["img_per_s"] if ok else None
        row["efficiency"] = row["img_per_s_per_process"] / base if ok else None
        row.setdefault("img_per_s", None)
    config = {"device": "cuda" if cuda else "cpu", "backend": "nccl" if cuda else "gloo", "procs": procs,
              "threads_per_process": threads, "cores": cores, "gpus": gpus, "model": model, "ngf": ngf,
              "num_downs": num_downs, "ndf": ndf, "batch_per_process": batch_size, "image_size": image_size,
              "steps_per_round": steps, "warmup_steps": warmup, "rounds": repeats, "precision": precision,
              "launcher": "python -m torch.distributed.run (torchrun)"}
    return {"environment": environment(), "config": config, "results": rows}


# ---------------------------------------------------------------------------------------------
# the worker, one per process under torchrun


def worker(args: argparse.Namespace) -> int:
    from p2p import dist
    from p2p.bench.common import sync
    from p2p.bench.step import model_sizes, synthetic_batch
    from p2p.config import Config
    from p2p.models import DiscriminatorArch, GeneratorArch, build_discriminator, build_generator, init_weights
    from p2p.train.loop import configure_determinism
    from p2p.train.step import Nets, Precision, train_step
    from p2p.train.wrap import make_optimizer, unwrap, wrap_models

    configure_determinism(False)
    accel = dist.start(args.device, 300)
    rank, world, device = accel.process_index, accel.num_processes, accel.device
    ngf, num_downs, ndf = model_sizes(args.model)
    cfg = Config()
    cfg.model.ngf, cfg.model.num_downs, cfg.model.ndf = ngf, num_downs, ndf
    cfg.data.image_size = cfg.data.load_size = args.image_size
    cfg.train.batch_size, cfg.train.precision = args.batch_size, args.precision
    torch.manual_seed(0)  # identical initial weights on every rank (DDP also broadcasts them)
    G = init_weights(build_generator(GeneratorArch(1, 2, num_downs, ngf)))
    D = init_weights(build_discriminator(DiscriminatorArch(3, ndf)))
    G, D, D_plain = wrap_models(G, D, cfg, accel, lambda text: None)
    precision = Precision(args.precision, device)
    nets = Nets(G, D, D_plain, make_optimizer(unwrap(G).parameters(), cfg, device),
                make_optimizer(unwrap(D).parameters(), cfg, device), precision.make_scaler(False),
                precision.make_scaler(False))
    inp, target = synthetic_batch(args.batch_size, args.image_size, device, seed=1 + rank)
    if device.type == "cuda" and cfg.train.channels_last:
        inp, target = (t.contiguous(memory_format=torch.channels_last) for t in (inp, target))

    def steps(k: int) -> None:
        for _ in range(k):
            train_step(nets, inp, target, cfg.loss, precision)

    steps(args.warmup)
    sync(device)
    rounds, mine = [], []
    for _ in range(args.repeats):
        torch.distributed.barrier() if world > 1 else None
        t0 = time.perf_counter()
        steps(args.steps)
        sync(device)
        dt = time.perf_counter() - t0
        mine.append(args.batch_size * args.steps / dt)
        # the round ends when the slowest process is done
        slowest = torch.tensor([dt], dtype=torch.float64, device=device)  # NCCL reduces device tensors only
        if world > 1:
            torch.distributed.all_reduce(slowest, op=torch.distributed.ReduceOp.MAX)
        rounds.append(world * args.batch_size * args.steps / slowest.item())
    per_rank = [mine]
    if world > 1:
        per_rank = [None] * world
        torch.distributed.all_gather_object(per_rank, mine)
    if rank == 0:
        import statistics

        write_json(args.result, {"img_per_s": statistics.median(rounds), "rounds": rounds,
                                 "rank_img_per_s": [statistics.median(r) for r in per_rank],
                                 "world_size": world, "torch_threads": torch.get_num_threads()})
    accel.wait_for_everyone()
    if world > 1:
        torch.distributed.destroy_process_group()
    return 0


# ---------------------------------------------------------------------------------------------
# the command


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--procs", default="1,2", help="process counts, comma-separated (default 1,2)")
    parser.add_argument("--device", default="auto", help="auto (cuda when present), cpu or cuda")
    parser.add_argument("--model", choices=("full", "small", "tiny"), default=None, metavar="{full,small}",
                        help="model sizes as in `p2p bench step` (default: full on GPU, small on CPU)")
    parser.add_argument("--batch-size", type=int, default=None, help="images per process per step "
                        "(default 64 on GPU, 4 on CPU)")
    parser.add_argument("--image-size", type=int, default=None, help="image side (default 256 GPU, 64 CPU)")
    parser.add_argument("--steps", type=int, default=None, help="steps per timed round (default 20 GPU, 4 CPU)")
    parser.add_argument("--warmup", type=int, default=None, help="untimed steps first (default 5 GPU, 2 CPU)")
    parser.add_argument("--repeats", type=int, default=3, help="timed rounds, median reported (default 3)")
    parser.add_argument("--threads", type=int, default=0,
                        help="torch/OpenMP threads per process (default: cores / the largest process count)")
    parser.add_argument("--precision", choices=("fp32", "bf16", "fp16"), default=None,
                        help="autocast dtype (default bf16 on GPU, fp32 on CPU)")
    parser.add_argument("--quick", action="store_true", help="short rounds: a smoke run")
    parser.add_argument("--tiny", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--json", metavar="PATH", help="also write {environment, config, results} to PATH")
    # the per-process worker (started by torchrun)
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--result", help=argparse.SUPPRESS)


def resolve_options(args: argparse.Namespace) -> dict:
    cuda = args.device == "cuda" or (args.device == "auto" and torch.cuda.is_available())
    tiny = args.tiny or os.environ.get("P2P_BENCH_TINY") == "1"
    try:
        procs = [int(p) for p in args.procs.split(",") if p.strip()]
    except ValueError:
        raise UsageError(f"--procs {args.procs!r}: give process counts such as 1,2 or 1,2,4") from None
    return {
        "procs": procs, "device": "cuda" if cuda else "cpu",
        "model": args.model or ("tiny" if tiny else "full" if cuda else "small"),
        "batch_size": args.batch_size or (2 if tiny else 64 if cuda else 4),
        "image_size": args.image_size or (32 if tiny else 256 if cuda else 64),
        "steps": args.steps or (2 if tiny else (5 if args.quick else 20) if cuda else 2 if args.quick else 4),
        "warmup": args.warmup if args.warmup is not None else (1 if tiny else 5 if cuda else 2),
        "repeats": 1 if tiny else args.repeats, "threads": args.threads,
        "precision": args.precision or ("bf16" if cuda else "fp32"),
    }


def run(args: argparse.Namespace) -> int:
    if args.worker:
        return worker(args)
    o = resolve_options(args)
    print(f"bench scaling: {o['procs']} processes on {o['device']}, {o['model']} model, {o['image_size']}px, "
          f"batch {o['batch_size']} per process", flush=True)
    payload = run_scaling(**o, progress=lambda s: print(s, flush=True))
    print_table(f"weak scaling ({payload['config']['backend']}, {payload['config']['threads_per_process']} "
                f"thread(s) per process)", payload["results"],
                columns=("name", "global_batch", "img_per_s", "img_per_s_per_process", "efficiency", "ratio"))
    if args.json:
        write_json(args.json, payload)
    return 0


if __name__ == "__main__":
    _parser = argparse.ArgumentParser(prog="python -m p2p.bench.scaling", description=__doc__.splitlines()[0])
    add_arguments(_parser)
    raise SystemExit(run(_parser.parse_args()))
