"""The generator's moving average (train.ema_decay) end to end: saved in checkpoints, scored by
validation (and so choosing best.pt), used by `p2p predict` / `p2p eval` and by
`load_generator` unless the raw weights are asked for."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image

from p2p.errors import UsageError
from p2p.models import load_generator

from helpers.runs import TINY, load_ckpt, run_p2p

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def ema_run(tmp_path_factory):
    root = tmp_path_factory.mktemp("ema")
    # a short decay so that the average is far from the raw weights after a few steps
    run_p2p("train", f"run.out_dir={root}", "run.name=e", *TINY, "train.max_steps=6", "train.ema_decay=0.5",
            "train.eval_every=3", "train.ckpt_every=3", "optim.lr=0.002")
    return root, root / "e"


def test_checkpoint_holds_both_generators_and_load_generator_picks(ema_run):
    _, run = ema_run
    ck = load_ckpt(run / "checkpoints" / "last.pt")
    assert ck["generator_ema"].keys() == ck["generator"].keys()
    differ = [k for k in ck["generator"] if not torch.equal(ck["generator"][k], ck["generator_ema"][k])]
    assert len(differ) > len(ck["generator"]) // 2
    for weights, key in (("auto", "generator_ema"), ("ema", "generator_ema"), ("raw", "generator")):
        G = load_generator(run / "checkpoints" / "last.pt", weights=weights)
        assert all(torch.equal(v, ck[key][k]) for k, v in G.state_dict().items()), weights


def test_validation_and_best_pt_score_the_ema(ema_run):
    from p2p.config import load_config
    from p2p.data.held_out import held_out
    from p2p.evaluation import build_scorer, evaluate
    from p2p.inference import training_geometry
    from p2p.tasks import build_task

    _, run = ema_run
    cfg = load_config(run / "config.yaml")
    task, images = build_task(cfg.task), held_out(cfg, 0, 1)
    logged = [json.loads(x) for x in (run / "val.jsonl").read_text().splitlines()]
    assert [r["step"] for r in logged] == [3, 6]
    psnr = {}
    for weights in ("ema", "raw"):
        G = load_generator(run / "checkpoints" / "last.pt", weights=weights)
        psnr[weights] = evaluate(G, task, images, training_geometry(task, cfg.data.load_size), cfg.run.seed,
                                 torch.device("cpu"), build_scorer(cfg.eval))["psnr"]
    assert logged[-1]["psnr"] == pytest.approx(psnr["ema"], rel=1e-6)
    assert abs(psnr["ema"] - psnr["raw"]) > 1e-3  # so the assertion above tells them apart
    best = load_ckpt(run / "checkpoints" / "best.pt")
    assert best["step"] == max(logged, key=lambda r: r["psnr"])["step"]


def test_predict_and_eval_use_the_ema_unless_told_otherwise(ema_run, tmp_path):
    from p2p.data.folder import embedded_photo

    _, run = ema_run
    src = tmp_path / "in"
    src.mkdir()
    Image.fromarray(embedded_photo("chelsea")[:64, :96]).save(src / "cat.png")
    ckpt = run / "checkpoints" / "last.pt"
    outs = {}
    for name, flags in (("ema", []), ("raw", ["--raw-weights"])):
        proc = run_p2p("predict", ckpt, src, "--out", tmp_path / name, *flags)
        assert ("(EMA weights)" in proc.stdout) == (name == "ema")
        outs[name] = np.asarray(Image.open(tmp_path / name / "cat.png")).astype(int)
        run_p2p("eval", ckpt, "--data", src, "--json", tmp_path / f"{name}.json", *flags)
    assert np.abs(outs["ema"] - outs["raw"]).max() > 0
    scored = {n: json.loads((tmp_path / f"{n}.json").read_text()) for n in outs}
    meta = {n: json.loads((tmp_path / f"{n}.meta.json").read_text()) for n in outs}
    assert meta["ema"]["weights"] == "ema" and meta["raw"]["weights"] == "raw"
    assert scored["ema"]["psnr"] != scored["raw"]["psnr"]


def test_asking_for_an_ema_that_is_not_there_is_one_line(tmp_path):
    run_p2p("train", f"run.out_dir={tmp_path}", "run.name=plain", *TINY, "train.max_steps=2")
    ckpt = tmp_path / "plain" / "checkpoints" / "last.pt"
    with pytest.raises(UsageError, match="no EMA generator"):
        load_generator(ckpt, weights="ema")
    assert "generator_ema" not in load_ckpt(ckpt)
    assert load_generator(ckpt) is not None  # auto: the raw weights, the only ones there


def test_the_average_moves_at_rate_one_minus_decay_by_hand():
    from p2p.train.ema import GeneratorEMA

    G = torch.nn.Sequential(torch.nn.Linear(2, 1, bias=False), torch.nn.BatchNorm1d(1))
    w = G[0].weight
    with torch.no_grad():
        w.fill_(1.0)
    ema = GeneratorEMA(G, decay=0.9)  # starts as a copy: 1.0
    expected = 1.0
    for value in (3.0, -2.0, 5.0):
        with torch.no_grad():
            w.fill_(value)
            G[1].running_mean.fill_(value)
        ema.update()
        expected = 0.9 * expected + 0.1 * value  # by hand: 1.2, 0.88, 1.292
        assert ema.module[0].weight.flatten().tolist() == pytest.approx([expected] * 2, abs=1e-6)
        # BatchNorm statistics are copied, not averaged
        assert ema.module[1].running_mean.item() == value
    assert expected == pytest.approx(1.292)
