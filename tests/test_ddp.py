"""Real multi-process training: 2 processes on CPU with gloo, started by torchrun."""

from __future__ import annotations

import json
import subprocess
import sys
import time

import pytest
import torch

from helpers.runs import ROOT, TINY, free_port, load_ckpt, p2p_env, torchrun, wait_for

pytestmark = pytest.mark.slow


def test_two_ranks_end_with_identical_weights(tmp_path):
    torchrun("tests/helpers/train_worker.py", tmp_path, f"run.out_dir={tmp_path}", "run.name=ddp", *TINY,
             "train.max_steps=4", "train.ckpt_every=2")
    r0, r1 = load_ckpt(tmp_path / "rank0.pt"), load_ckpt(tmp_path / "rank1.pt")
    ck = load_ckpt(tmp_path / "ddp" / "checkpoints" / "last.pt")
    for net, saved in (("G", "generator"), ("D", "discriminator")):
        for k in r0[net]:
            if k.endswith(("running_mean", "running_var")):
                # each rank keeps its own BatchNorm statistics; the checkpoint holds their mean
                assert not torch.equal(r0[net][k], r1[net][k]), f"{net}.{k}: batch statistics of two ranks"
                torch.testing.assert_close(ck[saved][k], (r0[net][k] + r1[net][k]) / 2, rtol=1e-6, atol=1e-7)
            else:
                assert torch.equal(r0[net][k], r1[net][k]), f"{net}.{k} differs between ranks"
                assert torch.equal(ck[saved][k], r0[net][k]), f"{net}.{k} differs from the checkpoint"
    rows = [json.loads(x) for x in (tmp_path / "ddp" / "metrics.jsonl").read_text().splitlines()]
    assert rows and all(r["world_size"] == 2 and r["global_batch"] == 8 for r in rows)
    assert ck["world_size"] == 2 and len(ck["rng"]) == 2 and len(ck["rank_buffers"]) == 2


def one_step(tmp_path, norm, name, world, batch):
    same = [*TINY, f"model.norm={norm}", "model.dropout=false", "data.flip=false", "data.load_size=32",
            "train.max_steps=1", "optim.lr_policy=constant", "run.seed=3", f"run.out_dir={tmp_path}"]
    out = tmp_path / f"{name}-w"
    out.mkdir()
    args = ["tests/helpers/train_worker.py", out, f"run.name={name}", *same, f"train.batch_size={batch}"]
    if world == 2:
        torchrun(*args)
    else:
        subprocess.run([sys.executable, *map(str, args)], check=True, env=p2p_env(), cwd=ROOT, timeout=240,
                       capture_output=True)
    return load_ckpt(out / "rank0.pt"), load_ckpt(tmp_path / name / "checkpoints" / "last.pt")


@pytest.mark.parametrize("norm", ["instance", "none"])
def test_two_batches_of_b_equal_one_batch_of_2b(tmp_path, norm):
    # No augmentation (crop = image, no flip), no batch coupling, no dropout: the only difference
    # left is how the gradient is summed over the 2b images.
    two, two_ck = one_step(tmp_path, norm, "two", world=2, batch=2)
    one, one_ck = one_step(tmp_path, norm, "one", world=1, batch=4)
    lr = 2e-4
    noise = {"G": lambda k: norm == "instance" and k.endswith("conv.bias")
             and not k.startswith(("down.0.", "up.0.", "down.4.")),
             "D": lambda k: norm == "instance" and k.endswith(".bias") and k not in ("model.0.bias", "model.11.bias")}
    # The averaged gradients agree (Adam's first moment after one step is (1 - beta1) * grad).
    # Every bias right before an InstanceNorm has an exactly-zero true gradient (the norm removes
    # any per-channel shift): only rounding noise, left out here and below.
    for net, opt in (("G", "opt_g"), ("D", "opt_d")):
        names = list(one[net])  # no buffers with instance/none norm: state-dict order = parameter order
        for pid, state in one_ck[opt]["state"].items():
            if not noise[net](names[pid]):
                torch.testing.assert_close(two_ck[opt]["state"][pid]["exp_avg"], state["exp_avg"], rtol=1e-4,
                                           atol=1e-6, msg=names[pid])
    # So do the weights. Adam's first update is lr * g / (|g| + eps): where a gradient is near zero
    # it magnifies rounding noise, so a rare weight may move by a fraction of lr.
    for net in ("G", "D"):
        for k in one[net]:
            if not noise[net](k):
                torch.testing.assert_close(two[net][k], one[net][k], rtol=0, atol=0.1 * lr, msg=f"{net}.{k}")
                close = (two[net][k] - one[net][k]).abs() <= 2e-6
                assert close.float().mean() > 0.999, f"{net}.{k}"


def accelerate_launch(tmp_path, *flags):
    cmd = [sys.executable, "-m", "accelerate.commands.launch", *flags, "--num_processes", "2", "--num_machines", "1",
           "--main_process_port", str(free_port()), "--mixed_precision", "no", "--dynamo_backend", "no",
           "-m", "p2p", "train", f"run.out_dir={tmp_path}", "run.name=acc", *TINY, "train.max_steps=2"]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=240, env=p2p_env(), cwd=ROOT)


def test_accelerate_launch_runs_the_same_entry(tmp_path):
    proc = accelerate_launch(tmp_path, "--multi_gpu")  # its torchrun launcher; gloo without CUDA
    assert proc.returncode == 0, proc.stderr[-3000:]
    rows = [json.loads(x) for x in (tmp_path / "acc" / "metrics.jsonl").read_text().splitlines()]
    assert rows[-1]["world_size"] == 2


def test_accelerate_cpu_launch_that_would_train_alone_is_refused(tmp_path):
    # `--cpu --num_processes 2` without an MPI hostfile starts one process: it must not train alone.
    proc = accelerate_launch(tmp_path, "--cpu")
    assert proc.returncode != 0 and "started a single process" in proc.stderr
    assert not (tmp_path / "acc" / "metrics.jsonl").exists()


def test_a_dead_rank_fails_the_job_promptly(tmp_path):
    # rank 1 dies (os._exit) at its third step; rank 0 must not hang in the next all-reduce
    t0 = time.time()
    proc = torchrun("tests/helpers/train_worker.py", tmp_path, "--die-at-step", "3", f"run.out_dir={tmp_path}",
                    "run.name=dead", *TINY, "train.max_steps=1000", "train.timeout_s=60", check=False, timeout=200)
    assert proc.returncode != 0
    assert time.time() - t0 < 90


def test_a_hung_rank_fails_the_job_after_train_timeout_s(tmp_path):
    # rank 1 stops making progress (alive, no exit) at its third step: only train.timeout_s can
    # end rank 0's wait in the next collective, and the user must be told what happened.
    timeout_s = 10
    log = tmp_path / "torchrun.log"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2", "--master-port", str(free_port()),
           "tests/helpers/train_worker.py", tmp_path, "--hang-at-step", "3", f"run.out_dir={tmp_path}", "run.name=hung",
           *TINY, "train.max_steps=1000", "train.log_every=1", f"train.timeout_s={timeout_s}"]
    with open(log, "w") as f:
        proc = subprocess.Popen(list(map(str, cmd)), stdout=f, stderr=subprocess.STDOUT, env=p2p_env(), cwd=ROOT)
    try:
        rows = tmp_path / "hung" / "metrics.jsonl"
        wait_for(lambda: rows.exists() and rows.read_text().count("\n") >= 2, what="two steps")
        t0 = time.time()  # rank 1 hangs in step 3 from about now
        line = wait_for(lambda: next((x for x in log.read_text().splitlines() if "p2p train: error" in x), None),
                        timeout=timeout_s + 60, what="rank 0's error line")
        took = time.time() - t0
        assert proc.wait(timeout=120) != 0  # torchrun then ends the stuck rank and fails
    finally:
        proc.kill()
    assert took < timeout_s + 20, f"rank 0 gave up after {took:.0f} s"
    assert "timed out" in line and f"train.timeout_s={timeout_s}" in line and "another process" in line, line


def test_syncbatch_on_cpu_falls_back_with_a_notice(tmp_path):
    proc = torchrun("-m", "p2p", "train", f"run.out_dir={tmp_path}", "run.name=sync", *TINY, "train.max_steps=2",
                    "model.norm=syncbatch")
    assert "model.norm=syncbatch needs CUDA" in proc.stderr
    rows = [json.loads(x) for x in (tmp_path / "sync" / "metrics.jsonl").read_text().splitlines()]
    assert rows[-1]["step"] == 2 and rows[-1]["world_size"] == 2
    # what ran is per-rank batch norm: the saved generator holds ordinary BatchNorm statistics
    ck = load_ckpt(tmp_path / "sync" / "checkpoints" / "last.pt")
    assert "down.1.norm.running_mean" in ck["generator"]


def test_two_ranks_with_multiscale_d_feature_matching_and_ema(tmp_path):
    torchrun("tests/helpers/train_worker.py", tmp_path, f"run.out_dir={tmp_path}", "run.name=hd", *TINY,
             "train.max_steps=4", "model.num_d=2", "model.n_layers_d=2", "loss.lambda_feat=10", "train.ema_decay=0.9")
    r0, r1 = load_ckpt(tmp_path / "rank0.pt"), load_ckpt(tmp_path / "rank1.pt")
    ck = load_ckpt(tmp_path / "hd" / "checkpoints" / "last.pt")
    assert "scales.1.model.0.weight" in ck["discriminator"]
    stats = ("running_mean", "running_var")
    for k, v in r0["G_ema"].items():
        if k.endswith(stats):
            # each rank's EMA carries its own G's statistics; the checkpoint their mean
            assert torch.equal(v, r0["G"][k]) and torch.equal(r1["G_ema"][k], r1["G"][k]), k
            torch.testing.assert_close(ck["generator_ema"][k], (v + r1["G_ema"][k]) / 2, rtol=1e-6, atol=1e-7)
        elif v.is_floating_point():
            # the average of weights that DDP keeps identical is identical on every rank, and saved as it is
            assert torch.equal(v, r1["G_ema"][k]) and torch.equal(ck["generator_ema"][k], v), k
    for net in ("G", "D"):
        for k in r0[net]:
            if not k.endswith(stats + ("num_batches_tracked",)):
                assert torch.equal(r0[net][k], r1[net][k]), f"{net}.{k} differs between ranks"
    moved = [k for k in r0["G"] if not k.endswith(stats) and not torch.equal(r0["G"][k], r0["G_ema"][k])]
    assert moved, "the EMA should lag behind G"
    rows = [json.loads(x) for x in (tmp_path / "hd" / "metrics.jsonl").read_text().splitlines()]
    assert rows[-1]["world_size"] == 2 and rows[-1]["G_feat"] > 0


@pytest.mark.parametrize("entry", ["cli", "job"])
def test_each_process_entry_leaves_its_process_group(tmp_path, entry):
    """A process that exits still holding its gloo group aborts now and then while the interpreter
    finalizes (SIGABRT: a finished 2-task Slurm job ended FAILED that way), so `p2p train` and the
    submitit job leave the group before they return; checked on both ranks."""
    args = [*TINY, "train.max_steps=2", f"run.out_dir={tmp_path}", f"run.name=leave-{entry}"]
    worker = "tests/helpers/entry_worker.py"
    if entry == "cli":
        torchrun(worker, tmp_path, "cli", *args)
    else:  # two tasks of one srun step on this host, as submitit starts them
        job_id = str(900000 + free_port() % 90000)
        procs = [subprocess.Popen([sys.executable, worker, str(tmp_path), "job", *args], cwd=ROOT,
                                  stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                                  env=p2p_env(SUBMITIT_EXECUTOR="slurm", SLURM_JOB_ID=job_id, SLURM_STEP_ID="0",
                                              SLURM_PROCID=str(rank), SLURM_LOCALID=str(rank), SLURM_NODEID="0",
                                              SLURM_NTASKS="2", SLURM_NTASKS_PER_NODE="2", SLURM_JOB_NUM_NODES="1",
                                              SLURM_JOB_NODELIST="localhost", SLURM_STEP_NODELIST="localhost"))
                 for rank in (0, 1)]
        outputs = [p.communicate(timeout=240)[0] for p in procs]
        assert [p.returncode for p in procs] == [0, 0], "\n".join(o[-2000:] for o in outputs)
    ended = [json.loads((tmp_path / f"rank{rank}.json").read_text()) for rank in (0, 1)]
    assert [r["code"] for r in ended] == ([0, 0] if entry == "cli" else [2, 2]), ended
    assert [r["group_alive"] for r in ended] == [False, False], ended
