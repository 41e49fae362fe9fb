"""`p2p export --format folder`: a model folder (safetensors weights, config.json, model card) that
the safetensors library reads as it is, that predicts the held-out photo with the same pixels
as the checkpoint it came from, and that p2p reads without unpickling anything: a tampered
folder (wrong shapes, a huge declared tensor, a pickle renamed model.safetensors, a non-finite
weight, a config out of the schema's bounds) is one line and exit 2."""

from __future__ import annotations

import json
import shutil
import struct

import numpy as np
import pytest
import torch
from PIL import Image

from helpers.runs import TINY, run_p2p
from p2p.cli import main
from p2p.data.folder import EMBEDDED_VAL, embedded_photo
from p2p.errors import CheckpointError
from p2p.model_folder import load_folder
from p2p.models import load_generator, read_checkpoint


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A tiny `make demo` run with an EMA generator and a validation, its checkpoint exported."""
    root = tmp_path_factory.mktemp("folder")
    run_p2p("train", f"run.out_dir={root}", "run.name=demo", *TINY, "train.max_steps=4", "train.eval_every=2",
            "train.ema_decay=0.9")
    ckpt = root / "demo" / "checkpoints" / "last.pt"
    assert main(["export", str(ckpt), "--format", "folder", "--out", str(root / "model")]) == 0
    photo = root / "held_out.png"
    Image.fromarray(embedded_photo(EMBEDDED_VAL[0])).save(photo)
    return ckpt, root / "model", photo


def _predict(model, photo, out) -> np.ndarray:
    assert main(["predict", str(model), str(photo), "--out", str(out), "--device", "cpu"]) == 0
    return np.asarray(Image.open(out / photo.with_suffix(".png").name))


def test_export_writes_weights_config_and_card(trained):
    from safetensors.torch import load_file

    ckpt, folder, _ = trained
    assert sorted(p.name for p in folder.iterdir()) == ["README.md", "config.json", "model.safetensors"]
    assert sorted(p.name for p in folder.parent.iterdir() if p.name.startswith(".")) == []  # no temporary folder
    # the ecosystem's own reader takes the file as it is; it holds the EMA generator, as every export
    tensors = load_file(str(folder / "model.safetensors"))
    ema = load_generator(ckpt).state_dict()
    raw = load_generator(ckpt, weights="raw").state_dict()
    assert tensors.keys() == ema.keys()
    assert all(torch.equal(tensors[k], ema[k]) for k in ema)
    assert not all(torch.equal(tensors[k], raw[k]) for k in raw)
    config = json.loads((folder / "config.json").read_text())
    assert config["format"] == "p2p-model" and config["weights"] == "ema" and config["p2p_version"]
    assert config["config"]["task"]["name"] == "colorize"
    assert config["config"]["model"] == {"generator": "unet", "ngf": 8, "norm": "batch", "dropout": False,
                                         "num_downs": 5}
    assert config["geometry"] == {"mode": "scale", "size": 40, "stride": 32}  # data.load_size=40 of TINY
    # the card: task, architecture, data, steps, the last validation by name, how to use it, no license
    card = (folder / "README.md").read_text()
    last = json.loads((ckpt.parents[1] / "val.jsonl").read_text().splitlines()[-1])
    assert last["step"] == 4
    for text in ("colorize", "U-Net generator, 5 levels", "source: `embedded`", "4 steps x global batch 4",
                 f"| psnr | {last['psnr']:.4g} |", f"| ssim | {last['ssim']:.4g} |", "at step 4",
                 "p2p predict model photo.jpg", 'p2p.load_model("model"', "License", "moving average"):
        assert text in card, text
    assert "\nlicense:" not in card  # left for the owner of the weights


def test_folder_predicts_the_held_out_photo_as_the_checkpoint(trained, tmp_path):
    ckpt, folder, photo = trained
    from_ckpt = _predict(ckpt, photo, tmp_path / "ckpt")
    from_folder = _predict(folder, photo, tmp_path / "folder")
    assert from_ckpt.shape == np.asarray(Image.open(photo)).shape
    np.testing.assert_array_equal(from_folder, from_ckpt)


@pytest.mark.slow
def test_eval_scores_the_folder_as_the_checkpoint(trained, tmp_path):
    ckpt, folder, _ = trained
    for name, model in (("ckpt", ckpt), ("folder", folder)):
        run_p2p("eval", model, "--data", "embedded", "--device", "cpu", "--json", tmp_path / f"{name}.json")
    assert json.loads((tmp_path / "folder.json").read_text()) == json.loads((tmp_path / "ckpt.json").read_text())


def test_load_folder_and_reexport_take_the_folder(trained, tmp_path):
    ckpt, folder, _ = trained
    G = load_folder(folder)[0]
    want = load_generator(ckpt).state_dict()
    assert all(torch.equal(v, want[k]) for k, v in G.state_dict().items())
    with pytest.raises(Exception, match="holds only the ema generator"):
        load_folder(folder, weights="raw")
    with pytest.raises(CheckpointError):  # the models layer reads checkpoints, not folders
        load_generator(folder)
    assert main(["export", str(folder), "--format", "folder", "--out", str(tmp_path / "again")]) == 0
    assert (tmp_path / "again" / "model.safetensors").read_bytes() == (folder / "model.safetensors").read_bytes()
    again = json.loads((tmp_path / "again" / "config.json").read_text())
    assert again["trained"] == json.loads((folder / "config.json").read_text())["trained"]
    assert main(["export", str(folder), "--format", "official", "--out", str(tmp_path / "latest_net_G.pth")]) == 0


def test_an_existing_non_empty_out_is_refused(trained, tmp_path, capsys):
    ckpt, _, _ = trained
    out = tmp_path / "model"
    out.mkdir()
    (out / "notes.txt").write_text("mine")
    assert main(["export", str(ckpt), "--format", "folder", "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "not an empty folder" in err, err
    assert [p.name for p in out.iterdir()] == ["notes.txt"]
    (out / "notes.txt").unlink()  # an empty folder is taken
    assert main(["export", str(ckpt), "--format", "folder", "--out", str(out)]) == 0
    assert (out / "model.safetensors").is_file()


# --------------------------------------------------------------------------- tampered folders


def _split(data: bytes) -> tuple[dict, bytes]:
    n = struct.unpack("<Q", data[:8])[0]
    return json.loads(data[8:8 + n]), data[8 + n:]


def _join(header: dict, body: bytes) -> bytes:
    raw = json.dumps(header).encode()
    return struct.pack("<Q", len(raw)) + raw + body


def _edit_header(edit):
    def tamper(folder):
        path = folder / "model.safetensors"
        header, body = _split(path.read_bytes())
        edit(header)
        path.write_bytes(_join(header, body))
    return tamper


def _first(header: dict) -> dict:
    return header[next(k for k in header if k.endswith("conv.weight"))]


def _resave(change):
    def tamper(folder):
        from safetensors.torch import load_file, save_file

        state = load_file(str(folder / "model.safetensors"))
        change(state)
        save_file(state, str(folder / "model.safetensors"))
    return tamper


def _config(change):
    def tamper(folder):
        doc = json.loads((folder / "config.json").read_text())
        change(doc)
        (folder / "config.json").write_text(json.dumps(doc))
    return tamper


class _Payload:
    """What an unpickler must never run: it would leave a file behind."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


def _pickle(folder):
    torch.save({"down.0.conv.weight": torch.zeros(1), "x": _Payload(folder.parent / "PWNED")},
               folder / "model.safetensors")


def _set(state, key, value):
    state[key] = value


TAMPERED = {
    "wrong_shape": (_resave(lambda s: _set(s, "down.0.conv.weight", torch.zeros(8, 1, 3, 3))), "shape [8, 1, 3, 3]"),
    "huge_declared_tensor": (_edit_header(lambda h: _first(h).update(shape=[2**40, 2**40, 4, 4])), "shape"),
    "offsets_beyond_the_file": (_edit_header(lambda h: _first(h).update(data_offsets=[0, 2**60])), "outside"),
    "huge_header_length": (lambda f: (f / "model.safetensors").write_bytes(struct.pack("<Q", 2**62) + b"{}"),
                           "header"),
    "pickle_renamed": (_pickle, "pickle"),
    "nan_weight": (_resave(lambda s: s["down.0.conv.weight"].view(-1).__setitem__(0, float("nan"))), "NaN"),
    "dtype_not_allowed": (_edit_header(lambda h: _first(h).update(dtype="I32")), "I32"),
    "truncated": (lambda f: (f / "model.safetensors").write_bytes((f / "model.safetensors").read_bytes()[:-100]),
                  "outside"),
    "header_not_json": (lambda f: (f / "model.safetensors").write_bytes(struct.pack("<Q", 4) + b"{no}" + b"0" * 8),
                        "not JSON"),
    "config_other_network": (_config(lambda d: d["config"]["model"].update(ngf=16)), "shape"),
    # refused by the schema's bounds (issue 22) before the network is even built on the meta device
    "config_huge_network": (_config(lambda d: d["config"]["model"].update(ngf=2**30)), "between 1 and 4096"),
    "config_large_network": (_config(lambda d: d["config"]["model"].update(ngf=2**12)), "shape"),
    "config_out_of_bounds": (_config(lambda d: d["config"]["model"].update(num_downs=40)), "between 2 and 12"),
    "config_unknown_key": (_config(lambda d: d["config"]["model"].update(lr=1)), "model.lr"),
    "config_geometry_disagrees": (_config(lambda d: d["geometry"].update(size=999)), "disagree"),
    "config_not_json": (lambda f: (f / "config.json").write_text("{"), "not valid JSON"),
    "no_weights": (lambda f: (f / "model.safetensors").unlink(), "not a p2p model folder"),
}


@pytest.mark.parametrize("case", TAMPERED, ids=TAMPERED.keys())
def test_a_tampered_folder_is_one_line_and_exit_2(trained, tmp_path, capsys, case):
    _, folder, photo = trained
    copy = tmp_path / "model"
    shutil.copytree(folder, copy)
    tamper, expected = TAMPERED[case]
    tamper(copy)
    for argv in (["predict", str(copy), str(photo), "--out", str(tmp_path / "out"), "--device", "cpu"],
                 ["export", str(copy), "--format", "folder", "--out", str(tmp_path / "again")]):
        assert main(argv) == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and expected in err, err
        assert "Traceback" not in err
    assert not (tmp_path / "PWNED").exists()  # nothing was unpickled
    assert not (tmp_path / "again").exists() and not list((tmp_path / "out").glob("*.png"))


@pytest.mark.slow
def test_a_tampered_folder_in_a_fresh_process(trained, tmp_path):
    """The same in a real `p2p predict`, for the exit status and stderr a shell sees."""
    _, folder, photo = trained
    copy = tmp_path / "model"
    shutil.copytree(folder, copy)
    _pickle(copy)
    proc = run_p2p("predict", copy, photo, "--out", tmp_path / "out", check=False)
    assert proc.returncode == 2 and proc.stderr.count("\n") == 1 and "pickle" in proc.stderr, proc.stderr
    assert not (tmp_path / "PWNED").exists()


def test_the_exported_weights_are_the_checkpoints_default(trained):
    """The folder holds what `p2p predict` runs from the checkpoint: the EMA generator."""
    ckpt, folder, _ = trained
    obj = read_checkpoint(ckpt)
    assert "generator_ema" in obj
    assert json.loads((folder / "config.json").read_text())["trained"]["ema_decay"] == 0.9


def test_a_folder_converted_to_half_precision_loads(trained, tmp_path):
    """Users shrink shared weights to float16; p2p reads them into its float32 network."""
    from safetensors.torch import load_file, save_file

    ckpt, folder, _ = trained
    copy = tmp_path / "model"
    shutil.copytree(folder, copy)
    state = load_file(str(copy / "model.safetensors"))
    save_file({k: v.half() if v.is_floating_point() else v for k, v in state.items()}, str(copy / "model.safetensors"))
    G, want = load_folder(copy)[0], load_generator(ckpt)
    for k, v in G.state_dict().items():
        assert v.dtype == want.state_dict()[k].dtype
        torch.testing.assert_close(v, want.state_dict()[k], atol=1e-2, rtol=1e-2)


def test_a_full_disk_leaves_no_folder_and_no_temporary(trained, tmp_path, capsys):
    """A real 1 MB tmpfs: the weights (about 1 MB) do not fit; one line, exit 1, nothing left."""
    from helpers.faults import small_disk
    from helpers.requirements import require_tmpfs

    require_tmpfs()
    ckpt, _, _ = trained
    with small_disk(tmp_path / "disk", 1) as disk:
        assert main(["export", str(ckpt), "--format", "folder", "--out", str(disk / "model")]) == 1
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and "no space left" in err, err
        assert list(disk.iterdir()) == []


@pytest.mark.parametrize("norm, dropout", [("instance", True), ("batch", False)])
def test_a_resnet_generator_round_trips(tmp_path, norm, dropout):
    """The official ResnetGenerator (p2p's layout is the official one): instance norm without
    weights, and dropout, which shifts its layers' names; the folder predicts as the weights do."""
    from p2p.models import build_generator, resnet_arch

    torch.manual_seed(0)
    G = build_generator(resnet_arch(3, 3, 2, 8, norm, dropout))
    for p in G.parameters():  # weights far from their init, so that any misplacement shows
        p.data.normal_(0, 0.2)
    torch.save(G.state_dict(), tmp_path / "latest_net_G.pth")
    assert main(["export", str(tmp_path / "latest_net_G.pth"), "--format", "folder", "--out", str(tmp_path / "m"),
                 "--task", "paired"]) == 0
    config = json.loads((tmp_path / "m" / "config.json").read_text())["config"]
    assert config["model"] == {"generator": "resnet", "ngf": 8, "norm": norm, "dropout": dropout, "n_blocks": 2}
    photo = tmp_path / "photo.png"
    Image.fromarray(embedded_photo("coffee")[:90, :130]).save(photo)
    want = _predict(tmp_path / "latest_net_G.pth", photo, tmp_path / "a")
    np.testing.assert_array_equal(_predict(tmp_path / "m", photo, tmp_path / "b"), want)


@pytest.mark.parametrize("kind", ["global", "local"])
def test_a_pix2pixhd_generator_round_trips(tmp_path, kind):
    """pix2pixHD's global generator and local enhancer (their own layout, issue 25): the folder's
    config rebuilds the same network (downsamplings, blocks, enhancers) and predicts as the
    weights do."""
    from p2p.models import build_generator, hd_arch

    torch.manual_seed(0)
    # 3 downsamplings: with 2 and instance norm a global generator is the official ResnetGenerator
    # (the same computation), which it is then loaded and exported as
    G = build_generator(hd_arch(kind, 3, 3, 4, 3, 1, 1, 1, "instance"))
    for p in G.parameters():
        p.data.normal_(0, 0.2)
    torch.save(G.state_dict(), tmp_path / "latest_net_G.pth")
    assert main(["export", str(tmp_path / "latest_net_G.pth"), "--format", "folder", "--out", str(tmp_path / "m"),
                 "--task", "paired"]) == 0
    model = json.loads((tmp_path / "m" / "config.json").read_text())["config"]["model"]
    assert (model["generator"], model["n_downsample_global"], model["n_blocks_global"]) == (kind, 3, 1)
    assert ("n_local_enhancers" in model) == (kind == "local")
    assert "pix2pixHD" in (tmp_path / "m" / "README.md").read_text()
    photo = tmp_path / "photo.png"
    Image.fromarray(embedded_photo("coffee")[:90, :130]).save(photo)
    want = _predict(tmp_path / "latest_net_G.pth", photo, tmp_path / "a")
    np.testing.assert_array_equal(_predict(tmp_path / "m", photo, tmp_path / "b"), want)
