"""`TrainJob`: what runs on every Slurm task of a `p2p submit` job, a picklable submitit
Checkpointable holding a resolved config tree (plain dicts) and how often it was requeued.
Jobs pickle it by reference: this module must stay importable as `p2p.slurm.job` on the nodes.

In the job (`TrainJob.__call__`):
  1. rank and world come from Slurm through `p2p.dist.detect`, as for any srun task (submitit
     starts its tasks with srun): SLURM_PROCID / SLURM_NTASKS / SLURM_LOCALID / the node list
     become RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR (first node), MASTER_PORT (from the job
     and step id). Accelerate then joins one process group (NCCL on GPUs, gloo on CPU).
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
     time limits together); a signal past it saves last.pt too, and the job ends FAILED with one
     line saying so (the same `p2p submit` command resumes it).
     A SIGTERM (scancel, or Slurm preempting with its own requeue) also saves last.pt; the job
     ends with one line saying so, in the state Slurm gives it (CANCELLED after scancel):
     `p2p submit` with the same run.name resumes it.
  4. A task that dies (its node goes down, the OOM killer, kill -9): srun --kill-on-bad-exit
     sends the others SIGTERM (SIGKILL KillWait seconds later); their next collective fails at
     once (the dead process's connections are closed) and train() raises PeerLostError. While
     slurm.max_requeues allows, the first survivor requeues the job, which resumes from last.pt
     (the steps since it are trained again); otherwise the job ends FAILED with one line and the
     same `p2p submit` command resumes it. A node that vanishes without closing its connections
     is noticed after train.timeout_s (the collective timeout).
"""

from __future__ import annotations

import copy
import os
import signal
import socket
import subprocess
import sys
from pathlib import Path

import submitit
from submitit.core.utils import temporary_save_path
from submitit.helpers import Checkpointable, DelayedSubmission

from p2p.config import from_tree
from p2p.errors import PeerLostError, UsageError

# torch.distributed variables the job sets itself; values inherited from the submitting shell
# (e.g. `p2p submit` run inside a torchrun job) must not leak into it.
DIST_VARS = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT")


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
        from p2p import dist  # torch: imported in the job only, `p2p submit` answers without it

        denv = dist.detect()  # exports the torch.distributed variables; the trainer reuses this answer
        # submitit's USR2 handler (checkpoint + requeue); the trainer replaces it while it trains.
        requeue = signal.getsignal(signal.SIGUSR2)
        cfg = from_tree(self.config)
        master = f"master {denv.master_addr}:{denv.master_port}" if denv.world_size > 1 else "one process"
        print(f"p2p job {env.job_id}: rank {denv.rank}/{denv.world_size} on {socket.gethostname()}, {master}, "
              f"restart {os.environ.get('SLURM_RESTART_COUNT', '0')} (requeues by p2p: {self.requeues}), "
              f"run folder {cfg.run_dir}, p2p from {Path(__file__).resolve().parents[1]}", flush=True)

        from p2p.train.loop import TrainingError, train

        try:
            try:
                result = train(cfg)
            except PeerLostError as e:  # another task died (its node, the OOM killer): requeue if allowed
                print(f"p2p job: error: {e}", file=sys.stderr, flush=True)
                self._requeue_after_lost_peer(env, cfg)
                sys.exit(1)  # not requeued: the job ends FAILED with the lines above, no traceback
            except (TrainingError, UsageError) as e:
                print(f"p2p job: error: {e}", file=sys.stderr, flush=True)
                raise
            if not result.preempted:
                # Finished: a USR2 arriving now (time limit) must not requeue a finished run.
                signal.signal(signal.SIGUSR2, signal.SIG_IGN)
                return {"step": result.step, "run_dir": result.run_dir, "metrics": result.last_metrics}
            return self._stopped(result, requeue)
        finally:
            dist.leave()  # however the task ends: see p2p.dist.leave

    def _stopped(self, result, requeue) -> dict:
        last = Path(result.run_dir) / "checkpoints" / "last.pt"
        # a signal before the first step ends a run at once (p2p.train.signals): maybe no checkpoint yet
        where = f"step {result.step} saved to {last}" if last.exists() else \
            f"stopped before step {result.step + 1} finished, no checkpoint yet"
        limit = int(self.config["slurm"]["max_requeues"])
        resume = "the same `p2p submit` command (same run.name) resumes it"
        if result.signal == "SIGTERM":
            # scancel, or Slurm preempting with its own requeue: Slurm has decided what happens
            # next, so one line and an exit, no traceback. Rank 0 exits 1 so that a SIGTERM from
            # anything else (a node going down) leaves the job FAILED, not COMPLETED: the run did
            # not finish. Other ranks exit 0 (srun's --kill-on-bad-exit would cut rank 0 short).
            print(f"p2p job: SIGTERM: {where}; the job was cancelled or preempted: {resume}",
                  file=sys.stderr, flush=True)
            sys.exit(1 if result.rank == 0 else 0)
        if self.requeues >= limit:
            # Decided here rather than in checkpoint(): there, declining makes submitit's handler
            # raise UncompletedJobError, which ends the job with a traceback. Rank 0 exits 1 (the
            # job FAILED: the run did not finish), other ranks 0 so that srun's --kill-on-bad-exit
            # cannot kill rank 0 before it printed this.
            print(f"p2p job: {result.signal}: {where}; not requeued: requeued {self.requeues} time(s) already "
                  f"(slurm.max_requeues={limit}); {resume}", file=sys.stderr, flush=True)
            sys.exit(1 if result.rank == 0 else 0)
        if result.rank != 0:
            print(f"p2p job: rank {result.rank} stopped ({result.signal}) at {where}; rank 0 requeues the job",
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

    def _requeue_after_lost_peer(self, env, cfg) -> None:
        """A surviving task requeues the job (resuming from last.pt) when slurm.max_requeues
        allows; returns when it does not. Any task may be the survivor (rank 0 may be the one
        that died), so the first to create a marker file in the run folder requeues, once per
        start of the job. Works like submitit's own requeue on USR2 (job_environment.py
        `_checkpoint` + `_requeue`): the submitted pickle is replaced by the next TrainJob, then
        `scontrol requeue`; Slurm ends every task of this start."""
        limit = int(self.config["slurm"]["max_requeues"])
        if self.requeues >= limit:
            print(f"p2p job: not requeued: requeued {self.requeues} time(s) already (slurm.max_requeues={limit}); "
                  f"the same `p2p submit` command (same run.name) resumes from {cfg.run_dir / 'checkpoints' / 'last.pt'}",
                  file=sys.stderr, flush=True)
            return
        marker = Path(cfg.run_dir) / "slurm" / f".requeue-{env.job_id}-{os.environ.get('SLURM_RESTART_COUNT', '0')}"
        marker.parent.mkdir(parents=True, exist_ok=True)
        try:
            os.close(os.open(marker, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644))
        except FileExistsError:
            print("p2p job: another task of this job requeues it", file=sys.stderr, flush=True)
            sys.exit(0)
        try:
            pickle_path = env.paths.submitted_pickle
            current = DelayedSubmission.load(pickle_path)
            config = copy.deepcopy(self.config)
            config["run"]["resume"] = True
            following = DelayedSubmission(type(self)(config, self.requeues + 1))
            following.set_timeout(current._timeout_min, current._timeout_countdown)
            with temporary_save_path(pickle_path) as tmp:
                following.dump(tmp)
            _requeue(env.job_id)
        except (OSError, KeyError, AssertionError, subprocess.SubprocessError) as e:
            why = (getattr(e, "stderr", b"") or b"").decode(errors="replace").strip() or str(e)
            print(f"p2p job: could not requeue job {env.job_id} ({why.splitlines()[0] if why else type(e).__name__}); "
                  f"the same `p2p submit` command resumes from {cfg.run_dir / 'checkpoints' / 'last.pt'}",
                  file=sys.stderr, flush=True)
            return
        print(f"p2p job: requeued job {env.job_id} after losing a task (requeue {self.requeues + 1} of at most "
              f"{limit}): it resumes from {cfg.run_dir / 'checkpoints' / 'last.pt'}", file=sys.stderr, flush=True)
        sys.exit(0)  # Slurm now ends this start of the job; no result file: the job is not over

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


def _requeue(job_id: str) -> None:
    """`scontrol requeue JOB`, run so that it outlives the end of this step. When a task dies,
    srun ends the step by sending SIGTERM to every process of it (SIGKILL KillWait seconds later),
    which killed the scontrol child of the task that was requeueing (seen on the local cluster:
    "died with SIGTERM"). A signal ignored in the parent stays ignored across fork and exec, so
    the child ignores SIGTERM for the few milliseconds it needs."""
    try:
        previous = signal.signal(signal.SIGTERM, signal.SIG_IGN)
    except ValueError:  # not the main thread: cannot change dispositions; run it as it is
        previous = None
    try:
        subprocess.run(["scontrol", "requeue", job_id], check=True, timeout=60, capture_output=True)
    finally:
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)
