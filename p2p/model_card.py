"""The model card (README.md) of a model folder (p2p.model_folder), filled from what p2p knows:
the task, the architecture, the training data source and how much of it the run read, the steps,
the last validation before the exported weights (the run folder's val.jsonl, each metric by its
name), and how to use the folder from the command line and from Python. The license is left to
the owner of the weights: p2p cannot know the terms of the training data.

`training_record` gathers the facts (also written to config.json as `trained`); `model_card`
writes the text. Nothing here reads a file p2p does not already trust: the checkpoint through
`read_checkpoint` (weights_only, checksum), val.jsonl as JSON lines of numbers.
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path

from p2p.specs.tasks import TASKS

VAL_TAIL_BYTES = 4 * 2**20  # val.jsonl rows are short; the last ones are what the card needs
RECORD_TYPES = {"checkpoint": str, "source": str, "val_source": str, "steps": int, "epochs": int,
                "global_batch": int, "images_seen": int, "processes": int, "ema_decay": (int, float), "from": str}
NORM_TEXT = {"batch": "batch norm", "syncbatch": "batch norm", "instance": "instance norm", "none": "no norm"}


def _number(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def last_validation(run_dir: Path, step: int) -> dict | None:
    """The last val.jsonl row at or before `step` (the weights exported were trained that far):
    {"step": N, "metrics": {name: value}}; None when the run has none."""
    path = run_dir / "val.jsonl"
    if not path.is_file():
        return None
    with open(path, "rb") as f:
        f.seek(max(0, path.stat().st_size - VAL_TAIL_BYTES))
        lines = f.read().decode("utf-8", "replace").splitlines()
    best = None
    for line in lines:
        try:
            row = json.loads(line)
        except ValueError:  # the cut first line of the tail, or a damaged one
            continue
        if isinstance(row, dict) and _number(row.get("step")) and row["step"] <= step:
            if best is None or row["step"] >= best["step"]:
                best = {"step": int(row["step"]), "metrics": {str(k)[:40]: v for k, v in row.items()
                                                              if k not in ("step", "count") and _number(v)}}
                if _number(row.get("count")):
                    best["images"] = int(row["count"])
    return best


def training_record(source: str | os.PathLike, predictor) -> dict:
    """What is known of how the exported weights were trained: from a p2p checkpoint its config,
    position and best value plus its run folder's validation; from a model folder what it
    recorded; from official weights only that."""
    from p2p.model_folder import CONFIG_FILE, is_model_folder
    from p2p.models import read_checkpoint

    if is_model_folder(source):  # re-exported: what the folder recorded, of the types the card prints
        kept = json.loads((Path(source) / CONFIG_FILE).read_text()).get("trained")
        return _checked_record(kept) if isinstance(kept, dict) else {}
    if predictor.official:
        return {"from": "weights without a p2p training record (official pix2pix latest_net_G.pth or a bare state "
                        "dict)"}
    obj = read_checkpoint(source)
    tree = obj.get("config") or {}
    step, world = int(obj.get("step", 0)), int(obj.get("world_size", 1) or 1)
    batch = int((tree.get("train") or {}).get("batch_size", 0))
    data = tree.get("data") or {}
    record = {"checkpoint": Path(source).name, "source": str(data.get("source", "")),
              "val_source": str(data.get("val_source") or ""), "steps": step, "epochs": int(obj.get("epoch", 0)),
              "global_batch": batch * world, "images_seen": step * batch * world, "processes": world,
              "ema_decay": float((tree.get("train") or {}).get("ema_decay", 0.0))}
    if _number(obj.get("best")):
        record["best"] = {"metric": str(obj.get("best_metric", "psnr")), "value": obj["best"]}
    source = Path(source).resolve()
    if source.parent.name == "checkpoints":
        validation = last_validation(source.parent.parent, step)
        if validation:
            record["validation"] = validation
    return record


def _checked_record(kept: dict) -> dict:
    record = {k: v for k, v in kept.items() if k in RECORD_TYPES and isinstance(v, RECORD_TYPES[k])
              and not isinstance(v, bool)}
    best, v = kept.get("best"), kept.get("validation")
    if isinstance(best, dict) and isinstance(best.get("metric"), str) and _number(best.get("value")):
        record["best"] = {"metric": best["metric"][:40], "value": best["value"]}
    if isinstance(v, dict) and _number(v.get("step")) and isinstance(v.get("metrics"), dict):
        record["validation"] = {"step": int(v["step"]), "metrics": {str(k)[:40]: x for k, x in v["metrics"].items()
                                                                    if _number(x)}}
        if _number(v.get("images")):
            record["validation"]["images"] = int(v["images"])
    return record


def _architecture(model: dict, geometry: dict) -> str:
    """The generator's line, in the words of its spec (p2p.specs.generators)."""
    from p2p.specs.generators import GENERATORS

    words = {"norm": NORM_TEXT.get(model["norm"], model["norm"]), "stride": geometry["stride"],
             "drop": "dropout" if model["dropout"] else "no dropout"}
    return GENERATORS[model["generator"]].card.format(**{**model, **words})


def _data_lines(t: dict) -> list[str]:
    if "from" in t:
        return [f"- {t['from']}"]
    if not t:
        return ["- not recorded"]
    source = t.get("source", "")
    what = " (the photographs shipped inside scikit-image)" if source == "embedded" else ""
    lines = [f"- source: `{source}`{what}"]
    if t.get("val_source"):
        lines.append(f"- held out: `{t['val_source']}`")
    lines.append(f"- {t.get('steps', 0):,} steps x global batch {t.get('global_batch', 0)} = "
                 f"{t.get('images_seen', 0):,} training images read ({t.get('epochs', 0)} full epochs, "
                 f"{t.get('processes', 1)} process(es))")
    return lines


def _validation_lines(t: dict) -> list[str]:
    v = t.get("validation")
    lines = []
    if v and v.get("metrics"):
        images = f"{v['images']} held-out image(s)" if v.get("images") else "p2p's held-out images"
        lines += [f"Last validation before these weights, at step {v['step']}, on {images} through the same "
                  f"geometry as `p2p predict`:", "", "| metric | value |", "|---|---|"]
        lines += [f"| {k} | {value:.4g} |" for k, value in v["metrics"].items()]
    else:
        lines.append("No validation recorded with these weights.")
    if t.get("best"):
        lines += ["", f"Best {t['best']['metric']} of the run: {t['best']['value']:.4g}."]
    return lines


def model_card(doc: dict, name: str, parameters: int) -> str:
    """README.md of a model folder whose config.json is `doc`, uploaded as `name`."""
    cfg, t, g = doc["config"], doc.get("trained") or {}, doc["geometry"]
    task = cfg["task"]["name"]
    how = (f"short side scaled to {g['size']} px (the training scale), aspect ratio kept" if g["mode"] == "scale"
           else "each image at its own resolution")
    weights = (f"the moving average of the generator (train.ema_decay={t.get('ema_decay')})"
               if doc["weights"] == "ema" else "the trained generator")
    direction = f" ({cfg['task']['direction']})" if TASKS[task].paired else ""
    lines = [
        "---",
        "# license: not set. The owner of these weights chooses one before sharing (e.g. apache-2.0, mit,",
        "# cc-by-4.0), compatible with the terms of the training data.",
        "library_name: p2p",
        "pipeline_tag: image-to-image",
        "tags:", "- pix2pix", "- image-to-image", f"- {task}",
        "---", "",
        f"# {name}", "",
        f"A pix2pix generator trained with p2p{direction}: it {TASKS[task].summary}.", "",
        "## Model", "",
        "| | |", "|---|---|",
        f"| task | {task}{direction} |",
        f"| architecture | {_architecture(cfg['model'], g)} |",
        f"| parameters | {parameters:,} |",
        f"| channels | {doc['channels']['in']} in, {doc['channels']['out']} out |",
        f"| weights | {weights} |",
        f"| geometry | {how} (what `p2p predict` does by default) |",
        f"| files | model.safetensors (weights), config.json (rebuilds the network), p2p {doc['p2p_version']} |",
        "", "## Training data", "", *_data_lines(t), "",
        "## Validation", "", *_validation_lines(t), "",
        "## How to use", "",
        "With p2p installed, from the command line (outputs keep each input's size):", "",
        "```bash",
        f"p2p predict {name} photo.jpg --out outputs/",
        "```", "",
        "From Python (a PIL image, an H x W x 3 uint8 array or an N x 3 x H x W batch tensor):", "",
        "```python",
        "import p2p, PIL.Image",
        f'model = p2p.load_model("{name}", device="auto")',
        'model.predict(PIL.Image.open("photo.jpg")).save("out.png")',
        "```", "",
        "## License", "",
        "Not set: add a `license:` line to the header above before sharing these weights.", "",
    ]
    return "\n".join(lines)
