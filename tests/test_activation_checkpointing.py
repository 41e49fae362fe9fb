"""`train.activation_checkpointing`: the step with recomputed blocks gives the plain step's losses,
gradients, batch-norm statistics and RNG stream bit for bit on a CPU in fp32, keeps fewer
activations for the backward pass, and says which speed-ups it does not combine with."""

from __future__ import annotations

import pytest
import torch

from p2p.config import load_config
from p2p.tasks import build_task
from p2p.train.nets import build_nets, build_networks
from p2p.train.recompute import apply_activation_checkpointing
from p2p.precision import Precision
from p2p.train.step import train_step

from helpers.image_folders import photo_batch

CASES = {
    # dropout (levels 4.. of a 6-level U-Net) and batch norm: RNG and running statistics in the recompute
    "unet": ["model.num_downs=6", "model.dropout=true", "data.image_size=64", "data.load_size=72"],
    "resnet": ["model.generator=resnet", "model.n_blocks=2", "model.dropout=true", "data.image_size=32",
               "data.load_size=40"],
    "local": ["model.generator=local", "model.n_downsample_global=2", "model.n_blocks_global=2",
              "model.n_blocks_local=1", "data.image_size=32", "data.load_size=40"],
}
COMMON = ["model.ngf=4", "model.ndf=8", "model.n_layers_d=2", "model.num_d=2", "loss.lambda_feat=10",
          "optim.impl=plain"]


def two_steps(overrides, mode, precision="fp32"):
    """The networks, their gradients and the RNG state after two steps."""
    cfg = load_config(None, [*COMMON, *overrides])
    task = build_task(cfg.task)
    torch.manual_seed(0)
    G, D = build_networks(cfg, task)
    apply_activation_checkpointing(G, D, mode)
    precision = Precision(precision, torch.device("cpu"))
    nets = build_nets(G, D, D, cfg, torch.device("cpu"), precision, task=task)
    size = cfg.data.image_size
    inp, target = task.prepare(photo_batch(2, size), size, None)
    losses = [train_step(nets, inp, target, cfg.loss, precision) for _ in range(2)]
    return G, D, losses, torch.get_rng_state()


@pytest.mark.parametrize("case, mode, precision", [(case, mode, "fp32") for case in CASES
                                                    for mode in ("generator", "all")] + [("unet", "all", "bf16")])
def test_checkpointed_step_is_bit_identical_to_the_plain_step(case, mode, precision):
    # bf16: the recompute runs under the autocast state of the first forward
    G0, D0, losses0, rng0 = two_steps(CASES[case], "none", precision)
    G1, D1, losses1, rng1 = two_steps(CASES[case], mode, precision)
    for a, b in zip(losses0, losses1):
        assert a.keys() == b.keys()
        for k in a:
            assert torch.equal(a[k], b[k]), k
    for plain, recomputed in ((G0, G1), (D0, D1)):
        for (name, p), q in zip(plain.named_parameters(), recomputed.parameters()):
            assert torch.equal(p, q), name
            assert (p.grad is None) == (q.grad is None) and (p.grad is None or torch.equal(p.grad, q.grad)), name
        # batch norm's running statistics move once per forward, not again in the recompute
        for (name, b), c in zip(plain.named_buffers(), recomputed.buffers()):
            assert torch.equal(b, c), name
    assert torch.equal(rng0, rng1)  # the recompute's dropout masks do not draw from the step's stream


def saved_bytes(G, x) -> int:
    total = 0

    def pack(t):
        nonlocal total
        total += t.numel() * t.element_size()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        G(x).sum().backward()
    return total


@pytest.mark.parametrize("case", list(CASES))
def test_checkpointing_keeps_fewer_activations_for_backward(case):
    cfg = load_config(None, [*COMMON, *CASES[case]])
    task = build_task(cfg.task)
    torch.manual_seed(0)
    G, D = build_networks(cfg, task)
    x = torch.randn(2, task.in_channels, cfg.data.image_size, cfg.data.image_size)
    plain = saved_bytes(G, x)
    apply_activation_checkpointing(G, D, "generator")
    assert saved_bytes(G, x) < 0.6 * plain


def test_ema_copy_of_a_checkpointed_generator_runs_its_own_weights():
    from p2p.train.ema import GeneratorEMA

    cfg = load_config(None, [*COMMON, *CASES["resnet"]])
    G, D = build_networks(cfg, build_task(cfg.task))
    apply_activation_checkpointing(G, D, "generator")
    ema = GeneratorEMA(G, 0.5)
    with torch.no_grad():
        for p in G.parameters():
            p.add_(1.0)
    x = torch.randn(1, 1, 32, 32)
    G.eval()
    with torch.no_grad():
        assert not torch.equal(ema.module(x), G(x))


@pytest.mark.parametrize("overrides, needle", [
    (["train.cuda_graphs=true", "train.activation_checkpointing=generator"], "activation_checkpointing=generator"),
    (["train.cuda_graphs=true", "model.generator=local", "train.fix_global_steps=4", "data.image_size=32",
      "data.load_size=40", "model.n_downsample_global=2"], "fix_global_steps"),
])
def test_cuda_graphs_are_refused_with_one_notice(overrides, needle):
    from p2p.train.run import use_cuda_graphs

    notices = []
    assert not use_cuda_graphs(load_config(None, overrides), torch.device("cuda"), notices.append)
    assert len(notices) == 1 and needle in notices[0] and "running eager" in notices[0]


def test_compile_is_refused_with_one_notice():
    from p2p.train.wrap import uses_compile

    cfg = load_config(None, ["train.compile=true", "train.activation_checkpointing=all"])
    assert not uses_compile(cfg, torch.device("cuda"))


@pytest.mark.slow
def test_two_ranks_with_checkpointing_ema_and_a_frozen_global_part_train_as_without(tmp_path):
    """Under DDP (gloo, 2 ranks) with the EMA and a local enhancer whose global part is frozen for
    the first 2 of 4 steps, activation checkpointing of everything ends with the same weights,
    optimizer moments, EMA and logged losses as the plain run."""
    from helpers.runs import torchrun
    from helpers.same_run import assert_same_run

    common = ["-m", "p2p", "train", f"run.out_dir={tmp_path}", "run.deterministic=true", "data.image_size=32",
              "data.load_size=40", "model.generator=local", "model.ngf=4", "model.ndf=8", "model.norm=batch",
              "model.n_downsample_global=2", "model.n_blocks_global=1", "model.n_blocks_local=1", "model.num_d=2",
              "model.n_layers_d=2", "loss.lambda_feat=10", "train.ema_decay=0.8", "train.fix_global_steps=2",
              "train.batch_size=2", "data.epoch_size=16", "data.val_images=2", "data.workers=0",
              "train.log_every=1", "train.sample_every=0", "train.eval_every=0", "train.ckpt_every=0",
              "train.max_steps=4"]
    torchrun(*common, "run.name=plain")
    torchrun(*common, "run.name=recomputed", "train.activation_checkpointing=all")
    assert_same_run(tmp_path / "plain", tmp_path / "recomputed")
