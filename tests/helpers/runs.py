"""Running p2p the way users do, in fresh processes, plus the small models and bounded waits
the tests run it with."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[2]

# A model and data small enough for a step in well under a second on one CPU core.
TINY = [
    "data.image_size=32", "data.load_size=40", "model.num_downs=5", "model.ngf=8", "model.ndf=8",
    "train.batch_size=4", "data.epoch_size=32", "data.val_images=4", "data.workers=0",
    "train.log_every=2", "train.sample_every=0", "train.eval_every=0", "train.ckpt_every=0",
]


def p2p_env(**extra) -> dict:
    env = dict(os.environ)
    # ROOT first, the caller's path after it: packages installed with `pip --target` and put on
    # PYTHONPATH (benchmarks/gpu-check.sh) stay importable in the subprocess
    path = os.pathsep.join(p for p in (str(ROOT), os.environ.get("PYTHONPATH", "")) if p)
    env.update(PYTHONPATH=path, OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1")
    env.pop("RANK", None)
    env.pop("WORLD_SIZE", None)
    env.update(extra)
    return env


def run_p2p(*args, timeout: float = 300, check: bool = True, **env) -> subprocess.CompletedProcess:
    """`python -m p2p ARGS` in a fresh process; output captured as text."""
    proc = subprocess.run([sys.executable, "-m", "p2p", *map(str, args)], capture_output=True, text=True,
                          timeout=timeout, env=p2p_env(**env), cwd=ROOT)
    if check and proc.returncode != 0:
        raise AssertionError(f"p2p {' '.join(map(str, args))} exited {proc.returncode}:\n{proc.stderr[-3000:]}")
    return proc


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def torchrun(*args, nproc: int = 2, timeout: float = 240, check: bool = True, **env) -> subprocess.CompletedProcess:
    """`torchrun --nproc-per-node N ARGS` on CPU (gloo), output captured. An explicit free port:
    with --master-port 0 torchrun hands MASTER_PORT=0 to the workers, which then wait forever."""
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", str(nproc), "--master-addr",
           "127.0.0.1", "--master-port", str(free_port()), *map(str, args)]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=p2p_env(**env), cwd=ROOT)
    if check and proc.returncode:
        raise AssertionError(f"torchrun exited {proc.returncode}:\n{proc.stderr[-4000:]}")
    return proc


def wait_for(predicate, timeout: float = 120, what: str = "condition", poll: float = 0.1):
    """Poll `predicate` until it is true (bounded); its last value is returned."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(poll)
    raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")


def load_ckpt(path) -> dict:
    return torch.load(path, map_location="cpu", weights_only=True)
