"""launch/: the Accelerate configs are valid and the torchrun wrapper starts a real 2-process run."""

import json
import subprocess
import sys

import pytest
import yaml

from helpers.runs import ROOT, TINY, p2p_env

CONFIGS = sorted((ROOT / "launch" / "accelerate").glob("*.yaml"))


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.name)
def test_accelerate_configs_are_complete(path):
    cfg = yaml.safe_load(path.read_text())
    assert cfg["distributed_type"] in ("NO", "MULTI_GPU")
    assert cfg["num_processes"] >= 1 and cfg["num_machines"] >= 1
    assert cfg["mixed_precision"] == "no"  # precision is p2p's setting, not the launcher's
    if cfg["num_machines"] > 1:
        assert cfg["num_processes"] % cfg["num_machines"] == 0 and "main_process_ip" in cfg


@pytest.mark.slow
def test_torchrun_wrapper_runs_two_processes(tmp_path):
    env = p2p_env(PYTHON=sys.executable)
    proc = subprocess.run([str(ROOT / "launch" / "torchrun.sh"), "--nproc", "2", f"run.out_dir={tmp_path}",
                           "run.name=tr", *TINY, "train.max_steps=2"], capture_output=True, text=True,
                          timeout=240, env=env, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr[-2000:]
    rows = [json.loads(x) for x in (tmp_path / "tr" / "metrics.jsonl").read_text().splitlines()]
    assert rows[-1]["world_size"] == 2
