"""Rank and world size come from the launcher's environment, resolved in one place."""

import pytest

from p2p.dist import _expand_nodelist, detect
from p2p.errors import UsageError


def test_single_process_by_default():
    d = detect({})
    assert (d.rank, d.world_size, d.launcher) == (0, 1, "single")


def test_torchrun_environment():
    d = detect({"RANK": "3", "WORLD_SIZE": "8", "LOCAL_RANK": "1"})
    assert (d.rank, d.world_size, d.local_rank, d.launcher) == (3, 8, 1, "torchrun")


def test_srun_tasks_export_torch_variables():
    env = {"SLURM_PROCID": "1", "SLURM_NTASKS": "2", "SLURM_LOCALID": "0", "SLURM_JOB_ID": "1234",
           "SLURM_JOB_NODELIST": "gpu[07-08]", "SLURM_NTASKS_PER_NODE": "1(x2)"}
    d = detect(env)
    assert (d.rank, d.world_size, d.launcher) == (1, 2, "slurm")
    assert env["RANK"] == "1" and env["WORLD_SIZE"] == "2" and env["LOCAL_WORLD_SIZE"] == "1"
    assert env["MASTER_ADDR"] in ("gpu07",) and env["MASTER_PORT"] == str(20000 + 1234)


def test_one_slurm_task_is_a_single_process():
    assert detect({"SLURM_PROCID": "0", "SLURM_NTASKS": "1"}).launcher == "single"


def test_mpi_environment():
    d = detect({"OMPI_COMM_WORLD_SIZE": "4", "OMPI_COMM_WORLD_RANK": "2"})
    assert (d.rank, d.world_size, d.launcher) == (2, 4, "mpi")


def test_accelerate_cpu_launch_without_mpi_is_refused():
    with pytest.raises(UsageError, match="single process"):
        detect({"MASTER_PORT": "29500", "MASTER_ADDR": "127.0.0.1", "ACCELERATE_USE_CPU": "True"})


def test_nodelist_expansion_without_scontrol(monkeypatch):
    monkeypatch.setenv("PATH", "/nonexistent")
    assert _expand_nodelist("node[1-3],gpu07") == ["node1", "node2", "node3", "gpu07"]
    assert _expand_nodelist("gpu[007-008]") == ["gpu007", "gpu008"]
