"""Faults: weights that are NaN or infinite (a run that diverged and saved them, or a file
edited and re-sealed). `p2p predict` wrote a black PNG and exited 0, `p2p eval` wrote `NaN`
into its JSON (not JSON); now every loader refuses non-finite weights with one line (exit 2),
and `p2p eval`'s JSON is always valid JSON (null where a score is not a number)."""

from __future__ import annotations

import json

import pytest
import torch
from PIL import Image

from helpers.payloads import tiny_payload
from p2p.cli import main as p2p_main
from p2p.config import Config
from p2p.errors import WeightsError
from p2p.models import load_discriminator, load_generator
from p2p.train.checkpoint import Checkpoints
from p2p.weights_check import check_finite


def _checkpoint(root, edit) -> str:
    """A sealed p2p checkpoint of a small model trained at 32 px, its weights edited by `edit`."""
    payload = tiny_payload(1)
    payload["config"] = Config().to_dict()
    payload["config"]["data"].update(image_size=32, load_size=40)
    payload["config"]["model"].update(num_downs=5, ngf=8, ndf=8)
    edit(payload)
    Checkpoints(root).save(payload, 1)
    return str(root / "checkpoints" / "last.pt")


def _poison(value: float, net: str = "generator"):
    def edit(payload):
        payload[net]["down.1.conv.weight" if net == "generator" else "model.0.weight"].view(-1)[7] = value
    return edit


@pytest.mark.parametrize("value", [float("nan"), float("inf"), -float("inf")])
def test_predict_and_eval_refuse_non_finite_weights_with_one_line(tmp_path, capsys, value):
    path = _checkpoint(tmp_path, _poison(value))
    image = tmp_path / "in.png"
    Image.new("RGB", (48, 40), (120, 80, 40)).save(image)
    out = tmp_path / "out"
    for argv in (["predict", path, str(image), "--out", str(out)],
                 ["eval", path, "--data", "embedded", "--json", str(tmp_path / "eval.json")]):
        assert p2p_main(argv) == 2
        err = capsys.readouterr().err
        lines = [ln for ln in err.splitlines() if ln.strip()]
        assert len(lines) == 1 and "NaN or infinite" in lines[0] and "'down.1.conv.weight'" in lines[0], err
        assert path in lines[0]
    assert not out.exists() and not (tmp_path / "eval.json").exists(), "nothing written"


def test_the_api_refuses_them_for_generators_and_discriminators(tmp_path):
    with pytest.raises(WeightsError, match="holds 1 NaN or infinite value"):
        load_generator(_checkpoint(tmp_path / "g", _poison(float("nan"))))
    with pytest.raises(WeightsError, match="'model.0.weight' holds 1 NaN"):
        load_discriminator(_checkpoint(tmp_path / "d", _poison(float("inf"), "discriminator")))
    check_finite({"steps": torch.tensor([1, 2]), "w": torch.ones(3)}, "x")  # integers and finite floats pass


def _huge(payload):
    # finite weights whose activations overflow: the outputs, and so every score, are NaN
    for k, v in payload["generator"].items():
        if v.is_floating_point() and k.endswith("weight"):
            v.mul_(1e30)


def test_eval_json_is_valid_json_with_null_where_a_score_is_not_a_number(tmp_path, capsys):
    path = _checkpoint(tmp_path, _huge)
    assert p2p_main(["eval", path, "--data", "embedded", "--json", str(tmp_path / "eval.json")]) == 0
    text = (tmp_path / "eval.json").read_text()
    metrics = json.loads(text, parse_constant=lambda c: pytest.fail(f"non-standard JSON constant {c}"))
    assert metrics["psnr"] is None and metrics["l1"] is None and metrics["count"] == 1
    capsys.readouterr()
    assert p2p_main(["eval", path, "--data", "embedded"]) == 0  # the metrics line on stdout, too
    last = capsys.readouterr().out.strip().splitlines()[-1]
    assert json.loads(last, parse_constant=lambda c: pytest.fail(c))["ssim"] is None
