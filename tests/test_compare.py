"""`p2p compare` on two tiny real runs that differ in batch size: the curves PNG, a table whose
best and final values are the runs' own, labels from the differing config key, sample strips."""

from __future__ import annotations

import json

from PIL import Image

from helpers.runs import TINY, run_p2p


def test_compare_two_runs(tmp_path):
    """About 30 s on a loaded CPU: two 6-step trainings with validation and samples, then compare."""
    runs = []
    for batch in (2, 4):
        run_p2p("train", f"run.out_dir={tmp_path}", f"run.name=bs{batch}", *TINY, f"train.batch_size={batch}",
                "train.max_steps=6", "train.eval_every=2", "train.sample_every=3", "optim.lr=0.01")
        runs.append(tmp_path / f"bs{batch}")
    proc = run_p2p("compare", *runs, "--out", tmp_path / "cmp")
    out = tmp_path / "cmp"
    assert Image.open(out / "curves.png").size[0] > 500
    table = json.loads((out / "table.json").read_text())
    assert [r["run"] for r in table] == ["train.batch_size=2", "train.batch_size=4"]
    for row, run in zip(table, runs):
        val = [json.loads(x) for x in (run / "val.jsonl").read_text().splitlines()]
        best = max(val, key=lambda r: r["psnr"])
        assert (row["best_psnr"], row["best_psnr_step"]) == (best["psnr"], best["step"])
        assert row["best_ssim"] == max(r["ssim"] for r in val) and row["final_psnr"] == val[-1]["psnr"]
        assert row["final_step"] == 6 and row["global_batch"] == int(row["run"].split("=")[1])
        last = json.loads((run / "metrics.jsonl").read_text().splitlines()[-1])
        assert row["final_G_L1"] == last["G_L1"]
    assert "| train.batch_size=2 |" in (out / "table.md").read_text() and "train.batch_size=4" in proc.stdout
    for label in ("train.batch_size=2", "train.batch_size=4"):
        strip = Image.open(out / f"samples-{label}.png")
        grid = Image.open(runs[0] / "samples" / "step-00000003.png")
        assert strip.width >= 2 * grid.width  # steps 3 and 6, side by side
    bad = run_p2p("compare", tmp_path / "nothing", "--out", tmp_path / "x", check=False)
    assert bad.returncode == 2 and "not a run folder" in bad.stderr


def test_a_resumed_run_counts_each_step_once(tmp_path):
    """Steps logged twice (a run resumed from a checkpoint older than its last log row): the rows
    written after the resume are the run's; the abandoned ones count for neither best nor final."""
    import yaml

    from p2p.compare import compare
    from p2p.config import Config

    run = tmp_path / "r"
    (run / "samples").mkdir(parents=True)
    (run / "config.yaml").write_text(yaml.safe_dump(Config().to_dict()))
    steps_val = [(2, 20.0), (4, 30.0), (6, 31.0), (4, 21.0), (6, 22.0), (8, 23.0)]  # resumed at 2
    (run / "val.jsonl").write_text("".join(json.dumps({"step": s, "psnr": p, "ssim": 0.5}) + "\n"
                                           for s, p in steps_val))
    (run / "metrics.jsonl").write_text("".join(json.dumps({"step": s, "G_L1": float(s)}) + "\n"
                                               for s in (2, 4, 6, 4, 6, 8)))
    (row,) = compare([run], tmp_path / "cmp").rows
    assert (row["best_psnr"], row["best_psnr_step"]) == (23.0, 8) and row["final_psnr"] == 23.0
    assert row["final_step"] == 8 and row["final_G_L1"] == 8.0
