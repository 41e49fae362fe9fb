"""Rank and world size come from the launcher's environment, resolved in one place."""

import pytest

from p2p.dist import PORT_MAX, PORT_MIN, detect, expand_nodelist, first_host, slurm_master_port
from p2p.errors import UsageError


def test_single_process_by_default():
    d = detect({})
    assert (d.rank, d.world_size, d.launcher) == (0, 1, "single")


def test_torchrun_environment():
    d = detect({"RANK": "3", "WORLD_SIZE": "8", "LOCAL_RANK": "1"})
    assert (d.rank, d.world_size, d.local_rank, d.launcher) == (3, 8, 1, "torchrun")


def slurm_task(rank: int, job_id: str = "1234", step_id: str = "0", **extra) -> dict:
    """The environment srun gives task `rank` of a 2-task step on two nodes (a submitit task too)."""
    return {"SLURM_PROCID": str(rank), "SLURM_NTASKS": "2", "SLURM_LOCALID": "0", "SLURM_JOB_ID": job_id,
            "SLURM_STEP_ID": step_id, "SLURM_JOB_NODELIST": "gpu[07-08]", "SLURM_STEP_NODELIST": "gpu[07-08]",
            "SLURM_NTASKS_PER_NODE": "1(x2)", **extra}


def test_srun_tasks_export_torch_variables():
    env = {"SLURM_PROCID": "1", "SLURM_NTASKS": "2", "SLURM_LOCALID": "0", "SLURM_JOB_ID": "1234",
           "SLURM_JOB_NODELIST": "gpu[07-08]", "SLURM_NTASKS_PER_NODE": "1(x2)"}
    d = detect(env)
    assert (d.rank, d.world_size, d.launcher) == (1, 2, "slurm")
    assert env["RANK"] == "1" and env["WORLD_SIZE"] == "2" and env["LOCAL_WORLD_SIZE"] == "1"
    assert env["MASTER_ADDR"] in ("gpu07",) and env["MASTER_PORT"] == str(slurm_master_port(1234, 0))
    assert (d.master_addr, d.master_port) == ("gpu07", slurm_master_port(1234, 0))


def test_every_rank_of_a_step_agrees_on_master_without_scontrol(monkeypatch):
    monkeypatch.setenv("PATH", "/nonexistent")  # the node list parses: no scontrol needed
    envs = [slurm_task(rank) for rank in (0, 1)]
    found = [detect(env) for env in envs]
    assert [d.rank for d in found] == [0, 1]
    assert {(d.master_addr, d.master_port) for d in found} == {("gpu07", slurm_master_port(1234, 0))}
    assert {(e["MASTER_ADDR"], e["MASTER_PORT"]) for e in envs} == {("gpu07", str(slurm_master_port(1234, 0)))}


def test_two_steps_of_one_job_get_different_ports():
    step0, step1 = detect(slurm_task(0, step_id="0")), detect(slurm_task(0, step_id="1"))
    assert step0.master_port != step1.master_port
    assert len({slurm_master_port(1234, step) for step in range(8)}) == 8


def test_array_elements_get_different_ports():
    # Elements of array 500 share SLURM_ARRAY_JOB_ID; each has its own SLURM_JOB_ID.
    a = detect(slurm_task(0, job_id="500", SLURM_ARRAY_JOB_ID="500", SLURM_ARRAY_TASK_ID="0"))
    b = detect(slurm_task(0, job_id="501", SLURM_ARRAY_JOB_ID="500", SLURM_ARRAY_TASK_ID="1"))
    assert a.master_port != b.master_port


def test_master_port_stays_below_the_ephemeral_range():
    ports = {slurm_master_port(job, step) for job in range(0, 200_000, 7) for step in (0, 1, 2, 7, 4294967294)}
    assert min(ports) >= PORT_MIN >= 1024 and max(ports) <= PORT_MAX < 32768
    # Jobs submitted one after another (nearby ids), all steps below 8: no two share a port.
    nearby = [slurm_master_port(job, step) for job in range(10_000_000, 10_002_846) for step in range(8)]
    assert len(set(nearby)) == len(nearby)


def test_explicit_master_port_and_address_are_kept():
    env = slurm_task(1, MASTER_ADDR="10.0.0.1", MASTER_PORT="29999")
    d = detect(env)
    assert (d.master_addr, d.master_port) == ("10.0.0.1", 29999)


def test_a_process_resolves_its_environment_once(monkeypatch):
    """The submitit job asks before training, dist.start() again: the same answer, read once."""
    import p2p.dist as dist

    environ = slurm_task(1)
    monkeypatch.setattr(dist.os, "environ", environ)
    monkeypatch.setattr(dist, "_this_process", None)
    first = dist.detect()
    assert (first.rank, first.world_size, first.launcher) == (1, 2, "slurm") and environ["RANK"] == "1"
    assert dist.detect() is first  # not re-read as a torchrun launch from the exported RANK


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
    assert expand_nodelist("node[1-3],gpu07") == ["node1", "node2", "node3", "gpu07"]
    assert expand_nodelist("gpu[007-008]") == ["gpu007", "gpu008"]
    assert expand_nodelist("gpu[007-008,010],cpu1") == ["gpu007", "gpu008", "gpu010", "cpu1"]
    assert first_host("node[2-3]") == "node2"


def test_unparsed_nodelist_falls_back_to_scontrol(tmp_path, monkeypatch):
    assert expand_nodelist("rack[1-2]-node[1-2]") == []  # two bracket groups: left to Slurm
    scontrol = tmp_path / "scontrol"
    scontrol.write_text("#!/bin/sh\necho rack1-node1; echo rack1-node2\n")
    scontrol.chmod(0o755)
    monkeypatch.setenv("PATH", str(tmp_path))
    assert first_host("rack[1-2]-node[1-2]") == "rack1-node1"
    monkeypatch.setenv("PATH", "/nonexistent")
    with pytest.raises(UsageError, match="set MASTER_ADDR"):
        first_host("rack[1-2]-node[1-2]")
