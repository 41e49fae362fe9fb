"""`p2p bench scale` at 500 and 2,000 COCO-shaped images: the small version of the 1k/10k/100k
measurement in benchmarks/RESULTS.md. Checks that every figure is measured and plotted, that
the generated folder has COCO's awkward files (grayscale, truncated, empty, not an image) and
that what does not depend on the machine's load (manifest and index sizes) grows at most
linearly. Timings are recorded, not asserted: the machine is shared."""

from __future__ import annotations

import json

import pytest

from helpers.runs import run_p2p
from p2p.bench.scale import FIGURES, LINEAR_SLACK

pytestmark = pytest.mark.slow


def test_bench_scale_at_2k_images(tmp_path):
    out = tmp_path / "out"
    proc = run_p2p("bench", "scale", "--sizes", "500,2000", "--work", tmp_path / "work", "--out", out,
                   "--workers", "2", "--batch-size", "4", timeout=1500)
    payload = json.loads((out / "scale.json").read_text())
    rows = payload["results"]
    assert [r["n"] for r in rows] == [500, 2000]
    for r in rows:
        missing = [k for k in FIGURES if not r.get(k) or r[k] <= 0]
        assert not missing, f"N={r['n']}: {missing} not measured"
        assert r["found"] == r["n"] and r["workers_seen"] == 2
        assert r["train_images"] + r["val_images"] + r["skipped"] == r["n"]
    big = rows[-1]["skipped_counts"]
    assert {"empty", "not_image", "truncated", "grayscale"} <= set(big), big
    for key in ("manifest_bytes", "index_bytes"):  # machine-independent: exactly what was written
        assert payload["growth"][key][0] <= 1 + LINEAR_SLACK, (key, payload["growth"][key])
    assert sorted(p.name for p in out.glob("scale-*.png")) == sorted(f"scale-{k}.png" for k in FIGURES)
    assert (out / "scale.md").read_text().startswith("`p2p bench scale --sizes 500,2000")
    assert "how p2p grows with the dataset" in proc.stdout
