"""README's glossary of `metrics.jsonl` and `val.jsonl` names every field the code can write, and
nothing else, so it cannot go stale: the fields come from the functions that build the rows
(read from their source, so a field that only some runs write, e.g. under DDP, fp16 or a
fallback, is found without running such a run) and from real calls of those functions on CPU."""

from __future__ import annotations

import ast
import inspect
import re
import textwrap
from pathlib import Path

import torch

from p2p.evaluation import RESULT_KEYS
from p2p.train import in_effect, meter, straggler
from p2p.train.in_effect import InEffect
from p2p.train.meter import LogInterval
from p2p.specs.losses import LOSSES

ROOT = Path(__file__).resolve().parents[1]
# Where a metrics row is built: the loop logs {**LogInterval.row(...), **InEffect.row()}
# (p2p.train.loop), and LogInterval.row adds the losses and p2p.train.straggler.slowest.
ROW_BUILDERS = (meter.LogInterval.row, in_effect.InEffect.row, straggler.slowest)


def glossary(kind: str) -> set[str]:
    """The field names in the first column of README's table after the line **`<kind>`**."""
    text = (ROOT / "README.md").read_text()
    m = re.search(rf"^\*\*`{re.escape(kind)}`\*\*.*?\n\n((?:\|.*\n)+)", text, flags=re.M)
    assert m, f"README has no glossary table for {kind}"
    names: set[str] = set()
    for row in m.group(1).splitlines()[2:]:
        names.update(re.findall(r"`([^`]+)`", row.split("|")[1]))
    return names


def keys_written(fn) -> set[str]:
    """String keys a function puts into dicts: dict literals, `d["k"] = ...` and `d.update(k=...)`."""
    tree = ast.parse(textwrap.dedent(inspect.getsource(fn)))
    keys: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Dict):
            keys.update(k.value for k in node.keys if isinstance(k, ast.Constant) and isinstance(k.value, str))
        elif isinstance(node, ast.Subscript) and isinstance(node.ctx, ast.Store) \
                and isinstance(node.slice, ast.Constant) and isinstance(node.slice.value, str):
            keys.add(node.slice.value)
        elif isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr == "update":
            keys.update(kw.arg for kw in node.keywords if kw.arg)
    return keys


def metrics_fields() -> set[str]:
    return set(LOSSES.names()).union(*(keys_written(fn) for fn in ROW_BUILDERS))


class _Scalers:  # what LogInterval.row reads of the networks: their gradient scalers
    def __init__(self, enabled: bool):
        self.scaler_g = self.scaler_d = torch.amp.GradScaler("cpu", enabled=enabled)


def real_rows() -> list[dict]:
    """Rows of the real row builders on CPU, with every optional part they have turned on that a
    CPU can turn on (MFU, loss scalers, compile counts, SyncBatchNorm, the JPEG decoder, a notice)."""
    rows = []
    for peak, scaled in ((None, False), (1e12, True)):
        interval = LogInterval(torch.device("cpu"), flops_per_image=1e9, peak=peak)
        interval.add({"G_GAN": torch.tensor(0.7), "G_L1": torch.tensor(12.0)})
        rows.append(interval.row(step=1, epoch=0, batch_size=2, world=1, lr=2e-4, nets=_Scalers(scaled)))
    effect = InEffect("fp32", False, compile=True, adam="fused", sync_batchnorm=False, jpeg_decoder="simplejpeg")
    effect.notices("a notice")
    rows.append(effect.row())
    rows.append(straggler.slowest([0.1, 0.2], [0.0, 0.1], [0.0, 0.0], ["a", "b"]))
    return rows


def test_metrics_glossary_names_every_field_the_code_writes():
    documented, written = glossary("metrics.jsonl"), metrics_fields()
    assert written - documented == set(), "fields missing from README's metrics.jsonl glossary"
    assert documented - written == set(), "README's metrics.jsonl glossary names fields no code writes"


def test_real_metrics_rows_hold_only_documented_fields():
    """The source reading above misses nothing the real row builders return."""
    documented = glossary("metrics.jsonl")
    for row in real_rows():
        assert set(row) - documented == set()
    assert {"mfu", "loss_scale_g", "loss_scale_d", "compile_graph_breaks", "sync_batchnorm", "jpeg_decoder",
            "notices", "slowest_lag"} <= set().union(*real_rows())


def test_val_glossary_names_every_field_validation_writes():
    # p2p.train.logger.RunLogger.log_eval writes {"step": step, **metrics} with p2p.evaluation's keys
    assert glossary("val.jsonl") == {"step", *RESULT_KEYS}


def test_source_reading_finds_each_way_of_writing_a_key():
    def row(x):
        out = {"a": 1}
        out["b"] = 2
        out["c"], out["d"] = 3, 4
        out.update(e=5)
        _ = x["not_written"]
        return out

    assert keys_written(row) == {"a", "b", "c", "d", "e"}
