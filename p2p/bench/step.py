"""`p2p bench step`: training-step images/s, the seed-style baseline against each optimisation.

Every row runs `p2p.train.step.train_step` (D update, then G update) on the same synthetic
colorization batch (L in, ab out, already on the device) with freshly built networks from the
same seed, so rows differ only in how the step is run:

* baseline: what the seed did: fp32, eager, contiguous (NCHW) tensors, `torch.optim.Adam` with
  `foreach=False` (one small kernel per parameter tensor), and `.item()` on every loss every
  step, i.e. a host sync per step;
* one optimisation at a time on top of the baseline: channels_last, fused Adam (foreach where
  fused is missing), no per-step host sync (losses summed on the device), bf16 autocast, fp16
  autocast with per-network GradScalers (GPU), torch.compile (GPU; CPU behind --cpu-compile,
  which compiles for minutes), CUDA graphs of the whole step (GPU; p2p.train.graphs.GraphedStep
  with capturable Adam);
* all: every optimisation that runs on this device, combined;
* p2p default: what `p2p train` does with the default config on this device (p2p.config
  defaults through the loop's own choices: channels_last on GPU only, fused Adam, no sync).

Rows that cannot run here are kept with `skipped` and the reason. Each mode is warmed up, then
the modes take turns (`--repeats` rounds, the order rotating each round) so that drift and
other load on the machine hit them alike; img_per_s is the median round. On a GPU each row also
has `mfu`: FLOPs per image (p2p.train.flops, 1 multiply-add = 2 FLOPs) x img/s / the GPU's
dense bf16 peak (fp32 rows too, against the same peak).

Run directly as `python -m p2p.bench.step [options]`; thread count from OMP_NUM_THREADS.
"""

from __future__ import annotations

import argparse
import math
import os
import time
from dataclasses import asdict, dataclass
from types import SimpleNamespace

import torch

from p2p.bench.common import environment, measure, print_table, sync, write_json
from p2p.errors import UsageError

BASELINE = "baseline"

# name -> (ngf, num_downs, ndf). "small" is the demo's model (p2p.config defaults); "tiny" is
# for the tests only.
MODELS = {"full": (64, 8, 64), "small": None, "tiny": (8, 5, 8)}


@dataclass(frozen=True)
class Setup:
    """How one row runs the step."""

    channels_last: bool = False
    adam: str = "for-loop"  # for-loop (foreach=False, the seed's), fused (p2p make_optimizer), capturable
    sync_every_step: bool = True  # .item() on every loss after every step
    precision: str = "fp32"
    compile: bool = False
    cuda_graphs: bool = False


MODES = {
    "baseline": ("seed-style: fp32, eager, NCHW, for-loop Adam, .item() every step", Setup()),
    "channels_last": ("baseline + channels_last models and batch", Setup(channels_last=True)),
    "fused_adam": ("baseline + fused Adam (p2p make_optimizer)", Setup(adam="fused")),
    "no_sync": ("baseline + losses stay on the device (no per-step host sync)", Setup(sync_every_step=False)),
    "bf16": ("baseline + bf16 autocast", Setup(precision="bf16")),
    "fp16": ("baseline + fp16 autocast + per-network GradScalers", Setup(precision="fp16")),
    "compile": ("baseline + torch.compile of G and D", Setup(compile=True)),
    "cuda_graphs": ("baseline + the whole step in one CUDA graph (capturable Adam)",
                    Setup(adam="capturable", sync_every_step=False, cuda_graphs=True)),
    "all": ("every optimisation that runs on this device", Setup()),  # filled in by all_setup()
    "p2p_default": ("what `p2p train` does with the default config here", Setup()),  # default_setup()
}


def model_sizes(model: str) -> tuple[int, int, int]:
    if model not in MODELS:
        raise UsageError(f"--model {model!r}: choose one of full, small")
    if MODELS[model] is None:
        from p2p.config import Config

        m = Config().model
        return m.ngf, m.num_downs, m.ndf
    return MODELS[model]


def why_not(name: str, device: torch.device, cpu_compile: bool) -> str | None:
    """Why mode `name` cannot run on `device`, or None."""
    cuda = device.type == "cuda"
    if name == "fp16" and not cuda:
        return "GPU mode: fp16 autocast + GradScaler is measured on CUDA only"
    if name == "cuda_graphs" and not cuda:
        return "CUDA graphs need a GPU"
    if name == "compile" and not cuda and not cpu_compile:
        return "torch.compile on CPU compiles for minutes: pass --cpu-compile to measure it"
    if name == "compile" and not hasattr(torch, "compile"):
        return "this PyTorch has no torch.compile"
    return None


def all_setup(device: torch.device, cpu_compile: bool) -> Setup:
    """Every optimisation that runs here combined: on a GPU bf16 + channels_last + compile + CUDA
    graphs (capturable Adam, no syncs); on a CPU channels_last, fused Adam, no sync, bf16 (and
    compile with --cpu-compile)."""
    cuda = device.type == "cuda"
    return Setup(channels_last=True, adam="capturable" if cuda else "fused", sync_every_step=False,
                 precision="bf16", compile=cuda or cpu_compile, cuda_graphs=cuda)


def default_setup(device: torch.device) -> Setup:
    """The trainer's choices for the default config (p2p.train.loop / wrap): channels_last only on
    GPU, fused Adam, host reads only at log steps, the configured precision, compile and graphs."""
    from p2p.config import Config

    t = Config().train
    cuda = device.type == "cuda"
    graphs = t.cuda_graphs and cuda and t.precision != "fp16" and t.on_nonfinite != "skip"
    return Setup(channels_last=t.channels_last and cuda, adam="capturable" if graphs else "fused",
                 sync_every_step=False, precision=t.precision, compile=t.compile and cuda, cuda_graphs=graphs)


# ---------------------------------------------------------------------------------------------
# one mode: networks, optimizers, the step


class Runner:
    """Fresh G and D from `seed` (identical initial weights in every mode), wrapped as `setup`
    says, and a function that runs `steps` training steps on the fixed batch."""

    def __init__(self, setup: Setup, sizes: tuple[int, int, int], batch: tuple[torch.Tensor, torch.Tensor],
                 device: torch.device, seed: int = 0):
        from p2p.config import Config
        from p2p.models import DiscriminatorArch, GeneratorArch, build_discriminator, build_generator, init_weights
        from p2p.train.step import Nets, Precision, train_step
        from p2p.train.wrap import make_optimizer

        self.setup, self.device, self.notices = setup, device, []
        ngf, num_downs, ndf = sizes
        cfg = Config()
        self.loss_cfg = cfg.loss
        torch.manual_seed(seed)
        G = init_weights(build_generator(GeneratorArch(1, 2, num_downs, ngf)), "normal", 0.02).to(device)
        D = init_weights(build_discriminator(DiscriminatorArch(3, ndf)), "normal", 0.02).to(device)
        inp, target = batch
        if setup.channels_last:
            G, D = G.to(memory_format=torch.channels_last), D.to(memory_format=torch.channels_last)
            inp = inp.contiguous(memory_format=torch.channels_last)
            target = target.contiguous(memory_format=torch.channels_last)
        self.inp, self.target = inp, target

        def adam(params):
            if setup.adam == "for-loop":  # the seed's optimizer: a Python loop over parameter tensors
                return torch.optim.Adam(params, lr=cfg.optim.lr, betas=(cfg.optim.beta1, cfg.optim.beta2),
                                        foreach=False)
            return make_optimizer(params, cfg, device, capturable=setup.adam == "capturable")

        opt_g, opt_d = adam(G.parameters()), adam(D.parameters())
        self.adam_kind = _adam_kind(opt_g)
        D_plain = D
        if setup.compile:  # as p2p.train.wrap.wrap_models does
            G, D, D_plain = torch.compile(G), torch.compile(D), torch.compile(D_plain)
        self.precision = Precision(setup.precision, device)
        self.nets = Nets(G, D, D_plain, opt_g, opt_d, self.precision.make_scaler(False),
                         self.precision.make_scaler(False))

        def eager(x, y):
            return train_step(self.nets, x, y, self.loss_cfg, self.precision)

        self.step_fn = eager
        self.graphed = None
        if setup.cuda_graphs:
            from p2p.train.graphs import GraphedStep

            self.graphed = self.step_fn = GraphedStep(eager, notice=self.notices.append)
        self.sums: dict[str, torch.Tensor] = {}
        self.batch_size = inp.shape[0]

    def run(self, steps: int) -> int:
        """`steps` training steps; returns the images processed."""
        for _ in range(steps):
            losses = self.step_fn(self.inp, self.target)
            if self.setup.sync_every_step:
                # note: a CPU-GPU sync point per loss, every step: what the baseline measures
                self.last = {k: v.item() for k, v in losses.items()}
            else:  # as the training loop: summed on the device, read at log steps only
                for k, v in losses.items():
                    self.sums[k] = self.sums[k] + v if k in self.sums else v.clone()
        return steps * self.batch_size

    def warm_up(self, steps: int) -> None:
        # CUDA graphs: GraphedStep runs 3 eager warm-up steps, captures on the 4th call and
        # replays from then on; compile: the first calls compile (both requires_grad states of D).
        need = 5 if self.setup.cuda_graphs else 2 if self.setup.compile else 1
        self.run(max(steps, need))
        self.read_losses()
        sync(self.device)
        if self.graphed is not None and self.graphed.failed:
            self.notices.append("CUDA graph capture failed: eager steps were measured")

    def read_losses(self) -> dict[str, float]:
        """The losses since the last read (summed, or the last step's when synced every step): a
        host sync. Resets the sums."""
        out = {k: float(v) for k, v in self.sums.items()} if self.sums else dict(getattr(self, "last", {}))
        self.sums = {}
        return out


def _adam_kind(opt: torch.optim.Optimizer) -> str:
    d = opt.defaults
    if d.get("fused"):
        return "fused"
    kind = "foreach" if d.get("foreach") else "for-loop"
    return f"{kind}, capturable" if d.get("capturable") else kind


def synthetic_batch(batch_size: int, image_size: int, device: torch.device, seed: int = 0):
    """A colorization batch (L: N x 1, ab: N x 2, both in [-1, 1]) made on the device, so no
    input pipeline is measured. Smooth random fields rather than white noise: conv costs do not
    depend on content, but the losses stay in a realistic range."""
    g = torch.Generator().manual_seed(seed)
    low = torch.rand(batch_size, 3, max(1, image_size // 16), max(1, image_size // 16), generator=g) * 2 - 1
    x = torch.nn.functional.interpolate(low, size=(image_size, image_size), mode="bilinear", align_corners=False)
    return x[:, :1].contiguous().to(device), x[:, 1:].contiguous().to(device)


# ---------------------------------------------------------------------------------------------
# the suite


def resolve_options(args: argparse.Namespace) -> dict:
    """Defaults that depend on the device and on --quick / --tiny."""
    device = torch.device(args.device if args.device != "auto" else ("cuda" if torch.cuda.is_available() else "cpu"))
    if device.type == "cuda" and not torch.cuda.is_available():
        raise UsageError("--device cuda but no CUDA GPU is visible (check CUDA_VISIBLE_DEVICES)")
    cuda = device.type == "cuda"
    tiny = getattr(args, "tiny", False) or os.environ.get("P2P_BENCH_TINY") == "1"
    quick = args.quick
    o = {
        "device": device, "tiny": tiny, "quick": quick,
        "model": args.model or ("tiny" if tiny else "full" if cuda else "small"),
        "batch_size": args.batch_size or (2 if tiny else 64 if cuda else 8),
        "image_size": args.image_size or (32 if tiny else 128 if quick and not cuda else 256),
        "steps": args.steps or (1 if tiny else (5 if quick else 20) if cuda else 2 if quick else 3),
        "warmup": args.warmup if args.warmup is not None else (1 if tiny or not cuda else 5),
        "repeats": args.repeats or (1 if tiny else 3 if quick or not cuda else 5),
    }
    modes = [m.strip() for m in (args.modes or ",".join(MODES)).split(",") if m.strip()]
    unknown = [m for m in modes if m not in MODES]
    if unknown:
        raise UsageError(f"--modes: unknown mode {unknown[0]!r}; choose from {', '.join(MODES)}")
    if BASELINE not in modes:
        modes.insert(0, BASELINE)  # every ratio needs the baseline of the same run
    o["modes"] = modes
    ngf, num_downs, ndf = model_sizes(o["model"])
    if o["image_size"] % (2 ** num_downs):
        raise UsageError(f"--image-size {o['image_size']}: must be divisible by 2**num_downs = {2 ** num_downs} "
                         f"for --model {o['model']}")
    for key in ("batch_size", "steps", "repeats"):
        if o[key] < 1:
            raise UsageError(f"--{key.replace('_', '-')} must be >= 1")
    o["cpu_compile"] = args.cpu_compile
    return o


def run_step(device="auto", model=None, batch_size=None, image_size=None, steps=None, warmup=None, repeats=None,
             modes=None, quick=False, cpu_compile=False, tiny=False, seed=0, progress=print) -> dict:
    """Measure the modes; returns {environment, config, results (rows), notes}."""
    args = SimpleNamespace(device=device, model=model, batch_size=batch_size, image_size=image_size, steps=steps,
                           warmup=warmup, repeats=repeats, modes=modes, quick=quick, cpu_compile=cpu_compile,
                           tiny=tiny)
    o = resolve_options(args)
    dev = o["device"]
    cuda = dev.type == "cuda"
    from p2p.models import DiscriminatorArch, GeneratorArch
    from p2p.train.flops import peak_flops, step_flops_per_image
    from p2p.train.loop import configure_determinism

    configure_determinism(False)  # as the training loop: cuDNN autotune, TF32 matmuls on GPU
    sizes = model_sizes(o["model"])
    ngf, num_downs, ndf = sizes
    flops = step_flops_per_image(GeneratorArch(1, 2, num_downs, ngf), DiscriminatorArch(3, ndf), o["image_size"])
    peak = peak_flops(dev)
    batch = synthetic_batch(o["batch_size"], o["image_size"], dev, seed)
    notes = []
    if not cuda:
        notes.append("no GPU on this machine: fp16, compile (without --cpu-compile) and CUDA graph rows are "
                     "skipped and no MFU is reported")

    rows: dict[str, dict] = {}
    runners: dict[str, Runner] = {}
    for name in o["modes"]:
        desc, setup = MODES[name]
        if name == "all":
            setup = all_setup(dev, o["cpu_compile"])
        elif name == "p2p_default":
            setup = default_setup(dev)
        row = {"name": name, "description": desc, "device": str(dev), **asdict(setup)}
        rows[name] = row
        reason = why_not(name, dev, o["cpu_compile"])
        if reason:
            row["skipped"] = reason
            progress(f"  {name}: skipped ({reason})")
            continue
        try:
            t0 = time.perf_counter()
            r = Runner(setup, sizes, batch, dev, seed)
            r.warm_up(o["warmup"])
            row["adam"] = r.adam_kind
            row["warmup_s"] = time.perf_counter() - t0
            runners[name] = r
            progress(f"  {name}: ready ({row['warmup_s']:.1f} s build + warm-up)")
        except torch.OutOfMemoryError:
            row["skipped"] = f"out of memory at batch {o['batch_size']}"
        except Exception as e:  # a mode that fails (e.g. compile on an unusual setup) is reported, not fatal
            row["skipped"] = f"failed: {type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"[:300]
        if "skipped" in row:
            progress(f"  {name}: skipped ({row['skipped']})")
            if cuda:
                torch.cuda.empty_cache()

    # Interleaved rounds: every mode once per round, the starting mode rotating.
    rates: dict[str, list[float]] = {n: [] for n in runners}
    finite: dict[str, bool] = {}
    order = list(runners)
    for rnd in range(o["repeats"]):
        k = rnd % len(order) if order else 0
        for name in order[k:] + order[:k]:
            r = runners[name]
            rates[name].append(measure(lambda r=r: r.run(o["steps"]), device=dev, warmup=0, repeats=1)["img_per_s"])
            losses = r.read_losses()
            finite[name] = finite.get(name, True) and all(math.isfinite(v) for v in losses.values())
        progress(f"  round {rnd + 1}/{o['repeats']}: " + ", ".join(f"{n} {rates[n][-1]:.1f}" for n in order))

    import statistics

    for name, r in runners.items():
        row = rows[name]
        ips = statistics.median(rates[name])
        row.update(img_per_s=ips, img_per_s_min=min(rates[name]), img_per_s_max=max(rates[name]),
                   repeats=len(rates[name]), step_ms=1000 * o["batch_size"] / ips, rounds=rates[name],
                   losses_finite=finite.get(name, True))
        if peak:
            row["mfu"] = flops * ips / peak
        if r.notices:
            row["notices"] = r.notices
    base = rows[BASELINE].get("img_per_s")
    for row in rows.values():
        row["baseline"] = BASELINE
        row["ratio"] = row["img_per_s"] / base if base and row.get("img_per_s") else None
        row.setdefault("img_per_s", None)
    config = {
        "device": str(dev), "model": o["model"], "ngf": ngf, "num_downs": num_downs, "ndf": ndf,
        "task": "colorize (1 -> 2 channels)", "batch_size": o["batch_size"], "image_size": o["image_size"],
        "steps_per_round": o["steps"], "warmup_steps": o["warmup"], "rounds": o["repeats"],
        "modes": o["modes"], "flops_per_image": flops, "peak_flops": peak, "threads": torch.get_num_threads(),
        "quick": o["quick"], "tiny": o["tiny"], "cpu_compile": o["cpu_compile"], "seed": seed,
        "cudnn_benchmark": torch.backends.cudnn.benchmark, "tf32_matmul": torch.backends.cuda.matmul.allow_tf32,
    }
    return {"environment": environment(), "config": config, "results": list(rows.values()), "notes": notes}


def summary_line(payload: dict) -> str:
    rows = [r for r in payload["results"] if r.get("img_per_s")]
    best = max(rows, key=lambda r: r["img_per_s"])
    c = payload["config"]
    line = (f"best: {best['name']} {best['img_per_s']:.1f} img/s = {best['ratio']:.2f}x the baseline "
            f"({c['model']} model, {c['image_size']}px, batch {c['batch_size']})")
    if best.get("mfu") is not None:
        line += f", MFU {100 * best['mfu']:.1f}%"
    return line


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--device", default="auto", help="auto (cuda when present), cpu or cuda")
    parser.add_argument("--model", choices=("full", "small"), default=None,
                        help="full: U-Net-256 (ngf 64, num_downs 8) + 70x70 PatchGAN (ndf 64); small: the demo's "
                        "sizes (default: full on GPU, small on CPU)")
    parser.add_argument("--batch-size", type=int, default=None, help="images per step (default 64 on GPU, 8 on CPU)")
    parser.add_argument("--image-size", type=int, default=None,
                        help="image side in pixels (default 256; 128 with --quick on CPU)")
    parser.add_argument("--steps", type=int, default=None, help="steps per timed round (default 20 on GPU, 3 on CPU)")
    parser.add_argument("--warmup", type=int, default=None, help="untimed steps per mode first (default 5 GPU, 1 CPU)")
    parser.add_argument("--repeats", type=int, default=None,
                        help="timed rounds, median reported (default 5 GPU, 3 CPU)")
    parser.add_argument("--modes", default=None,
                        help=f"comma-separated subset of: {', '.join(MODES)} (baseline is always measured)")
    parser.add_argument("--cpu-compile", action="store_true", help="also measure torch.compile on CPU (slow to build)")
    parser.add_argument("--quick", action="store_true", help="fewer and shorter rounds (and 128px on CPU): a smoke run")
    parser.add_argument("--tiny", action="store_true", help=argparse.SUPPRESS)  # tests: a toy model, 32px
    parser.add_argument("--json", metavar="PATH", help="also write {environment, config, results} to PATH")


def run(args: argparse.Namespace) -> int:
    o = resolve_options(args)
    print(f"bench step: {o['model']} model, {o['image_size']}px, batch {o['batch_size']} on {o['device']}, "
          f"{torch.get_num_threads()} threads, {o['repeats']} rounds of {o['steps']} steps", flush=True)
    if o["device"].type != "cuda":
        print("no GPU on this machine: GPU-only rows are recorded as skipped; no MFU", flush=True)
    payload = run_step(device=str(o["device"]), model=o["model"], batch_size=o["batch_size"],
                       image_size=o["image_size"], steps=o["steps"], warmup=o["warmup"], repeats=o["repeats"],
                       modes=",".join(o["modes"]), quick=o["quick"], cpu_compile=o["cpu_compile"], tiny=o["tiny"],
                       progress=lambda s: print(s, flush=True))
    shown = [{**r, "skipped": "yes" if r.get("skipped") else ""} for r in payload["results"]]
    print_table(f"training step, {o['model']} model, {o['image_size']}px, batch {o['batch_size']}, {o['device']}",
                shown, columns=("name", "precision", "adam", "img_per_s", "step_ms", "ratio", "mfu", "skipped"))
    for r in payload["results"]:
        if r.get("skipped"):
            print(f"  skipped {r['name']}: {r['skipped']}")
    for note in payload["notes"]:
        print(f"note: {note}")
    print(summary_line(payload))
    if args.json:
        write_json(args.json, payload)
    return 0


if __name__ == "__main__":
    _parser = argparse.ArgumentParser(prog="python -m p2p.bench.step", description=__doc__.splitlines()[0])
    add_arguments(_parser)
    raise SystemExit(run(_parser.parse_args()))
