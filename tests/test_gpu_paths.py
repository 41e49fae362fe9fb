"""The GPU code paths, checked on the CPU wherever their mechanism runs there (issue 9): the
optimizer state a resume loads into a capturable Adam, the loss scalers of another precision,
the static buffers a CUDA graph replays from as a compiled network sees them, the memory format
of the step's inputs, the MFU peak table, the GPU a Slurm task binds, CUDA graphs refused with
several processes, and every fallback printed and recorded in the metrics rows. What needs a
GPU to run at all is in tests/test_gpu.py."""

from __future__ import annotations

import json
from types import SimpleNamespace

import pytest
import torch

from helpers.runs import TINY, load_ckpt, run_p2p
from p2p.config import LossConfig, load_config, with_values
from p2p.models import DiscriminatorArch, GeneratorArch, build_discriminator, build_generator, init_weights
from p2p.precision import Precision
from p2p.train.step import Nets, train_step
from p2p.train.wrap import make_optimizer

CPU = torch.device("cpu")


def tiny_nets(precision="fp32", skip=False, capturable=False, channels_last=False) -> tuple[Nets, Precision]:
    torch.manual_seed(0)
    g = init_weights(build_generator(GeneratorArch(1, 2, 5, 8, dropout=False)))
    d = init_weights(build_discriminator(DiscriminatorArch(3, 8, 3)))
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    g, d = g.to(memory_format=fmt), d.to(memory_format=fmt)
    cfg, p = load_config(), Precision(precision, CPU)
    return Nets(g, d, d, make_optimizer(g.parameters(), cfg, CPU, capturable),
                make_optimizer(d.parameters(), cfg, CPU, capturable), p.make_scaler(skip), p.make_scaler(skip),
                fmt), p


def colorize_batch(n=2, size=32, device_step="fused"):
    from helpers.image_folders import photo_batch
    from p2p.config import TaskConfig
    from p2p.tasks import build_task

    return build_task(TaskConfig(name="colorize"), device_step).prepare(photo_batch()[:n], size, None)


def checkpoint_of(nets: Nets, lr: float, tmp_path) -> dict:
    """A real payload after one step at `lr`, saved and loaded the way a resume loads it."""
    from p2p.train.checkpoint import TrainState, make_payload, rank_state
    from p2p.train.schedule import set_lr

    set_lr(nets.opt_g, lr)
    set_lr(nets.opt_d, lr)
    train_step(nets, *colorize_batch(), LossConfig(), Precision("fp32", CPU))
    cfg = load_config()
    g_arch, d_arch = GeneratorArch(1, 2, 5, 8, dropout=False), DiscriminatorArch(3, 8, 3)
    payload = make_payload(cfg, g_arch, d_arch, nets, TrainState(1, 0, 1), [rank_state(nets.G, nets.D)], 1.0)
    torch.save(payload, tmp_path / "last.pt")
    return load_ckpt(tmp_path / "last.pt")  # map_location="cpu", weights_only=True, as Checkpoints.load_last


# ------------------------------------------------------------------ item 1: lr after resume


def test_resume_keeps_the_capturable_adams_own_lr_tensor_and_flags(tmp_path):
    """A CUDA graph reads the lr tensor it was captured with; after a resume `set_lr` must still
    fill that very tensor, and the optimizer must keep its capturable/foreach flags."""
    from p2p.train.checkpoint import restore_training
    from p2p.train.run import Run
    from p2p.train.schedule import set_lr

    eager, _ = tiny_nets()
    payload = checkpoint_of(eager, 1.5e-4, tmp_path)
    assert payload["opt_g"]["param_groups"][0]["fused"] and not payload["opt_g"]["param_groups"][0]["capturable"]

    graphed, _ = tiny_nets(capturable=True)  # capturable Adam builds on the CPU; it only cannot step here
    live = [opt.param_groups[0]["lr"] for opt in (graphed.opt_g, graphed.opt_d)]
    restore_training(payload, graphed, 0, 1, 0)
    for opt, lr in zip((graphed.opt_g, graphed.opt_d), live):
        group = opt.param_groups[0]
        assert group["lr"] is lr, "the optimizer's lr is no longer the tensor a captured graph reads"
        assert float(lr) == pytest.approx(1.5e-4)
        assert group["capturable"] and group["foreach"] and not group["fused"]
        assert all(s["step"].dtype == torch.float32 and float(s["step"]) == 1.0 for s in opt.state.values())
        torch.testing.assert_close(opt.state[group["params"][0]]["exp_avg"],
                                   next(iter(payload["opt_g" if opt is graphed.opt_g else "opt_d"]["state"].values()))[
                                       "exp_avg"])
        set_lr(opt, 5e-5)
        assert float(lr) == pytest.approx(5e-5)
    # the logged lr is what the optimizer holds, not the schedule recomputed
    assert Run.lr(SimpleNamespace(nets=graphed)) == pytest.approx(5e-5)


def test_resume_from_a_graphed_run_into_eager_adam_keeps_fused(tmp_path):
    from p2p.train.checkpoint import load_optimizer

    graphed, _ = tiny_nets(capturable=True)
    saved = graphed.opt_g.state_dict()  # what a graphed run saves: capturable flags, a tensor lr
    saved["param_groups"][0]["lr"] = torch.tensor(1e-4)
    eager, _ = tiny_nets()
    load_optimizer(eager.opt_g, saved)
    group = eager.opt_g.param_groups[0]
    assert group["fused"] and not group["capturable"]
    assert isinstance(group["lr"], float) and group["lr"] == pytest.approx(1e-4)


# ------------------------------------------------------------------ item 11: loss scalers


@pytest.mark.parametrize("saved, resumed", [(("fp32", False), ("fp32", True)), (("fp16", False), ("fp32", True)),
                                            (("fp32", False), ("fp16", False))])
def test_resume_with_another_loss_scaling_starts_the_scalers_fresh(tmp_path, saved, resumed):
    from p2p.train.checkpoint import restore_training

    before, _ = tiny_nets(*saved)
    payload = checkpoint_of(before, 2e-4, tmp_path)
    if saved[0] == "fp16":
        assert payload["scaler_g"]["scale"] == 65536.0
    after, _ = tiny_nets(*resumed)
    state, notices = restore_training(payload, after, 0, 1, 0)  # GradScaler raised here before
    assert state.step == 1
    assert len(notices) == 1 and "loss scalers start fresh" in notices[0], notices
    fresh, _ = tiny_nets(*resumed)
    assert after.scaler_g.state_dict() == fresh.scaler_g.state_dict()  # not the fp16 scale of the checkpoint


def test_resume_with_the_same_loss_scaling_restores_the_scale(tmp_path):
    from p2p.train.checkpoint import restore_training

    before, _ = tiny_nets("fp16")
    payload = checkpoint_of(before, 2e-4, tmp_path)
    payload["scaler_g"]["scale"] = 1024.0  # as after a few overflows
    after, _ = tiny_nets("fp16")
    _, notices = restore_training(payload, after, 0, 1, 0)
    assert not notices and after.scaler_g.get_scale() == 1024.0


@pytest.mark.slow
def test_train_resumes_with_on_nonfinite_skip_from_a_stop_checkpoint(tmp_path):
    common = [f"run.out_dir={tmp_path}", *TINY, "train.max_steps=4", "run.name=switch"]
    assert run_p2p("train", *common, "train.stop_after=2", check=False).returncode == 75
    proc = run_p2p("train", *common, "train.on_nonfinite=skip")
    assert "loss scalers start fresh" in proc.stderr
    rows = [json.loads(line) for line in (tmp_path / "switch" / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [2, 4]
    assert any("loss scalers start fresh" in n for n in rows[1]["notices"])
    assert load_ckpt(tmp_path / "switch" / "checkpoints" / "last.pt")["scaler_g"]["scale"] == 1.0


# ------------------------------------------------------------------ item 4: what a compiled net sees


def test_graph_buffers_keep_the_strides_the_compiled_networks_were_warmed_up_with():
    """GraphedStep copies every input into `static_like` buffers. Colorization's L is a strided
    view of a Lab tensor; a contiguous copy would fail torch.compile's stride guard, and the
    recompile inside a CUDA graph capture cannot be captured (the run fell back to eager). The
    eager device step makes that view (data.device_step=eager, or where the fused one cannot
    run); the fused one writes L contiguous."""
    import torch._dynamo

    from p2p.train.graphs import static_like

    inp, target = colorize_batch(device_step="eager")
    assert not inp.is_contiguous()
    net = torch.compile(torch.nn.Conv2d(1, 4, 3), backend="eager")  # dynamo's guards without inductor
    net(inp)
    with torch._dynamo.config.patch(error_on_recompile=True):
        for x in (inp, target):
            buf = static_like(x)
            assert (buf.shape, buf.stride(), buf.dtype) == (x.shape, x.stride(), x.dtype)
        net(static_like(inp).copy_(inp))  # raises RecompileError if the guards fail


# ------------------------------------------------------------------ item 8: memory format of the inputs


def test_channels_last_step_feeds_its_networks_channels_last_inputs():
    nets, p = tiny_nets(channels_last=True)
    seen = []
    for net in (nets.G, nets.D):
        net.register_forward_pre_hook(lambda m, args: seen.append(args[0].is_contiguous(
            memory_format=torch.channels_last)))
    inp, target = colorize_batch()
    train_step(nets, inp, target, LossConfig(), p)
    assert len(seen) == 4 and all(seen), seen  # G, D(fake), D(real), D_frozen(fake)


# ------------------------------------------------------------------ item 9: MFU peaks


def test_mfu_peak_is_the_exact_gpu_models_for_the_precision_that_ran():
    from p2p.train.flops import gpu_model, peak_for

    assert peak_for("NVIDIA H100 80GB HBM3", "bf16", True) == 989.4e12
    assert peak_for("NVIDIA H100 NVL", "bf16", True) == 835.5e12  # not the SXM part's
    assert peak_for("NVIDIA H100 PCIe", "fp16", True) == 756.5e12
    assert peak_for("NVIDIA L40", "bf16", True) == 181.05e12  # not an L4
    assert peak_for("NVIDIA L4", "bf16", True) == 121e12
    assert peak_for("NVIDIA A100-SXM4-80GB", "bf16", True) == peak_for("NVIDIA A100-PCIE-40GB", "bf16", True) == 312e12
    assert peak_for("NVIDIA H200", "fp32", True) == 494.7e12  # TF32 convolutions, not the bf16 peak
    assert peak_for("NVIDIA H200", "fp32", False) == 66.9e12
    for unknown in ("NVIDIA H20", "NVIDIA B200", "NVIDIA H100 80GB HBM3 MIG 1g.10gb", "NVIDIA A10", "Tesla T4", ""):
        assert peak_for(unknown, "bf16", True) is None, unknown
    assert gpu_model("NVIDIA A100 80GB PCIe") == ("A100", "PCIe")


def test_mfu_needs_a_known_gpu():
    from p2p.train.flops import peak_flops

    assert peak_flops(CPU, "bf16") is None


# ------------------------------------------------------------------ items 5 and 6: several processes


def test_cuda_graphs_are_refused_with_several_processes():
    from p2p.train.run import use_cuda_graphs

    cfg = with_values(load_config(), {"train.cuda_graphs": True})
    cuda = torch.device("cuda")  # a device object only: nothing runs on it
    notices = []
    assert use_cuda_graphs(cfg, cuda, notices.append, world=1) and not notices
    assert not use_cuda_graphs(cfg, cuda, notices.append, world=2)
    assert len(notices) == 1 and "one process" in notices[0]


@pytest.mark.parametrize("local_rank, visible, index", [("3", 1, 0), ("3", 8, 3), ("3", 2, 1), ("0", 1, 0)])
def test_local_rank_becomes_the_index_of_a_visible_gpu(local_rank, visible, index):
    """srun --gpus-per-task=1: every task sees one GPU while LOCAL_RANK counts the tasks on the
    node. Accelerate gives DDP device_ids=[LOCAL_RANK]; p2p sets the device to the same index."""
    from p2p.dist import bind_local_gpu

    env = {"LOCAL_RANK": local_rank, "SLURM_LOCALID": local_rank}
    assert bind_local_gpu(env, visible) == index
    assert env["LOCAL_RANK"] == str(index) and env["SLURM_LOCALID"] == local_rank
    assert bind_local_gpu({}, 1) == 0


# ------------------------------------------------------------------ item 7: restore's noise


def test_restore_noise_on_the_cpu_comes_from_the_step_generator_itself():
    from p2p.augment import step_generator
    from p2p.tasks import generator_on

    gen = step_generator(0, 0, 5)
    assert generator_on(gen, CPU) is gen  # the CPU twin draws exactly as before (GPU side: test_gpu.py)


# ------------------------------------------------------------------ item 3: fallbacks are loud


def test_a_notice_after_start_is_printed_when_it_happens():
    from p2p.train.in_effect import Notices

    printed = []
    notices = Notices()
    notices("found while building")
    notices.attach(printed.append)
    assert printed == ["found while building"]
    notices("capture failed at step 4")
    assert printed[-1] == "capture failed at step 4"
    assert notices.take() == ["found while building", "capture failed at step 4"] and notices.take() == []


def test_fused_adam_missing_is_a_notice(monkeypatch):
    """Stands in for a PyTorch without fused Adam on this device (every one here has it)."""
    real = torch.optim.Adam

    def without_fused(params, fused=None, **kw):
        params = list(params)  # as torch.optim.Optimizer: the parameters are taken before the check
        if fused:
            raise RuntimeError("`fused=True` requires all the params to be floating point Tensors of supported devices")
        return real(params, **kw)

    monkeypatch.setattr(torch.optim, "Adam", without_fused)
    notices = []
    net = torch.nn.Linear(2, 2)
    opt = make_optimizer(net.parameters(), load_config(), CPU, notice=notices.append)  # a generator, as nets.py
    assert len(notices) == 1 and "foreach" in notices[0]
    assert opt.param_groups[0]["foreach"] and len(opt.param_groups[0]["params"]) == 2


@pytest.mark.slow
def test_metrics_rows_say_what_ran_and_carry_the_fallbacks(tmp_path):
    proc = run_p2p("train", f"run.out_dir={tmp_path}", *TINY, "train.max_steps=4", "train.precision=bf16",
                   "train.cuda_graphs=true", "train.compile=true", "run.name=fallbacks")
    assert "notice: train.cuda_graphs=true" in proc.stderr and "notice: train.compile=true" in proc.stderr
    rows = [json.loads(line) for line in (tmp_path / "fallbacks" / "metrics.jsonl").read_text().splitlines()]
    assert len(rows) == 2
    for r in rows:
        assert (r["precision"], r["channels_last"], r["compiled"], r["cuda_graphs"], r["graph_replays"]) == \
            ("bf16", False, [], False, 0)
        assert r["adam"] in ("fused", "foreach")
    assert any("CUDA graphs need a GPU" in n for n in rows[0]["notices"])
    assert any("torch.compile is used on GPU only" in n for n in rows[0]["notices"])
    assert "notices" not in rows[1]
