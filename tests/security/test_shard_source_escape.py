"""Nothing outside a shard folder (or outside `p2p shard`'s SRC) is read: a symlink in SRC that
leads out of it is recorded as skipped, not followed (a link to /etc put 1,125 /etc paths into
the manifest); a manifest entry `file: ../../../etc/hostname`, or an absolute path, is refused
in one line before anything opens it."""

from __future__ import annotations

import json
import shutil

import pytest

from helpers.hostile_files import jpeg_bytes, photo_rgb, run_cli, tiny_generator_file
from p2p.config import load_config, with_values
from p2p.data.held_out import held_out
from p2p.data.shards import make_shards
from p2p.errors import UsageError


def _photos(folder, n, seed=0):
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(n):
        (folder / f"p{seed + i}.jpg").write_bytes(jpeg_bytes(photo_rgb(48, 64, seed=seed + i)))


def test_shard_does_not_follow_links_out_of_src(tmp_path):
    src, outside = tmp_path / "src", tmp_path / "outside"
    _photos(src, 3)
    _photos(src / "sub", 1, seed=10)
    _photos(outside, 2, seed=20)
    (src / "elsewhere").symlink_to(outside, target_is_directory=True)
    (src / "etc").symlink_to("/etc", target_is_directory=True)
    (src / "stolen.jpg").symlink_to(outside / "p20.jpg")
    (src / "inside_link").symlink_to(src / "sub", target_is_directory=True)  # inside SRC: fine
    m = make_shards(src, tmp_path / "out", size=32, val_fraction=0.0, workers=1)
    assert m["train"]["count"] == 3 + 1  # p0-p2 and sub/p10 (inside_link is sub again: read once)
    reasons = {s["path"]: s["reason"] for s in m["skipped"]}
    assert {reasons[k] for k in ("elsewhere", "etc", "stolen.jpg")} == {"outside_source"}
    assert not any(s["path"].startswith("/") or "etc/" in s["path"] for s in m["skipped"])
    code, out, err = run_cli("shard", src, tmp_path / "out2", "--size", "32", "--workers", "1")
    assert code == 0 and "Traceback" not in err, err
    assert '"/etc' not in (tmp_path / "out2" / "manifest.json").read_text()


@pytest.fixture(scope="module")
def shards(tmp_path_factory):
    root = tmp_path_factory.mktemp("escape")
    _photos(root / "src", 6)
    make_shards(root / "src", root / "out", size=40, val_fraction=0.4, workers=1)
    return root / "out"


@pytest.mark.parametrize("name", ["../../../etc/hostname", "/etc/hostname", "../train/shard-000000.tar", "..",
                                  "a/../../x.tar", ""])
@pytest.mark.parametrize("key", ["file", "index"])
def test_manifest_names_that_leave_the_split_folder_are_refused(name, key, shards, tmp_path):
    out = tmp_path / "shards"
    shutil.copytree(shards, out)
    m = json.loads((out / "manifest.json").read_text())
    m["val"]["shards"][0][key] = name
    (out / "manifest.json").write_text(json.dumps(m))
    cfg = with_values(load_config(), {"data.source": str(out)})
    with pytest.raises(UsageError, match="not a file name inside the split folder"):
        held_out(cfg)
    ckpt = tiny_generator_file(tmp_path / "g.pth")
    code, _, err = run_cli("eval", ckpt, "--data", out, "--device", "cpu")
    assert code == 2 and len(err.strip().splitlines()) == 1 and "Traceback" not in err, err
