"""The slow rank, named while it is slow (p2p.train.straggler): every rank's step time, data wait
and CPU wait ride in the log step's all-reduce; rank 0's rows name the slowest rank, and one
notice names a rank that stays slow. For real: two gloo ranks of `p2p train`, one of them moved
onto a core that busy processes crowd (sched_setaffinity from the test, nothing inside p2p)."""

from __future__ import annotations

import json
import os
import signal
import socket
import statistics
import subprocess
import sys
from pathlib import Path

import pytest

from helpers.runs import ROOT, TINY, free_port, p2p_env, wait_for
from p2p.compare import load_run, summary
from p2p.train.straggler import STEADY_INTERVALS, StragglerWatch, cpu_wait_seconds, per_rank_summary, slowest


def test_slowest_names_the_rank_with_the_largest_own_delay_and_what_it_waits_for():
    hosts = ["a", "b", "c", "d"]
    step = [1.0, 1.0, 1.0, 1.0]  # under DDP every rank's step time is the slowest rank's
    row = slowest(step, [0.1, 0.1, 0.7, 0.1], [0.05, 0.0, 0.1, 0.05], hosts)
    assert row["slowest_rank"] == 2 and row["slowest_host"] == "c" and row["slowest_what"] == "data"
    assert abs(row["slowest_lag"] - (0.8 - 0.15)) < 1e-9  # over the median of the other ranks
    row = slowest(step, [0.1, 0.1, 0.1, 0.1], [0.0, 0.6, 0.1, 0.0], hosts)
    assert (row["slowest_rank"], row["slowest_what"]) == (1, "compute")


def _row(rank: int, lag: float) -> dict:
    return {"slowest_rank": rank, "slowest_host": f"node{rank}", "slowest_lag": lag, "slowest_what": "compute"}


def test_one_notice_after_steady_intervals_and_again_only_after_recovery():
    watch = StragglerWatch(0.2)
    said = [watch.see(_row(1, 0.5)) for _ in range(STEADY_INTERVALS + 3)]
    assert [s is not None for s in said] == [False] * (STEADY_INTERVALS - 1) + [True] + [False] * 3
    assert "rank 1 on host node1" in said[STEADY_INTERVALS - 1] and "50%" in said[STEADY_INTERVALS - 1]
    assert watch.see(_row(1, 0.1)) is None  # one good interval is not a recovery
    assert all(watch.see(_row(1, 0.5)) is None for _ in range(STEADY_INTERVALS + 1))
    assert all(watch.see(_row(1, 0.1)) is None for _ in range(STEADY_INTERVALS))  # recovered
    again = [watch.see(_row(1, 0.5)) for _ in range(STEADY_INTERVALS)]
    assert again[-1] is not None


def test_no_notice_for_noise_a_changing_rank_or_when_off():
    watch = StragglerWatch(0.2)
    assert all(watch.see(_row(r, 0.9)) is None for r in (0, 1, 0, 1, 2, 0))  # never the same rank 3 in a row
    assert all(watch.see(_row(1, 0.19)) is None for _ in range(10))
    off = StragglerWatch(0.0)
    assert all(off.see(_row(1, 5.0)) is None for _ in range(10))
    assert all(watch.see({"step": 1, "world_size": 1}) is None for _ in range(5))  # one process: nothing to name


def test_per_rank_summary_for_p2p_compare():
    rows = [{"rank_step_s": [1.0, 1.0], "rank_data_wait_s": [0.1, 0.3], "rank_cpu_wait_s": [0.0, 0.2],
             "slowest_rank": 1, "slowest_host": "n2", "slowest_lag": lag} for lag in (0.3, 0.5, 0.4)]
    rows.append({"rank_step_s": [1.0, 1.0], "rank_data_wait_s": [0.3, 0.1], "rank_cpu_wait_s": [0.0, 0.0],
                 "slowest_rank": 0, "slowest_host": "n1", "slowest_lag": 0.2})
    got = per_rank_summary(rows)
    assert got["rank_data_wait_s"] == "r0:0.15 r1:0.25" and got["rank_cpu_wait_s"] == "r0:0 r1:0.15"
    assert got["slowest_rank"] == "1 on n2 (3/4 rows)" and got["slowest_lag"] == 0.4
    assert per_rank_summary([{"step": 1}]) == {}  # one process: nothing per rank


def test_cpu_wait_is_read_from_linux_schedstat():
    first = cpu_wait_seconds()
    assert isinstance(first, float) and first >= 0 and cpu_wait_seconds() >= first


@pytest.mark.parametrize("value", ["-0.1", "101"])
def test_straggler_lag_out_of_range_is_a_one_line_error(tmp_path, value):
    proc = subprocess.run([sys.executable, "-m", "p2p", "train", *TINY, f"run.out_dir={tmp_path}",
                           f"train.straggler_lag={value}"], capture_output=True, text=True, env=p2p_env(), cwd=ROOT,
                          timeout=120)
    assert proc.returncode == 2 and "train.straggler_lag" in proc.stderr and "Traceback" not in proc.stderr


# ---------------------------------------------------------------------------------------------
# two real ranks

CPU_CGROUP = Path("/sys/fs/cgroup/cpu")  # cgroup v1's cpu controller (CFS quota)


def _start_ranks(tmp_path, name: str) -> list[subprocess.Popen]:
    port = free_port()
    args = [*TINY, "train.max_steps=100000", "train.log_every=5", "train.straggler_lag=0.4",
            f"run.out_dir={tmp_path}", f"run.name={name}"]
    procs = []
    for rank in range(2):
        env = p2p_env(RANK=str(rank), WORLD_SIZE="2", LOCAL_RANK=str(rank), LOCAL_WORLD_SIZE="2",
                      MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
        with open(tmp_path / f"{name}-rank{rank}.log", "wb") as log:
            procs.append(subprocess.Popen([sys.executable, "-m", "p2p", "train", *args], stdout=log,
                                          stderr=subprocess.STDOUT, env=env, cwd=ROOT))
    return procs


def _rows(path) -> list[dict]:
    try:
        return [json.loads(x) for x in path.read_text().splitlines() if x.strip()]
    except FileNotFoundError:
        return []


def _cpu_quota(pid: int, share: float) -> Path:
    """Move a process (all its threads) into a new cgroup limited to `share` of one CPU."""
    group = CPU_CGROUP / f"p2p-test-straggler-{os.getpid()}-{pid}"
    group.mkdir()
    (group / "cpu.cfs_period_us").write_text("100000")
    (group / "cpu.cfs_quota_us").write_text(str(int(share * 100000)))
    (group / "cgroup.procs").write_text(str(pid))
    return group


def _train_rows(tmp_path, name: str, slowed: bool, rows_after: int = 2 + 2 * STEADY_INTERVALS) -> tuple[list, str]:
    """Two ranks train; once they log, rank 1 gets 2% of one CPU (when `slowed`); `rows_after`
    rows later both stop. -> (the rows from that point, rank 0's log)."""
    metrics = tmp_path / name / "metrics.jsonl"
    procs, group = _start_ranks(tmp_path, name), None
    try:
        wait_for(lambda: len(_rows(metrics)) >= 2 or any(p.poll() is not None for p in procs), timeout=300,
                 what="the first metrics rows")
        assert all(p.poll() is None for p in procs), (tmp_path / f"{name}-rank0.log").read_text()[-3000:]
        if slowed:
            group = _cpu_quota(procs[1].pid, 0.02)
        start = len(_rows(metrics))
        wait_for(lambda: len(_rows(metrics)) >= start + rows_after or any(p.poll() is not None for p in procs),
                 timeout=900, what=f"{rows_after} more metrics rows")
    finally:
        for p in procs:
            if p.poll() is None:
                p.send_signal(signal.SIGKILL)
            p.wait()
        if group is not None:
            wait_for(lambda: not (group / "cgroup.procs").read_text().strip(), timeout=30, what="an empty cgroup")
            group.rmdir()
    return _rows(metrics)[start:], (tmp_path / f"{name}-rank0.log").read_text()


@pytest.mark.slow
@pytest.mark.skipif(not os.access(CPU_CGROUP, os.W_OK) or not (CPU_CGROUP / "cpu.cfs_quota_us").exists(),
                    reason="needs a writable cgroup v1 cpu controller (root) to give one rank less CPU")
def test_a_rank_given_less_cpu_is_named_in_rows_and_one_notice(tmp_path):
    rows, log = _train_rows(tmp_path, "slowed", slowed=True)
    assert all(len(r["rank_step_s"]) == len(r["rank_cpu_wait_s"]) == 2 for r in rows)
    late = rows[2:]  # the first interval after the quota is partly before it
    assert [r["slowest_rank"] for r in late] == [1] * len(late), [(r["slowest_rank"], r["slowest_lag"]) for r in rows]
    seen = [(r["slowest_rank"], round(r["slowest_lag"], 2), r["rank_data_wait_s"], r["rank_cpu_wait_s"]) for r in rows]
    assert all(r["slowest_host"] == socket.gethostname() for r in late)
    assert statistics.median(r["slowest_lag"] for r in late) > 0.4, seen
    assert all(r["slowest_what"] == "compute" for r in late)  # its training thread waits for a CPU
    notices = [line for line in log.splitlines() if "is slower than the median rank" in line]
    assert len(notices) == 1, log[-3000:]
    assert f"rank 1 on host {socket.gethostname()}" in notices[0] and "compute" in notices[0]
    compared = summary(load_run(tmp_path / "slowed"))  # what `p2p compare` tabulates
    assert compared["slowest_rank"].startswith(f"1 on {socket.gethostname()}")
    assert compared["rank_cpu_wait_s"].startswith("r0:") and " r1:" in compared["rank_cpu_wait_s"]


@pytest.mark.slow
def test_two_ranks_at_the_same_speed_raise_no_notice(tmp_path):
    rows, log = _train_rows(tmp_path, "even", slowed=False)
    assert rows and all("slowest_rank" in r and len(r["rank_step_s"]) == 2 for r in rows)
    assert "is slower than the median rank" not in log
