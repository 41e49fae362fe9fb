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
    master_addr: str = ""  # where rank 0 listens (several processes only)
    master_port: int = 0


# Master ports of Slurm steps: 10000-32767, below Linux's ephemeral range (32768-60999: the
# kernel hands those out to every outgoing connection and to every bind to port 0, as gloo and
# NCCL do for their own sockets, so a fixed port there is now and then already taken), with
# STEP_SLOTS consecutive ports per job id so that concurrent steps of one job differ too.
PORT_MIN, PORT_MAX = 10000, 32767
STEP_SLOTS = 8


def slurm_master_port(job_id: int, step_id: int) -> int:
    """The rendezvous port of one Slurm step, the same on every rank without talking.
    SLURM_JOB_ID already differs between the elements of a job array (they share only
    SLURM_ARRAY_JOB_ID), so job and step id name the step. Two steps numbered below STEP_SLOTS
    share a port only when they have the same step id and their job ids differ by a multiple of
    (PORT_MAX - PORT_MIN + 1) / STEP_SLOTS = 2846; step 8 of a job shares step 0's of the next
    job id, which matters only if both run at once with the same first node."""
    span = PORT_MAX - PORT_MIN + 1
    return PORT_MIN + (job_id * STEP_SLOTS + step_id) % span


def expand_nodelist(nodelist: str) -> list[str]:
    """Hostnames of a Slurm node list such as "node[1-2],gpu[007-008,010]"; [] when it is in a
    form this does not know (several bracket groups in one name, a suffix after the brackets)."""
    parts = re.findall(r"(?:[^,\[\]]+|\[[^\]]*\])+", nodelist)
    if not parts or ",".join(parts) != nodelist:
        return []
    hosts = []
    for part in parts:
        m = re.fullmatch(r"([^\[\]]+)(?:\[([0-9,-]+)\])?", part)
        if not m:
            return []
        if m.group(2) is None:
            hosts.append(part)
            continue
        for rng in m.group(2).split(","):
            lo, _, hi = rng.partition("-")
            if not lo.isdigit() or not (hi or lo).isdigit() or int(hi or lo) < int(lo):
                return []
            hosts += [f"{m.group(1)}{i:0{len(lo)}d}" for i in range(int(lo), int(hi or lo) + 1)]
    return hosts


def first_host(nodelist: str) -> str:
    """The first node of a step: srun starts task 0 there, so it is the master's address.
    Parsed here rather than with `scontrol show hostnames`: every rank resolves it, and a
    job of N tasks would send N requests to the controller at the same moment for an answer
    each rank can read off its own environment. scontrol only for forms the parser does not know."""
    hosts = expand_nodelist(nodelist)
    if hosts:
        return hosts[0]
    try:
        hosts = subprocess.run(["scontrol", "show", "hostnames", nodelist], capture_output=True, text=True,
                               timeout=30, check=True).stdout.split()
    except (OSError, subprocess.SubprocessError) as e:
        raise UsageError(f"cannot tell the first node of SLURM node list {nodelist!r} (scontrol show "
                         f"hostnames failed: {e}); set MASTER_ADDR to rank 0's host") from None
    if not hosts:
        raise UsageError(f"SLURM node list {nodelist!r} names no node; set MASTER_ADDR to rank 0's host")
    return hosts[0]


_this_process: DistEnv | None = None  # detect()'s answer for os.environ, once worked out


def detect(environ: dict | None = None) -> DistEnv:
    """Read the launcher's environment. For a multi-task Slurm step with no torchrun on top
    (an srun task of slurm/train.sbatch, or of a `p2p submit` job: submitit runs its tasks with
    srun), export the torch.distributed variables (MASTER_ADDR/PORT, RANK, ...) so Accelerate
    finds them. Without `environ` it reads os.environ once per process and returns that answer
    after: the submitit job asks before training (to log it), `start()` again inside it."""
    global _this_process
    if environ is not None:
        return _read_environment(environ)
    if _this_process is None:
        _this_process = _read_environment(os.environ)
    return _this_process


def _read_environment(env) -> DistEnv:
    if "RANK" in env and "WORLD_SIZE" in env:
        return DistEnv(int(env["RANK"]), int(env["WORLD_SIZE"]), int(env.get("LOCAL_RANK", 0)), "torchrun",
                       env.get("MASTER_ADDR", ""), int(env.get("MASTER_PORT", 0) or 0))
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
        if "MASTER_ADDR" not in env:
            env["MASTER_ADDR"] = first_host(env.get("SLURM_STEP_NODELIST") or env.get("SLURM_JOB_NODELIST", "localhost"))
        if "MASTER_PORT" not in env:
            step = int(env.get("SLURM_STEP_ID", env.get("SLURM_STEPID", "0")) or 0)
            env["MASTER_PORT"] = str(slurm_master_port(int(env.get("SLURM_JOB_ID", "0") or 0), step))
        env.update(RANK=str(rank), WORLD_SIZE=str(ntasks), LOCAL_RANK=str(local))
        env.setdefault("LOCAL_WORLD_SIZE", env.get("SLURM_NTASKS_PER_NODE", "1").split("(")[0])
        return DistEnv(rank, ntasks, local, "slurm", env["MASTER_ADDR"], int(env["MASTER_PORT"]))
    return DistEnv()


def peer_failure(error: BaseException) -> str | None:
    """What a collective's error says about the other processes, or None when it is not about
    them. gloo raises RuntimeError ("Timed out waiting 10000ms for recv", "Connection closed by
    peer"); NCCL raises DistBackendError (a RuntimeError) naming a watchdog timeout."""
    text = str(error)
    if "Timed out" in text or "timed out" in text or "Watchdog caught collective operation timeout" in text:
        return "a collective operation timed out"
    if "Connection closed by peer" in text or "Connection reset by peer" in text or "Broken pipe" in text:
        return "a collective operation lost its connection"
    if isinstance(error, getattr(torch.distributed, "DistBackendError", ())):
        return "the process group failed"
    return None


def use_cuda(device: str, what: str = "train.device") -> bool:
    if device == "cuda" and not torch.cuda.is_available():
        raise UsageError(f"{what}=cuda but no CUDA GPU is visible (check CUDA_VISIBLE_DEVICES)")
    return device == "cuda" or (device == "auto" and torch.cuda.is_available())


def resolve_device(name: str, what: str = "--device") -> torch.device:
    """auto, cpu, cuda or cuda:N -> the device; asking for CUDA where there is none is a UsageError."""
    if name.startswith("cuda:"):  # a particular GPU
        use_cuda("cuda", what)
        return torch.device(name)
    if name not in ("auto", "cpu", "cuda"):
        raise UsageError(f"{what} {name!r}: choose auto, cpu, cuda or cuda:N")
    return torch.device("cuda" if use_cuda(name, what) else "cpu")


def bind_local_gpu(env, device_count: int) -> int:
    """The index, among the GPUs this process sees, of the one it trains on; LOCAL_RANK in `env`
    is rewritten to it when the two differ.

    With `srun --gpus-per-task=1` or `--gpu-bind` each task sees only its own GPU(s), while its
    LOCAL_RANK (SLURM_LOCALID) still counts the tasks on the node. Accelerate picks its device as
    LOCAL_RANK % device_count but hands DDP `device_ids=[LOCAL_RANK]` and its barrier
    `device_ids=[LOCAL_RANK]` (accelerate/accelerator.py prepare_model, state.py
    wait_for_everyone), so task 1 on a node would ask for GPU 1 of its single visible GPU: an
    invalid device ordinal. Making LOCAL_RANK the visible index makes all three agree. The
    node-local task number stays in SLURM_LOCALID (and DistEnv.local_rank)."""
    local = int(env.get("LOCAL_RANK", 0) or 0)
    index = local % max(device_count, 1)
    if index != local and "LOCAL_RANK" in env:
        env["LOCAL_RANK"] = str(index)
    return index


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
        torch.cuda.set_device(bind_local_gpu(os.environ, torch.cuda.device_count()))
    accel = Accelerator(
        cpu=not cuda,
        mixed_precision="no",  # autocast is applied per forward by p2p.precision.Precision
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


def leave() -> None:
    """Destroy this process's process group, if it has one, while the interpreter is whole. A
    process that exits with it alive leaves gloo's worker threads to the interpreter's
    finalization, which aborts it now and then ("terminate called without an active exception",
    SIGABRT: a finished 2-task Slurm job ended FAILED that way). Measured here: 12 of 60
    two-process gloo runs ending after broadcast_object_list aborted without this, 0 of 60 with
    it. Also safe after a lost peer: gloo's shutdown returns at once (measured), NCCL's aborts
    its communicators instead of waiting (torch's destroy_process_group -> pg.shutdown())."""
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        torch.distributed.destroy_process_group()
