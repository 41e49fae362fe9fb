"""Label-map inputs (task.name=labels, pix2pixHD's Cityscapes/ADE20K use): a pix2pixHD-layout
folder -> `p2p shard --task labels` -> training -> `p2p predict`; the NEAREST resize, the
one-hot, pix2pixHD's instance edges, and the bad inputs, each one line and exit 2."""

from __future__ import annotations

import io
import tarfile
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from helpers.label_maps import IDS, make_layout, stripes  # noqa: F401
from p2p.cli import main as p2p_main

def members(tar_path: Path) -> dict[str, bytes]:
    with tarfile.open(tar_path) as tf:
        return {m.name: tf.extractfile(m).read() for m in tf.getmembers()}


def cli(capsys, *args) -> tuple[int, str]:
    """`p2p ARGS` through the command's own entry point; (exit code, stderr)."""
    capsys.readouterr()
    rc = p2p_main([str(a) for a in args])
    return rc, capsys.readouterr().err


# ---------------------------------------------------------------------------------------------
# the whole path


@pytest.mark.slow
def test_folder_to_shards_to_training_to_predict(tmp_path, capsys):
    """Shards hold a lossless PNG map (ids of the source only, pix2pixHD's edges of the resized
    instance map) and a JPEG photo per sample; a few steps of a tiny global generator train on
    them; predict turns label maps (+ instance maps) into RGB images of the maps' size."""
    from helpers.runs import run_p2p

    from p2p.data.label_maps import instance_edges, read_id_map, resize_nearest

    src = make_layout(tmp_path / "src")
    out = tmp_path / "shards"
    rc, err = cli(capsys, "shard", "--task", "labels", src, out, "--size", "32", "--workers", "1", "--label-nc", "8")
    assert rc == 0, err
    tars = sorted((out / "train").glob("*.tar"))
    got = {k: v for t in tars for k, v in members(t).items()}
    assert sorted(n.rsplit(".", 1)[1] for n in got) == ["jpg"] * 4 + ["json"] * 4 + ["png"] * 4
    key = "city_train_000001"
    png = got[f"{key}.png"]
    assert png.startswith(b"\x89PNG") and got[f"{key}.jpg"].startswith(b"\xff\xd8")
    a = np.asarray(Image.open(io.BytesIO(png)))
    label = read_id_map(src / "train_label" / f"{key}_gtFine_labelIds.png")
    inst = read_id_map(src / "train_inst" / f"{key}_gtFine_instanceIds.png")
    assert np.array_equal(a[..., 0], resize_nearest(label, (32, 32)))
    assert set(np.unique(a[..., 0])) <= set(IDS)
    assert np.array_equal(a[..., 1] == 255, instance_edges(resize_nearest(inst, (32, 32))))
    assert (a[..., 1] > 0).any() and not a[..., 2].any()

    runs = tmp_path / "runs"
    run_p2p("train", f"run.out_dir={runs}", "run.name=lab", "task.name=labels", "task.label_nc=8",
            "task.instance_boundaries=true", f"data.source={out}", "data.image_size=32", "data.load_size=32",
            "model.generator=global", "model.ngf=4", "model.ndf=4", "model.n_downsample_global=2",
            "model.n_blocks_global=1", "train.batch_size=2", "data.val_images=1", "data.workers=0",
            "train.log_every=1", "train.sample_every=0", "train.eval_every=3", "train.max_steps=3")
    ckpt = runs / "lab" / "checkpoints" / "last.pt"
    assert torch.load(ckpt, map_location="cpu", weights_only=True)["arch"]["generator"]["in_channels"] == 9

    pred = tmp_path / "pred"
    rc, err = cli(capsys, "predict", ckpt, src / "val_label", "--instances", src / "val_inst", "--out", pred)
    assert rc == 0, err
    (made,) = pred.iterdir()
    with Image.open(made) as im:
        assert im.mode == "RGB" and im.size == (40, 40)
    for data in (out, src):  # eval's held-out pairs: the val shards, and the folder's val_* maps
        rc, err = cli(capsys, "eval", ckpt, "--data", data, "--json", tmp_path / "eval.json")
        assert rc == 0, err
        assert '"count": 1' in (tmp_path / "eval.json").read_text()
    for fmt in ("onnx", "torchscript"):  # the label_nc + 1 channel generator leaves, checked against PyTorch
        rc, err = cli(capsys, "export", ckpt, "--format", fmt, "--out", tmp_path / f"g.{fmt}")
        assert rc == 0 and (tmp_path / f"g.{fmt}").stat().st_size > 0, err


# ---------------------------------------------------------------------------------------------
# resize, one-hot, edges


def test_nearest_resize_keeps_only_source_ids(tmp_path):
    """Every path that resizes a map (shard, the folder loader, the wds loader's other load size,
    predict) gives only ids of the source: a bilinear resize of the stripes invents others."""
    from torch.nn import functional as F

    from p2p.data.label_loaders import LabelSamples, decode_label_sample
    from p2p.data.label_maps import LabelFiles, load_a_half, resize_nearest

    ids = stripes(40)
    for size in (32, 17, 64):
        assert set(np.unique(resize_nearest(ids.astype(np.int32), (size, size)))) <= set(IDS)
    bilinear = np.asarray(Image.fromarray(ids).resize((32, 32), Image.BILINEAR))
    assert set(np.unique(bilinear)) - set(IDS)  # the stripes do catch a blending resize

    Image.fromarray(ids, "L").save(tmp_path / "m.png")
    Image.fromarray(np.zeros((40, 40, 3), np.uint8)).save(tmp_path / "p.png")
    assert set(np.unique(load_a_half(tmp_path / "m.png", size=(29, 29))[..., 0])) <= set(IDS)
    item = LabelFiles("m", tmp_path / "m.png", tmp_path / "p.png", None)
    sample = LabelSamples([item], 24, 0, False, 1 << 24, 8).load(0)
    assert set(np.unique(sample[:, :24, 0])) <= set(IDS)

    png, jpg = io.BytesIO(), io.BytesIO()
    Image.fromarray(np.dstack([ids, ids * 0, ids * 0]), "RGB").save(png, "PNG")
    Image.fromarray(np.zeros((40, 40, 3), np.uint8)).save(jpg, "JPEG")
    decoded = decode_label_sample((png.getvalue(), jpg.getvalue()), 24, 1 << 24)
    assert decoded.shape == (3, 24, 48) and set(decoded[0, :, :24].unique().tolist()) <= set(IDS)

    # predict: the model's input, made from a map shown at another scale, holds only the map's ids
    from p2p.config import load_config, with_values
    from p2p.inference import Geometry, predict
    from p2p.tasks import build_task

    class Spy(torch.nn.Module):
        stride = 1

        def forward(self, x):
            self.seen = x
            return torch.zeros((x.shape[0], 3, *x.shape[-2:]))

    task = build_task(with_values(load_config(), {"task.name": "labels", "task.label_nc": 8}).task)
    spy = Spy()
    a = torch.from_numpy(ids).float().div(255)[None, None].expand(1, 3, -1, -1) * torch.tensor([1.0, 0, 0])[:, None, None]
    predict(spy, task, a, Geometry("scale", 23))
    assert spy.seen.shape[-2:] == (23, 23) and torch.equal(spy.seen.sum(1), torch.ones(1, 23, 23))
    assert set(spy.seen.argmax(1).unique().tolist()) <= set(IDS)
    assert set(F.interpolate(a, size=(23, 23), mode="bilinear").mul(255).round().unique().tolist()) - set(IDS)


def test_one_hot_on_the_device_equals_f_one_hot():
    from torch.nn import functional as F

    from p2p.config import load_config, with_values
    from p2p.tasks import build_task

    cfg = with_values(load_config(), {"task.name": "labels", "task.label_nc": 11, "task.instance_boundaries": True})
    task = build_task(cfg.task)
    g = torch.Generator().manual_seed(0)
    a = torch.randint(0, 11, (3, 12, 12), generator=g, dtype=torch.uint8)
    edges = (torch.rand((3, 12, 12), generator=g) > 0.7).to(torch.uint8) * 255
    photo = torch.randint(0, 256, (3, 3, 12, 12), generator=g, dtype=torch.uint8)
    batch = torch.cat([torch.stack([a, edges, torch.zeros_like(a)], 1), photo], dim=-1)
    x, y = task.prepare(batch, 12, None, flip=False)
    assert x.shape == (3, 12, 12, 12) and task.in_channels == 12
    assert torch.equal(x[:, :11], F.one_hot(a.long(), 11).permute(0, 3, 1, 2).float())
    assert torch.equal(x[:, 11], (edges > 0).float())
    assert torch.equal(y, photo.float() / 255 * 2 - 1)
    # predict's input (the A half in [0, 1]) is encoded the same way
    assert torch.equal(task.model_input(batch[..., :12].float() / 255), x)


def edges_restated(inst: np.ndarray) -> np.ndarray:
    """pix2pixHD's get_edges said another way: a pixel is an edge when any of its 4-neighbours
    inside the image holds another instance id."""
    h, w = inst.shape
    out = np.zeros((h, w), dtype=bool)
    for y in range(h):
        for x in range(w):
            for dy, dx in ((0, -1), (0, 1), (-1, 0), (1, 0)):
                yy, xx = y + dy, x + dx
                if 0 <= yy < h and 0 <= xx < w and inst[yy, xx] != inst[y, x]:
                    out[y, x] = True
    return out


def test_edges_equal_a_restatement_of_pix2pixhd_get_edges():
    from p2p.data.label_maps import instance_edges

    rng = np.random.default_rng(1)
    for shape in ((9, 13), (1, 7), (6, 1), (16, 16)):
        blocky = rng.integers(0, 3, (shape[0] // 2 + 1, shape[1] // 2 + 1)).repeat(2, 0).repeat(2, 1)
        for inst in (rng.integers(0, 4, shape) * 1000 + 26001, blocky[:shape[0], :shape[1]]):
            assert np.array_equal(instance_edges(inst), edges_restated(inst)), inst


# ---------------------------------------------------------------------------------------------
# bad inputs: one line, exit 2


def one_line(err: str) -> str:
    lines = [ln for ln in err.strip().splitlines() if ln.strip()]
    assert len(lines) == 1, err
    return lines[0]


@pytest.fixture
def model_file(tmp_path):
    """A labels checkpoint (label_nc 8, no boundaries), saved untrained: predict's inputs are the point."""
    from p2p.config import load_config, with_values
    from p2p.models import arch_dict
    from p2p.tasks import build_task
    from p2p.checkpoint_file import sealed
    from p2p.train.nets import architectures, build_networks

    cfg = with_values(load_config(), {"task.name": "labels", "task.label_nc": 8, "model.generator": "global",
                                      "model.ngf": 4, "model.n_downsample_global": 2, "model.n_blocks_global": 1,
                                      "data.load_size": 32, "data.image_size": 32})
    task = build_task(cfg.task)
    G, _ = build_networks(cfg, task)
    path = tmp_path / "last.pt"
    torch.save(sealed({"format": "p2p", "version": 2, "arch": arch_dict(*architectures(cfg, task)),
                       "generator": G.state_dict(), "config": cfg.to_dict(), "step": 0}), path)
    return path


@pytest.mark.parametrize("bad", ["rgb", "id", "jpeg"])
def test_bad_label_maps_at_predict_are_one_line_and_exit_2(tmp_path, capsys, model_file, bad):
    m = tmp_path / ("m.jpg" if bad == "jpeg" else "m.png")
    if bad == "rgb":
        Image.fromarray(np.zeros((40, 40, 3), np.uint8)).save(m)
    else:
        Image.fromarray(np.full((40, 40), 8 if bad == "id" else 1, np.uint8), "L").save(m)
    rc, err = cli(capsys, "predict", model_file, m, "--out", tmp_path / "pred")
    line = one_line(err)
    assert rc == 2 and str(m) in line
    assert {"rgb": "colour image given as a label map", "id": "class id 8, outside 0..7",
            "jpeg": "must be a PNG"}[bad] in line
    assert not (tmp_path / "pred").exists() or not any((tmp_path / "pred").iterdir())


def test_ids_beyond_label_nc_stop_training_before_the_device(tmp_path, capsys):
    """Shards made without --label-nc store id 9; training with task.label_nc=8 stops at the
    first batch with one line naming the sample (an id >= label_nc would be a device-side assert
    on a GPU), from shards and from the folder alike; so does an RGB map in the folder."""
    src = make_layout(tmp_path / "src", n_train=2, instances=False)
    label = sorted((src / "train_label").iterdir())[1]
    Image.fromarray(np.full((40, 40), 9, np.uint8), "L").save(label)
    rc, err = cli(capsys, "shard", "--task", "labels", src, tmp_path / "out", "--size", "32", "--workers", "1")
    assert rc == 0, err
    common = ["task.name=labels", "task.label_nc=8", "data.image_size=32", "data.load_size=32",
              "model.generator=global", "model.ngf=4", "model.ndf=4", "model.n_downsample_global=1",
              "model.n_blocks_global=1", "train.batch_size=2", "data.workers=0", "train.max_steps=1",
              "train.sample_every=0", "train.eval_every=0", f"run.out_dir={tmp_path / 'runs'}"]
    for source, name in ((tmp_path / "out", "shards"), (src, "folder")):
        rc, err = cli(capsys, "train", *common, f"data.source={source}", f"run.name={name}")
        assert rc == 2 and "class id 9, outside 0..7" in one_line(_errors(err)), err
    Image.fromarray(np.zeros((40, 40, 3), np.uint8)).save(label)
    rc, err = cli(capsys, "train", *common, f"data.source={src}", "run.name=rgb", "data.workers=1")
    assert rc == 2 and "colour image given as a label map" in one_line(_errors(err)) and label.name in _errors(err)


def _errors(err: str) -> str:
    """The error lines of a training's stderr (its start-up line and notices set aside)."""
    return "\n".join(ln for ln in err.splitlines() if ": error:" in ln)


def test_dali_and_nvjpeg_refuse_labels(tmp_path, capsys):
    src = make_layout(tmp_path / "src", n_train=2, instances=False)
    assert cli(capsys, "shard", "--task", "labels", src, tmp_path / "out", "--size", "16", "--workers", "1")[0] == 0
    from p2p.config import load_config, with_values
    from p2p.data import build_loader
    from p2p.errors import UsageError

    for backend in ("dali", "nvjpeg"):
        cfg = with_values(load_config(), {"task.name": "labels", "data.source": str(tmp_path / "out"),
                                          "data.backend": backend})
        with pytest.raises(UsageError, match=f"data.backend={backend} .* use data.backend=wds"):
            build_loader(cfg, "train")


def test_bad_label_maps_at_shard_time_are_skipped_and_nothing_usable_exits_2(tmp_path, capsys):
    """An RGB image as the map, ids >= --label-nc, a map unlike its photo in size: each a skip
    with its reason in the manifest; a folder of nothing else exits 2 with one line."""
    import json

    src = make_layout(tmp_path / "src", n_train=3, instances=False)
    labels = sorted((src / "train_label").iterdir())
    Image.fromarray(np.zeros((40, 40, 3), np.uint8)).save(labels[0])  # an RGB "map"
    Image.fromarray(np.full((40, 40), 9, np.uint8), "L").save(labels[1])  # id 9 >= 8
    Image.fromarray(np.zeros((30, 40), np.uint8), "L").save(labels[2])  # 40x30, its photo 40x40
    for p in (src / "val_label").iterdir():
        Image.fromarray(np.zeros((40, 40, 3), np.uint8)).save(p)
    rc, err = cli(capsys, "shard", "--task", "labels", src, tmp_path / "out", "--size", "16", "--label-nc", "8",
                  "--workers", "1")
    assert rc == 2 and "no usable images" in one_line(err)
    reasons = {r["path"].split("/")[-1]: r["reason"] for r in json.loads((tmp_path / "out" / "manifest.json").read_text())["skipped"]}
    assert reasons[labels[0].name] == "label_not_ids"
    assert reasons[labels[1].name] == "label_out_of_range"
    assert reasons[labels[2].name] == "size_mismatch"


def test_label_shards_and_other_shards_are_not_mixed_up(tmp_path, capsys):
    from p2p.config import load_config, with_values
    from p2p.data import build_loader
    from p2p.errors import UsageError

    src = make_layout(tmp_path / "src", n_train=2, instances=False)
    assert cli(capsys, "shard", "--task", "labels", src, tmp_path / "out", "--size", "16", "--workers", "1")[0] == 0
    for task in ("colorize", "paired"):
        cfg = with_values(load_config(), {"task.name": task, "data.source": str(tmp_path / "out"), "data.backend": "wds"})
        with pytest.raises(UsageError, match="holds label maps .* set task.name=labels"):
            build_loader(cfg, "train")
    photos = tmp_path / "photos"
    photos.mkdir()
    for i in range(3):
        Image.fromarray(np.random.default_rng(i).integers(0, 255, (32, 32, 3), dtype=np.uint8)).save(photos / f"{i}.jpg")
    assert cli(capsys, "shard", photos, tmp_path / "plain", "--size", "16", "--workers", "1", "--val-fraction", "0")[0] == 0
    cfg = with_values(load_config(), {"task.name": "labels", "data.source": str(tmp_path / "plain")})
    with pytest.raises(UsageError, match="task.name=labels needs label shards"):
        build_loader(cfg, "train")


def test_predict_takes_boundaries_at_the_scale_the_model_sees(tmp_path):
    """`p2p predict --instances`: after predict's own NEAREST resize to the model's size, the
    boundary channel is pix2pixHD's edges of the instance map resized to that size (as its test
    resizes to loadSize, then takes edges), not edges of the full-size map shrunk."""
    from p2p.config import load_config, with_values
    from p2p.inference import Geometry, resize, scaled_size
    from p2p.label_task import instance_maps, label_input
    from p2p.data.label_maps import instance_edges, resize_nearest
    from p2p.tasks import build_task

    task = build_task(with_values(load_config(), {"task.name": "labels", "task.label_nc": 8,
                                                  "task.instance_boundaries": True}).task)
    rng = np.random.default_rng(0)
    (tmp_path / "inst").mkdir()
    for h, w, s in ((40, 40, 23), (64, 48, 20), (37, 53, 11), (30, 30, 30)):
        blocks = rng.integers(0, 3, (h // 3 + 1, w // 3 + 1)).repeat(3, 0).repeat(3, 1)[:h, :w]
        inst = (blocks * 1000 + 26001).astype(np.uint16)
        Image.fromarray(rng.integers(0, 8, (h, w)).astype(np.uint8), "L").save(tmp_path / "m_gtFine_labelIds.png")
        Image.fromarray(inst).save(tmp_path / "inst" / "m_gtFine_instanceIds.png")
        a = label_input(tmp_path / "m_gtFine_labelIds.png", instance_maps(str(tmp_path / "inst"), task),
                        Geometry("scale", s), task, 1 << 24)
        sh, sw = scaled_size(h, w, s)
        seen = resize(a, (sh, sw), "nearest-exact")[0, 1].numpy() > 0.5
        assert np.array_equal(seen, instance_edges(resize_nearest(inst.astype(np.int32), (sw, sh)))), (h, w, s)
