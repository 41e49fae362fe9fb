"""Options that make p2p behave exactly like the official pix2pix where a user asks for it: the
official per-epoch learning-rate rule, and the official test-time behaviour of `test.py`
without --eval (`p2p predict --train-mode`), here with official resnet_9blocks weights."""

import numpy as np
import pytest
import torch
from PIL import Image

from p2p.config import load_config
from p2p.train.schedule import lr_factor, official_factor

from helpers.official_layout import OfficialResnet, randomize
from helpers.runs import TINY, run_p2p


def official_lambda_rule(epoch, epoch_count=1, n_epochs=100, n_epochs_decay=100):
    """The official scheduler's lambda (networks.get_scheduler, lr_policy='linear'), restated."""
    return 1.0 - max(0, epoch + epoch_count - n_epochs) / float(n_epochs_decay + 1)


def test_official_factor_is_the_official_lambda_rule():
    # The official LambdaLR stepped once at the end of every epoch: during the e-th (0-based)
    # epoch the scheduler has been stepped e times, so the factor is lambda(e).
    for e in range(200):
        assert official_factor(e, 100, 100) == official_lambda_rule(e)
    assert official_factor(99, 100, 100) == 1.0 and official_factor(100, 100, 100) == 1 - 1 / 101
    assert official_factor(199, 100, 100) == pytest.approx(1 / 101)  # the last epoch: never zero
    assert official_factor(500, 100, 100) == official_factor(199, 100, 100)  # held past the end
    cfg = load_config(None, ["optim.lr_policy=official", "optim.n_epochs=2", "optim.n_epochs_decay=3"])
    assert [lr_factor(0, cfg, e) for e in range(6)] == [1.0, 1.0, 0.75, 0.5, 0.25, 0.25]
    with pytest.raises(ValueError, match="epoch"):
        lr_factor(0, cfg)


def test_official_policy_steps_the_lr_once_per_data_epoch(tmp_path, monkeypatch, capsys):
    import p2p.train.run as run
    from p2p.train.loop import train

    seen = []
    real = run.train_step

    def recording(nets, *a, **kw):
        seen.append((nets.opt_g.param_groups[0]["lr"], nets.opt_d.param_groups[0]["lr"]))
        return real(nets, *a, **kw)

    monkeypatch.setattr(run, "train_step", recording)
    # 32 crops / batch 4 = 8 batches per epoch; 1 constant epoch, 2 decaying, then one epoch past the end
    cfg = load_config(None, [f"run.out_dir={tmp_path}", *TINY, "optim.lr_policy=official", "optim.n_epochs=1",
                             "optim.n_epochs_decay=2", "train.max_steps=32"])
    train(cfg)
    lr = 2e-4
    expected = [lr * f for f in (1.0, 2 / 3, 1 / 3, 1 / 3) for _ in range(8)]
    assert [g for g, _ in seen] == pytest.approx(expected, rel=1e-12, abs=0)
    assert all(g == d for g, d in seen)
    assert "optim.lr_policy=official spans optim.n_epochs + optim.n_epochs_decay = 3 epochs = 24 steps" \
           in capsys.readouterr().err


@pytest.fixture(scope="module")
def official_resnet(tmp_path_factory):
    """Official resnet_9blocks-style weights (batch norm and dropout, as pix2pix trains it; narrow)
    and a photo at a size the network keeps (no resampling on the way)."""
    from p2p.data.folder import embedded_photo

    root = tmp_path_factory.mktemp("official_resnet")
    net = randomize(OfficialResnet(3, 3, 8, "batch", dropout=True, n_blocks=9), seed=7)
    torch.save(net.state_dict(), root / "latest_net_G.pth")
    photo = embedded_photo("coffee")[100:164, 200:264]
    Image.fromarray(photo).save(root / "facade.png")
    return root, net, torch.from_numpy(photo).permute(2, 0, 1)[None].float() / 127.5 - 1


def _predicted(root, *flags):
    out = root / ("out" + "".join(flags))
    proc = run_p2p("predict", root / "latest_net_G.pth", root / "facade.png", "--out", out, "--size", "64",
                   "--device", "cpu", *flags)
    return np.asarray(Image.open(out / "facade.png")).astype(np.float64) / 255, proc


def _as_image(t):
    return ((t[0].permute(1, 2, 0).double().numpy() + 1) / 2).clip(0, 1)


@pytest.mark.slow
def test_predict_runs_official_resnet_weights_in_eval_and_train_mode(official_resnet):
    root, net, x = official_resnet
    evaluated, _ = _predicted(root)
    with torch.no_grad():
        want = _as_image(net.eval()(x))
    assert np.abs(evaluated - want).max() <= 0.5 / 255 + 1e-6  # the PNG's 8-bit rounding only

    trained, proc = _predicted(root, "--train-mode")
    assert "train mode" in proc.stdout
    torch.manual_seed(0)  # p2p seeds dropout with run.seed (0 for official weights, which carry no config)
    with torch.no_grad():
        want = _as_image(net.train()(x))  # dropout on, batch statistics of this image
    assert np.abs(trained - want).max() <= 0.5 / 255 + 1e-6
    assert np.abs(trained - evaluated).mean() > 2 / 255  # the two behaviours really differ
    again, _ = _predicted(root, "--train-mode")
    assert np.array_equal(again, trained)  # seeded: the same images every run
