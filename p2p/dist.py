"""Where rank and world size come from, resolved once: torchrun / `accelerate launch` (RANK,
WORLD_SIZE, ...), a Slurm task started by srun or submitit (SLURM_PROCID, SLURM_NTASKS, ...),
or nothing (one process). Models and the loop never read SLURM_* themselves.

`start()` turns that into a HuggingFace `Accelerator`: NCCL on GPUs, gloo on CPU (Accelerate
needs `cpu=True` for that, or every process silently trains alone; we check it did not).
"""

from __future__ import annotations

import datetime
import os
import re
import subprocess
from dataclasses import dataclass

import torch

from p2p.errors import UsageError


@dataclass
class DistEnv:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    launcher: str = "single"  # single | torchrun | mpi | slurm


def _expand_nodelist(nodelist: str) -> list[str]:
    """First hostnames of a Slurm nodelist like "node[1-2],gpu07"; scontrol when present."""
    try:
        out = subprocess.run(["scontrol", "show", "hostnames", nodelist], capture_output=True,
                             text=True, timeout=10, check=True).stdout.split()
        if out:
            return out
    except (OSError, subprocess.SubprocessError):
        pass
    hosts = []
    for part in re.findall(r"[^,\[]+(?:\[[^\]]*\])?", nodelist):
        m = re.match(r"(.*)\[(.*)\]$", part)
        if not m:
            hosts.append(part)
            continue
        for rng in m.group(2).split(","):
            lo, _, hi = rng.partition("-")
            for i in range(int(lo), int(hi or lo) + 1):
                hosts.append(f"{m.group(1)}{i:0{len(lo)}d}")
    return hosts


def detect(environ: dict | None = None) -> DistEnv:
    """Read the launcher's environment. For a multi-task Slurm step with no torchrun on top,
    export the torch.distributed variables (MASTER_ADDR/PORT, RANK, ...) so Accelerate finds them."""
    env = os.environ if environ is None else environ
    if "RANK" in env and "WORLD_SIZE" in env:
        return DistEnv(int(env["RANK"]), int(env["WORLD_SIZE"]), int(env.get("LOCAL_RANK", 0)), "torchrun")
    for size_var, rank_var in (("OMPI_COMM_WORLD_SIZE", "OMPI_COMM_WORLD_RANK"), ("PMI_SIZE", "PMI_RANK"),
                               ("MV2_COMM_WORLD_SIZE", "MV2_COMM_WORLD_RANK")):
        if size_var in env and int(env[size_var]) > 1:  # mpirun (accelerate's multi-CPU launcher)
            return DistEnv(int(env.get(rank_var, 0)), int(env[size_var]), 0, "mpi")
    if "MASTER_PORT" in env and env.get("ACCELERATE_USE_CPU", "").lower() in ("true", "1"):
        # `accelerate launch --cpu --num_processes N` without an MPI hostfile starts ONE process
        # (its multi-CPU path is mpirun) and that process would train alone.
        raise UsageError("accelerate launch --cpu started a single process; for several CPU processes use "
                         "`accelerate launch --multi_gpu --num_processes N ...` (p2p picks gloo without CUDA) "
                         "or torchrun")
    ntasks = int(env.get("SLURM_STEP_NUM_TASKS", env.get("SLURM_NTASKS", "1")) or 1)
    if "SLURM_PROCID" in env and ntasks > 1:
        rank, local = int(env["SLURM_PROCID"]), int(env.get("SLURM_LOCALID", 0))
        nodes = env.get("SLURM_STEP_NODELIST") or env.get("SLURM_JOB_NODELIST", "localhost")
        env.setdefault("MASTER_ADDR", _expand_nodelist(nodes)[0])
        # A port derived from the job id: tasks agree on it without talking, jobs on a node differ.
        env.setdefault("MASTER_PORT", str(20000 + int(env.get("SLURM_JOB_ID", "0")) % 20000))
        env.update(RANK=str(rank), WORLD_SIZE=str(ntasks), LOCAL_RANK=str(local))
        env.setdefault("LOCAL_WORLD_SIZE", env.get("SLURM_NTASKS_PER_NODE", "1").split("(")[0])
        return DistEnv(rank, ntasks, local, "slurm")
    return DistEnv()


def use_cuda(device: str, what: str = "train.device") -> bool:
    if device == "cuda" and not torch.cuda.is_available():
        raise UsageError(f"{what}=cuda but no CUDA GPU is visible (check CUDA_VISIBLE_DEVICES)")
    return device == "cuda" or (device == "auto" and torch.cuda.is_available())


def start(device: str = "auto", timeout_s: int = 600):
    """Create the Accelerator for this process. DDP keeps BatchNorm buffers local
    (broadcast_buffers=False): the discriminator runs twice before each backward, and a buffer
    broadcast between those forwards would change tensors autograd saved. The loop averages the
    buffers across ranks before validation and checkpoints instead."""
    from accelerate import Accelerator
    from accelerate.utils import DistributedDataParallelKwargs, InitProcessGroupKwargs

    import warnings

    # Accelerate forwards broadcast_buffers to DDP and warns that the name is deprecated; the
    # suggested replacement still syncs buffers at init and is missing from older PyTorch.
    warnings.filterwarnings("ignore", message=".*broadcast_buffers.*", category=FutureWarning)
    denv = detect()
    cuda = use_cuda(device)
    if cuda and denv.world_size > 1:
        torch.cuda.set_device(denv.local_rank % torch.cuda.device_count())
    accel = Accelerator(
        cpu=not cuda,
        mixed_precision="no",  # autocast is applied per forward by p2p.train.step.Precision
        kwargs_handlers=[
            DistributedDataParallelKwargs(broadcast_buffers=False),
            # Accelerate picks the backend (NCCL on GPUs, gloo with cpu=True) when several
            # processes run; a collective that waits past `timeout_s` (a dead rank) raises.
            InitProcessGroupKwargs(timeout=datetime.timedelta(seconds=timeout_s)),
        ],
    )
    if accel.num_processes != denv.world_size:
        raise RuntimeError(
            f"launcher started {denv.world_size} processes but Accelerate joined {accel.num_processes}: "
            f"each would train alone. Check RANK/WORLD_SIZE/MASTER_ADDR (and ACCELERATE_USE_CPU on CPU).")
    return accel
