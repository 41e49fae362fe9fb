"""Fault: a run.name (or a sweep element's name) that leaves run.out_dir. `..` made the parent
folder the run folder (its config.yaml overwritten, its metrics.jsonl appended to), `../../x` and
absolute names wrote anywhere, `''` and `.` made out_dir itself the run, and `p2p submit
--dry-run run.name=../../../../etc/cron.d` reported /etc/cron.d as the run folder. Every entry
(train, submit and its dry run, sweeps, bench) resolves the folder through p2p.run_folder: one
line, exit 2, nothing written."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from helpers.runs import TINY, run_p2p
from p2p.errors import UsageError
from p2p.run_folder import run_folder

ESCAPING = ["..", ".", "", "../../x", "/tmp/p2p-abs-run", "a/b", "a\\b", "x\n", "a\x00b", "-rf", ".hidden",
            "x" * 201]


@pytest.mark.parametrize("name", ESCAPING)
def test_names_that_are_not_one_safe_folder_are_refused(tmp_path, name):
    with pytest.raises(UsageError) as e:
        run_folder(tmp_path / "runs", name)
    assert "\n" not in str(e.value) and "run.name" in str(e.value)
    assert not (tmp_path / "runs").exists()


def test_a_symlink_out_of_out_dir_is_refused_and_one_inside_is_not(tmp_path):
    out = tmp_path / "runs"
    (out / "real").mkdir(parents=True)
    (out / "away").symlink_to(tmp_path)  # resolves to out_dir's parent
    (out / "self").symlink_to(out)  # out_dir itself
    (out / "alias").symlink_to(out / "real")
    for name in ("away", "self"):
        with pytest.raises(UsageError, match="outside run.out_dir"):
            run_folder(out, name)
    assert run_folder(out, "alias") == out / "alias"
    assert run_folder(out, "new-run_1.lr=0.1+x@y") == out / "new-run_1.lr=0.1+x@y"
    assert run_folder("", "r") == Path("r")  # out_dir '' is the current folder, as before


def _one_line_exit_2(proc) -> str:
    assert proc.returncode == 2, proc.stdout + proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in proc.stderr, proc.stderr
    return lines[0]


def test_train_with_dot_dot_leaves_the_parent_folder_alone(tmp_path):
    out = tmp_path / "runs"
    out.mkdir()
    (tmp_path / "config.yaml").write_text("mine\n")
    (tmp_path / "metrics.jsonl").write_text('{"step": 1}\n')
    for name in ("..", "../../x", ".", str(tmp_path / "abs")):
        line = _one_line_exit_2(run_p2p("train", *TINY, "train.max_steps=2", f"run.out_dir={out}", f"run.name={name}",
                                        check=False))
        assert line.startswith("p2p train: error: run.name="), line
    assert (tmp_path / "config.yaml").read_text() == "mine\n"
    assert (tmp_path / "metrics.jsonl").read_text() == '{"step": 1}\n'
    assert sorted(os.listdir(tmp_path)) == ["config.yaml", "metrics.jsonl", "runs"] and not os.listdir(out)


def test_train_into_a_symlink_that_leaves_out_dir_is_refused(tmp_path):
    out, outside = tmp_path / "runs", tmp_path / "outside"
    out.mkdir()
    outside.mkdir()
    (out / "linked").symlink_to(outside)
    line = _one_line_exit_2(run_p2p("train", *TINY, "train.max_steps=2", f"run.out_dir={out}", "run.name=linked",
                                    check=False))
    assert "outside run.out_dir" in line and not os.listdir(outside)


def test_submit_dry_run_and_sweeps_refuse_an_escaping_name(tmp_path):
    out = tmp_path / "runs"
    for extra in (["run.name=../../../../etc/cron.d"], ["run.name=.."], ["run.name=..", "--sweep", "optim.lr=0.1,0.2"],
                  ["run.name=", "--sweep", "optim.lr=0.1,0.2"]):
        proc = run_p2p("submit", "--dry-run", *TINY, f"run.out_dir={out}", *extra, check=False)
        line = _one_line_exit_2(proc)
        assert line.startswith("p2p submit: error: run.name="), line
        assert "cron.d" not in proc.stdout and not out.exists()


def test_a_sweep_value_cannot_leave_out_dir(tmp_path):
    """A sweep value with separators in it names a folder inside out_dir, never outside."""
    out = tmp_path / "runs"
    proc = run_p2p("submit", "--dry-run", *TINY, f"run.out_dir={out}", "run.name=sw", "--sweep",
                   "eval.fid_ref=../../../../etc/x.npz,/etc/y.npz", check=False)
    assert proc.returncode == 0, proc.stderr
    folders = [Path(ln.split("run folder ", 1)[1].strip()) for ln in proc.stderr.splitlines() if "run folder " in ln]
    assert len(folders) == 2 and all(f.parent == out for f in folders), proc.stderr


def test_bench_profile_refuses_an_escaping_name(tmp_path):
    line = _one_line_exit_2(run_p2p("bench", "profile", *TINY, f"run.out_dir={tmp_path}", "run.name=../x", "--quick",
                                    "--out", tmp_path / "prof", check=False))
    assert line.startswith("p2p bench: error: run.name="), line
