"""benchmarks/gpu-check.sh and its report (`p2p bench gpu-report`): the training check judges
loss curves and what the metrics rows say ran; the script keeps to its deadline, keeps what a
part cut at its limit measured, returns at most 8 small files whatever happens inside it, and
reports the parts that did not finish. The GPU figures themselves can only come from a GPU node."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import tarfile

import pytest

from helpers.runs import ROOT, TINY, p2p_env, run_p2p, wait_for
from p2p.bench.gpu_check import GRAPH_WARMUP, compare_losses, in_effect, summarize
from p2p.bench.gpu_check_files import (MAX_MEMBER, MAX_OUT_FILES, pytest_summary, read_parts, read_rows,
                                       write_archive)


@pytest.fixture(scope="module")
def eager_rows(tmp_path_factory) -> list[dict]:
    """The metrics rows of a real (CPU) training: 12 steps, a row every 2."""
    out = tmp_path_factory.mktemp("gpu_check_run")
    run_p2p("train", f"run.out_dir={out}", *TINY, "train.max_steps=12", "run.name=eager")
    return [json.loads(line) for line in (out / "eager" / "metrics.jsonl").read_text().splitlines()]


def test_losses_within_tolerance_pass_and_a_drift_fails(eager_rows):
    same = compare_losses(eager_rows, [dict(r) for r in eager_rows], window=4)
    assert same["passed"] and same["worst_deviation"]["G_L1"] == 0 and len(same["windows"]) == 3
    drifted = [dict(r, G_L1=r["G_L1"] * (1.2 if r["step"] > 8 else 1.0)) for r in eager_rows]
    result = compare_losses(eager_rows, drifted, window=4)
    assert not result["passed"] and result["worst_deviation"]["G_L1"] == pytest.approx(0.2)
    assert not compare_losses(eager_rows, eager_rows[:-2], window=4)["passed"]  # a run cut short


def graphed(rows: list[dict]) -> list[dict]:
    """Rows as a run with graphs in effect writes them: replays every step after the warm-up."""
    out, done = [], 0
    for r in rows:
        replays = max(0, r["step"] - GRAPH_WARMUP) - done
        done += replays
        out.append(dict(r, cuda_graphs=True, compiled=["G", "D", "device step"], graph_replays=replays))
    return out


def test_graphs_and_compile_in_effect_are_read_off_the_rows(eager_rows):
    assert not in_effect(eager_rows, 12)["passed"]  # CPU rows: no graphs, nothing compiled
    rows = graphed(eager_rows)
    assert in_effect(rows, 12)["passed"] and in_effect(rows, 12)["graph_replays"] == 12 - GRAPH_WARMUP
    failed = [dict(r) for r in rows]
    failed[2]["notices"] = ["CUDA graph capture failed at step call 4 (...); running eager steps from here on"]
    assert not in_effect(failed, 12)["passed"]
    fewer = [dict(r) for r in rows]
    fewer[-1]["graph_replays"] -= 1  # one step of the interval ran eagerly
    assert not in_effect(fewer, 12)["passed"]
    uncompiled = [dict(r) for r in rows]
    uncompiled[0]["compiled"] = []
    assert not in_effect(uncompiled, 12)["passed"]
    # the device step's own torch.compile is not G and D compiled (issue 21: process-wide counters
    # made `compiled` true in every GPU run)
    only_step = [dict(r, compiled=["device step"]) for r in rows]
    assert not in_effect(only_step, 12)["passed"] and in_effect(only_step, 12)["compiled"] == ["device step"]
    assert not in_effect([dict(r, compiled=True) for r in rows], 12)["passed"]  # a bare flag says nothing


def test_graph_warmup_is_the_trainers():
    from p2p.train.graphs import WARMUP_STEPS

    assert GRAPH_WARMUP == WARMUP_STEPS  # the report does not import torch, so it keeps its own copy


def test_pytest_report_counts_and_names_the_failures(tmp_path):
    (tmp_path / "test_x.py").write_text("import pytest\n\ndef test_ok():\n    pass\n\ndef test_bad():\n    assert 0\n\n"
                                        "def test_skip():\n    pytest.skip('no GPU')\n")
    subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", str(tmp_path / "test_x.py"),
                    "--junitxml", str(tmp_path / "r.xml"), "-o", "addopts="], cwd=tmp_path, capture_output=True)
    s = pytest_summary(tmp_path / "r.xml")
    assert (s["tests"], s["passed"], s["failures"], s["skipped"]) == (3, 1, 1, 1)
    assert s["failed_tests"] == ["test_x::test_bad"] and "no GPU" in s["skipped_tests"][0]
    assert pytest_summary(tmp_path / "missing.xml") is None


def test_pytest_cut_at_its_limit_still_counts_the_tests_that_ran(tmp_path):
    """SIGINT (what the check sends at pytest's limit) makes pytest write its JUnit file with the
    tests so far; a SIGKILL leaves only the -v log, whose per-test lines are read instead."""
    (tmp_path / "test_y.py").write_text("import time\n\ndef test_ok():\n    pass\n\ndef test_bad():\n    assert 0\n\n"
                                        "def test_slow():\n    time.sleep(60)\n")
    cmd = [sys.executable, "-m", "pytest", "-v", "-p", "no:cacheprovider", "-o", "addopts=", str(tmp_path / "test_y.py"),
           "--junitxml", str(tmp_path / "r.xml")]
    log = tmp_path / "pytest.log"
    with open(log, "w") as f:
        proc = subprocess.Popen(cmd, cwd=tmp_path, stdout=f, stderr=subprocess.STDOUT)
        wait_for(lambda: "test_bad FAILED" in log.read_text(), timeout=60, what="two tests reported")
        proc.send_signal(signal.SIGINT)
        proc.wait(timeout=60)
    s = pytest_summary(tmp_path / "r.xml", log)
    assert s["from"] == "junit" and s["failed_tests"] == ["test_y::test_bad"] and s["passed"] == 1
    (tmp_path / "r.xml").unlink()  # as after a SIGKILL: no JUnit file
    s = pytest_summary(tmp_path / "r.xml", log)
    assert s["from"].startswith("log") and (s["tests"], s["passed"], s["failures"]) == (2, 1, 1)
    assert s["failed_tests"] == [f"{tmp_path / 'test_y.py'}::test_bad"] or s["failed_tests"][0].endswith("::test_bad")


def test_parts_not_finished_are_named_and_a_cut_metrics_line_is_left_out(tmp_path):
    (tmp_path / "parts.tsv").write_text("install\t0\t1.0\t10\nshards\t124\t25.0\t25\ntrain-eager\t137\t55\t55\n")
    parts = {p["name"]: p["status"] for p in read_parts(tmp_path / "parts.tsv", [["install", 10], ["shards", 25],
                                                                                ["train-eager", 55], ["pytest", 60]])}
    assert parts["install"] == "ok" and parts["shards"] == "cut at its limit"
    assert parts["train-eager"].startswith("killed") and parts["pytest"].startswith("did not finish")
    (tmp_path / "m.jsonl").write_text('{"step": 2}\n{"step": 4}\n{"step": 6, "G_')
    assert read_rows(tmp_path / "m.jsonl") == [{"step": 2}, {"step": 4}]


def test_the_archive_keeps_logs_and_metrics_small_and_leaves_the_rest(tmp_path):
    work, out = tmp_path / "work", tmp_path / "out"
    (work / "logs").mkdir(parents=True)
    (work / "runs/eager/checkpoints").mkdir(parents=True)
    out.mkdir()
    (work / "logs/pytest.log").write_bytes(b"x" * (MAX_MEMBER + 1000) + b"\nthe end of the log\n")
    (work / "runs/eager/metrics.jsonl").write_text('{"step": 10}\n')
    (work / "runs/eager/checkpoints/last.pt").write_bytes(b"\0" * 4096)  # never sent back
    (work / "shards").mkdir()
    (work / "shards/train-000000.tar").write_bytes(b"\0" * 4096)
    got = write_archive(work, out)
    assert sorted(got["members"]) == ["logs/pytest.log", "runs/eager/metrics.jsonl"]
    with tarfile.open(out / "results.tar.gz") as tar:
        log = tar.extractfile("logs/pytest.log").read()
    assert log.endswith(b"the end of the log\n") and len(log) < MAX_MEMBER + 100 and b"cut" in log[:80]
    assert [p.name for p in out.iterdir()] == ["results.tar.gz"]


def test_subprocesses_keep_the_callers_pythonpath(tmp_path, monkeypatch):
    """What `pip install --target` put on PYTHONPATH (the check's wheels) is importable in the
    processes the tests start (issue 21: the nvjpeg submit test lost submitit that way)."""
    (tmp_path / "carried_package.py").write_text("NAME = 'carried'\n")
    monkeypatch.setenv("PYTHONPATH", str(tmp_path))
    env = p2p_env()
    assert env["PYTHONPATH"].split(os.pathsep)[0] == str(ROOT)
    proc = subprocess.run([sys.executable, "-c", "import carried_package, p2p; print(carried_package.NAME)"],
                          env=env, cwd=tmp_path.parent, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0 and proc.stdout.strip() == "carried", proc.stderr


def check(tmp_path, **env) -> tuple[list, dict]:
    """benchmarks/gpu-check.sh in stub mode: (command, environment) with a work folder in tmp_path."""
    wheels = tmp_path / "wheels"
    wheels.mkdir(exist_ok=True)
    cmd = ["bash", "benchmarks/gpu-check.sh", str(wheels), str(tmp_path / "out")]
    return cmd, p2p_env(P2P_GPU_CHECK_STUB="1", P2P_GPU_CHECK_WORK=str(tmp_path / "work"), PYTHON=sys.executable,
                        **env)


def text(path) -> str:
    return path.read_text() if path.is_file() else ""


def out_files(out) -> list[str]:
    return sorted(str(p.relative_to(out)) for p in out.rglob("*"))


@pytest.mark.slow
def test_the_check_keeps_its_deadline_and_reports_what_did_not_run(tmp_path):
    """A 6-second deadline: the first parts are cut at their marks, the rest are skipped, and the
    report still comes after the deadline, saying so, with exit 1."""
    cmd, env = check(tmp_path, P2P_GPU_CHECK_BUDGET_S="6")
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=300, env=env)
    out = tmp_path / "out"
    assert proc.returncode == 1, proc.stdout[-2000:] + proc.stderr[-2000:]
    parts = {p["name"]: p for p in read_parts(out / "parts.tsv")}
    assert list(parts) == ["install", "environment", "shards", "train-eager", "train-fast", "pytest", "lab", "step",
                           "data", "pytest-trainings", "memory"]
    # each part ran until its mark at most (how many got a few seconds depends on the machine)
    assert all(p["limit_s"] <= 6 and p["seconds"] <= max(p["limit_s"], 0) + 2 for p in parts.values())
    assert any(p["status"].startswith("skipped") for p in parts.values())
    result = json.loads((out / "gpu-check.json").read_text())
    assert not result["passed"] and result["training"]["eager"] == {"rows": 0}
    assert all(t["met"] is None for t in result["targets"])  # nothing measured, nothing guessed
    summary = (out / "summary.md").read_text()
    assert "NOT PASSED" in summary and "did not finish: " in summary and "pytest -m gpu" in summary
    assert out_files(out) == ["gpu-check.json", "parts.tsv", "results.tar.gz", "summary.md"]
    again = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=60, env=env)
    assert again.returncode == 2 and "not empty" in again.stderr  # never overwrites a previous check
    reread = run_p2p("bench", "gpu-report", out, "--work", tmp_path / "work", check=False)
    assert reread.returncode == 1 and "NOT PASSED" in reread.stdout and "did not finish: " in reread.stdout


@pytest.mark.slow
def test_rehearsal_a_hang_a_killed_pytest_and_the_runners_kill_still_return_the_verdict(tmp_path):
    """The issue's rehearsal at stub sizes: pytest killed 2 s in (as the out-of-memory killer
    would), lab hanging and deaf to SIGTERM and SIGINT, then the whole call killed from outside
    (the runner's own limit) while lab hangs. The output folder still holds at most 8 small
    files, a summary naming what did not finish, and the figures of the parts that finished."""
    cmd, env = check(tmp_path, P2P_GPU_CHECK_BUDGET_S="2000", P2P_GPU_CHECK_STEPS="4",
                     P2P_GPU_CHECK_PLANT="hang:lab kill:pytest",
                     P2P_GPU_CHECK_ONLY="install environment shards train-eager pytest lab")
    out = tmp_path / "out"
    proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            start_new_session=True)
    try:
        wait_for(lambda: "\npytest\t" in text(out / "parts.tsv"), timeout=240, what="the check to reach its hanging part")
        wait_for(lambda: "- pytest: killed" in text(out / "summary.md"), timeout=60, what="the summary after pytest")
    finally:
        os.killpg(proc.pid, signal.SIGKILL)  # the runner's hard limit: nothing after this runs
        proc.wait(timeout=60)
    files = out_files(out)
    assert len(files) <= MAX_OUT_FILES and files == ["gpu-check.json", "parts.tsv", "results.tar.gz", "summary.md"]
    assert all((out / f).stat().st_size < 16 * 2**20 for f in files)
    result = json.loads((out / "gpu-check.json").read_text())
    status = {p["name"]: p["status"] for p in result["parts"]}
    assert status["environment"] == "ok" and status["shards"] == "ok" and status["train-eager"] == "ok"
    assert status["pytest"].startswith("killed") and status["lab"].startswith("did not finish")
    assert status["train-fast"].startswith("not run")
    summary = (out / "summary.md").read_text()
    assert "did not finish: " in summary and "lab" in summary.splitlines()[0] and "pytest" in summary.splitlines()[0]
    eager = result["training"]["eager"]
    assert eager["rows"] == 2 and eager["last_step"] == 4 and eager["img_per_s"] > 0  # the figures that finished
    assert result["environment"]["torch"]
    with tarfile.open(out / "results.tar.gz") as tar:
        names = tar.getnames()
        tar.extractall(tmp_path / "back", filter="data")
    assert "runs/eager/metrics.jsonl" in names and "logs/train-eager.log" in names and "environment.json" in names
    # what came back is enough to judge again: the archive unpacked next to parts.tsv
    (tmp_path / "back" / "parts.tsv").write_text((out / "parts.tsv").read_text())
    again = summarize(tmp_path / "back")
    assert again["training"]["eager"] == eager and again["parts"] == result["parts"]


@pytest.mark.slow
def test_a_training_deaf_to_sigterm_is_killed_within_its_share_and_the_report_still_comes(tmp_path):
    """A training in a long compile acts on SIGTERM only after its step: planted here as a hang
    that ignores SIGTERM. It gets SIGTERM a grace before its mark and SIGKILL at its mark, so it
    costs only its own share, and the final report comes after the deadline."""
    cmd, env = check(tmp_path, P2P_GPU_CHECK_BUDGET_S="88", P2P_GPU_CHECK_PLANT="hang:train-eager",
                     P2P_GPU_CHECK_ONLY="install train-eager")
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=240, env=env)
    assert proc.returncode == 1, proc.stdout[-2000:] + proc.stderr[-2000:]
    parts = {p["name"]: p for p in read_parts(tmp_path / "out" / "parts.tsv")}
    eager = parts["train-eager"]
    assert eager["rc"] == 137 and eager["status"].startswith("killed")
    assert eager["seconds"] <= eager["limit_s"] + 2 and eager["limit_s"] <= 32  # its mark: 160/440 of 88 s
    summary = (tmp_path / "out" / "summary.md").read_text()
    assert "- train-eager: killed" in summary and "did not finish: " in summary
    assert "gpu-check: " in proc.stdout and "# p2p GPU check: NOT PASSED" in proc.stdout  # the final report ran


def make_wheel(folder, dist: str, module: str) -> None:
    """A minimal pure-Python wheel of `dist` holding `module`."""
    import zipfile

    info = f"{dist}-1.0.dist-info"
    with zipfile.ZipFile(folder / f"{dist}-1.0-py3-none-any.whl", "w") as z:
        z.writestr(f"{module}/__init__.py", "CARRIED = True\n")
        z.writestr(f"{info}/METADATA", f"Metadata-Version: 2.1\nName: {dist}\nVersion: 1.0\n")
        z.writestr(f"{info}/WHEEL", "Wheel-Version: 1.0\nGenerator: test\nRoot-Is-Purelib: true\nTag: py3-none-any\n")
        z.writestr(f"{info}/RECORD", "")


@pytest.mark.slow
def test_wheels_install_only_what_the_node_lacks_and_a_bad_one_is_reported(tmp_path):
    """The node's own packages are never shadowed (pytest here), a wheel the node lacks goes to
    WORK/site, and a wheel that cannot install is a line in the summary, not the end of the check."""
    cmd, env = check(tmp_path, P2P_GPU_CHECK_ONLY="install")
    wheels = tmp_path / "wheels"
    make_wheel(wheels, "carried_pkg", "carried_pkg")
    make_wheel(wheels, "pytest", "pytest")  # the node has pytest: kept, not installed over it
    (wheels / "broken_pkg-1.0-py3-none-any.whl").write_bytes(b"not a zip")
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=240, env=env)
    assert proc.returncode == 1, proc.stdout[-2000:] + proc.stderr[-2000:]
    site = tmp_path / "work" / "site"
    assert (site / "carried_pkg" / "__init__.py").is_file() and not (site / "pytest").exists()
    result = json.loads((tmp_path / "out" / "gpu-check.json").read_text())
    install = "\n".join(result["install"])
    assert "pytest: the node's own (kept)" in install and "installed: carried_pkg-1.0-py3-none-any.whl" in install
    assert "NOT installed: broken_pkg-1.0-py3-none-any.whl" in install
    assert {p["name"]: p["status"] for p in result["parts"]}["install"] == "failed (exit 1)"
    assert "NOT installed: broken_pkg" in (tmp_path / "out" / "summary.md").read_text()
