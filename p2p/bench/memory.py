"""`p2p bench memory`: the peak memory of one training step (generator forward, discriminator
update, generator update: what `train_step` does) over resolutions x generators x precisions x
activation checkpointing, and the largest batch that fits a memory budget: the table to read
before asking for nodes.

Each row runs in a fresh process, so nothing one row allocated (or a caching allocator kept)
counts in the next. What is measured (every row says which, in `source`):
- on a GPU: `torch.cuda.max_memory_allocated` over the step (tensors only; the CUDA context and
  the allocator's cached free blocks come on top: `reserved_gb` is the allocator's own peak,
  `max_memory_reserved`), minus what was allocated before the networks were built;
- on a CPU: the process's anonymous resident memory (`RssAnon` in /proc/self/status), sampled
  every millisecond from the networks' build to the step's end, minus its value before they were
  built (torch and p2p imported): weights, gradients, Adam's moments, activations and whatever
  the C allocator kept. Not the peak resident set (`ru_maxrss`): that also counts the pages of
  the shared libraries, which the kernel drops and reads again under memory pressure, so a
  peak taken while importing torch could hide most of a step (CI read 0.54 GB for a step that
  holds 0.92 GB of parameters, gradients and moments). tracemalloc cannot see torch's
  allocations, so it is not used.
On a GPU the rows may also share one process (`one_process`, for the GPU check's short share):
the allocator's peak is reset before each step and counts live tensors only, so a row sees
nothing of the last one but the few MiB of cuBLAS workspace it kept (subtracted). A CPU's peak
RSS can never be reset, so there every row needs its own process.
Each row is measured at two batch sizes (b and 2b); their difference is the memory per image,
and `max_batch` = the largest batch whose straight-line estimate fits `budget_gb` (estimated,
not measured: say so where it is quoted).

The networks are the full-size presets (`GENERATORS`) on the paired task (3 -> 3 channels, RGB;
pix2pixHD's label maps would add input channels to the first conv only) with random inputs:
memory does not depend on the pixels.
"""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import threading
import time
from dataclasses import asdict, dataclass, field

from p2p.bench.proc_status import status_kb

# the full-size networks each generator is benchmarked as
GENERATORS = {
    "unet": ["model.generator=unet", "model.num_downs=8", "model.ngf=64", "model.ndf=64"],  # unet_256
    "resnet": ["model.generator=resnet", "model.n_blocks=9", "model.ngf=64", "model.ndf=64"],  # resnet_9blocks
    # pix2pixHD's 512p global generator and 1024p local enhancer, with its 2- and 3-scale D and
    # feature matching (its VGG loss needs weights p2p does not download: left out)
    "global": ["model.generator=global", "model.ngf=64", "model.n_downsample_global=4", "model.n_blocks_global=9",
               "model.norm=instance", "model.ndf=64", "model.num_d=2", "loss.lambda_feat=10"],
    "local": ["model.generator=local", "model.ngf=32", "model.n_downsample_global=4", "model.n_blocks_global=9",
              "model.n_local_enhancers=1", "model.n_blocks_local=3", "model.norm=instance", "model.ndf=64",
              "model.num_d=3", "loss.lambda_feat=10"],
}
RESOLUTIONS = {"256": (256, 256), "512": (512, 512), "1024": (1024, 1024), "2048x1024": (1024, 2048)}
PRECISIONS = ("fp32", "bf16", "fp16")
CHECKPOINTING = ("none", "generator", "all")


@dataclass
class MemoryOptions:
    resolutions: tuple[str, ...] = tuple(RESOLUTIONS)
    generators: tuple[str, ...] = tuple(GENERATORS)
    precisions: tuple[str, ...] = ("fp32", "bf16")
    checkpointing: tuple[str, ...] = CHECKPOINTING
    batch_size: int = 1  # measured at this and twice this
    budget_gb: float = 80.0
    device: str = "auto"
    timeout_s: float = 600.0  # per measurement; a row that takes longer is recorded as not measured
    one_process: bool = False  # GPU only: every row in this process (no per-row timeout then)

    def check(self) -> None:
        from p2p.errors import UsageError

        for values, known, flag in ((self.resolutions, RESOLUTIONS, "--resolutions"),
                                    (self.generators, GENERATORS, "--generators"),
                                    (self.precisions, PRECISIONS, "--precisions"),
                                    (self.checkpointing, CHECKPOINTING, "--checkpointing")):
            bad = [v for v in values if v not in known]
            if bad or not values:
                raise UsageError(f"{flag} {','.join(values)!r}: choose from {', '.join(known)}")
        if self.batch_size < 1 or self.budget_gb <= 0 or self.timeout_s <= 0:
            raise UsageError("--batch-size, --budget-gb and --timeout-s must be positive")
        if self.device not in ("auto", "cpu", "cuda"):
            raise UsageError(f"--device {self.device!r}: choose auto, cpu or cuda")
        if self.one_process and self.device == "cpu":
            raise UsageError(ONE_PROCESS_CPU)


ONE_PROCESS_CPU = ("--one-process: GPU only (a CPU process's peak resident set never goes down, so each CPU row "
                   "needs a fresh process)")


@dataclass
class Measurement:
    resolution: str
    generator: str
    precision: str
    checkpointing: str
    batch_size: int
    device: str = ""
    peak_bytes: int | None = None
    seconds: float | None = None
    skipped: str = ""
    extra: dict = field(default_factory=dict)


def _resolve_device(device: str) -> str:
    import torch

    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    return device


def measure_one(resolution: str, generator: str, precision: str, checkpointing: str, batch_size: int,
                device: str) -> dict:
    """One training step's peak memory, in this process: a fresh one (`_in_fresh_process`), or on
    a GPU one that measures every row (`_in_this_process`)."""
    import torch

    from p2p.config import load_config
    from p2p.tasks import build_task
    from p2p.train.nets import build_nets, build_networks
    from p2p.train.recompute import apply_activation_checkpointing
    from p2p.precision import Precision
    from p2p.train.step import train_step

    dev = torch.device(device)
    sampler = None
    if dev.type == "cuda":  # 0 in a fresh process; in a shared one, what earlier rows kept (cuBLAS workspace)
        baseline = torch.cuda.memory_allocated(dev)
    else:
        baseline = anon_resident_bytes()
        sampler = AnonPeak().start()
    cfg = load_config(None, [*GENERATORS[generator], "task.name=paired", "data.image_size=256",
                             "data.load_size=256", f"train.precision={precision}",
                             f"train.activation_checkpointing={checkpointing}", f"train.batch_size={batch_size}"])
    task = build_task(cfg.task)
    torch.manual_seed(0)
    G, D = build_networks(cfg, task)
    G, D = G.to(dev), D.to(dev)
    apply_activation_checkpointing(G, D, checkpointing)
    prec = Precision(precision, dev)
    nets = build_nets(G, D, D, cfg, dev, prec, task=task)
    h, w = RESOLUTIONS[resolution]
    inp = torch.rand(batch_size, task.in_channels, h, w, device=dev) * 2 - 1
    target = torch.rand(batch_size, task.out_channels, h, w, device=dev) * 2 - 1
    out = {}
    if dev.type == "cuda":
        torch.cuda.synchronize(dev)
        # the peaks start again from what is allocated now (weights, inputs): they stay counted
        torch.cuda.reset_peak_memory_stats(dev)
    start = time.perf_counter()
    train_step(nets, inp, target, cfg.loss, prec)  # the first step also allocates Adam's moments
    if dev.type == "cuda":
        torch.cuda.synchronize(dev)  # a CPU-GPU sync point, on purpose: the step must be done
        # both read 0 when CUDA was never initialised (torch.cuda.memory_stats is then {}):
        # here the networks' move to the device did that, so a 0 would be a wrong figure
        peak = torch.cuda.max_memory_allocated(dev) - baseline
        out["reserved_bytes"] = torch.cuda.max_memory_reserved(dev)
        if peak <= 0:
            raise RuntimeError("torch.cuda.max_memory_allocated read no allocation over the step")
    else:
        peak = sampler.stop() - baseline
    return {"peak_bytes": int(peak), "seconds": time.perf_counter() - start,
            "source": SOURCE_CUDA if dev.type == "cuda" else SOURCE_CPU, **out}


SOURCE_CUDA = "CUDA allocator peak (torch.cuda.max_memory_allocated; reserved_gb: max_memory_reserved)"
SOURCE_CPU = ("CPU process anonymous RSS (RssAnon, sampled each ms) at its peak minus before the networks "
              "were built")


def anon_resident_bytes() -> int:
    """This process's anonymous resident memory now (heap and mmapped allocations; not the
    shared libraries' pages)."""
    return status_kb("RssAnon") * 1024


class AnonPeak:
    """The highest `anon_resident_bytes` a thread reads every millisecond until `stop`. The
    step's peak is broad (activations stay alive from the forward until the backward frees
    them), so a millisecond's sampling does not miss it; the ops release the GIL while they run."""

    def __init__(self, interval_s: float = 0.001):
        self.interval_s, self.peak = interval_s, 0
        self._done = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)

    def start(self) -> AnonPeak:
        self.peak = anon_resident_bytes()
        self._thread.start()
        return self

    def _sample(self):
        while not self._done.wait(self.interval_s):
            self.peak = max(self.peak, anon_resident_bytes())

    def stop(self) -> int:
        self._done.set()
        self._thread.join()
        return max(self.peak, anon_resident_bytes())


def _in_this_process(m: Measurement) -> Measurement:
    """A GPU measurement in this process: an out-of-memory step is a row that says so, and the
    next row starts from an emptied cache."""
    import gc

    import torch

    try:
        out = measure_one(m.resolution, m.generator, m.precision, m.checkpointing, m.batch_size, m.device)
    except torch.OutOfMemoryError:
        out = None
    gc.collect()  # the step's tensors, held by the exception's frames until here
    torch.cuda.empty_cache()
    if out is None:
        m.skipped = "out of memory"
        return m
    return _taken(m, out)


def _taken(m: Measurement, out: dict) -> Measurement:
    m.peak_bytes, m.seconds = out["peak_bytes"], out["seconds"]
    m.extra = {k: out[k] for k in ("source", "reserved_bytes") if k in out}
    return m


def _in_fresh_process(m: Measurement, timeout_s: float) -> Measurement:
    spec = json.dumps([m.resolution, m.generator, m.precision, m.checkpointing, m.batch_size, m.device])
    try:
        proc = subprocess.run([sys.executable, "-m", "p2p.bench.memory", spec], capture_output=True, text=True,
                              timeout=timeout_s)
    except subprocess.TimeoutExpired:
        m.skipped = f"not measured: over {timeout_s:.0f} s"
        return m
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("{")]
    if proc.returncode or not lines:
        err = (proc.stderr.strip().splitlines() or ["no output"])[-1]
        if proc.returncode == -signal.SIGKILL:  # what the kernel's (or a cgroup's) OOM killer sends
            m.skipped = "out of memory: killed (SIGKILL)"
        else:
            m.skipped = "out of memory" if "out of memory" in err.lower() else f"failed: {err[:160]}"
        return m
    return _taken(m, json.loads(lines[-1]))


def summarise(small: Measurement, large: Measurement, budget_gb: float) -> dict:
    """A table row from the measurements at b and 2b: peak at b, memory per image, the largest
    batch whose straight-line estimate fits the budget."""
    row = {"resolution": small.resolution, "generator": small.generator, "precision": small.precision,
           "checkpointing": small.checkpointing, "batch_size": small.batch_size, "device": small.device,
           "peak_gb": None, "per_image_gb": None, "max_batch": None, "seconds": small.seconds,
           "source": small.extra.get("source", ""), "skipped": small.skipped}
    if "reserved_bytes" in small.extra:
        row["reserved_gb"] = small.extra["reserved_bytes"] / 1e9
    if small.peak_bytes is None:
        return row
    row["peak_gb"] = small.peak_bytes / 1e9
    if large.peak_bytes is None:
        row["skipped"] = f"batch {large.batch_size}: {large.skipped}"
        return row
    per_image = (large.peak_bytes - small.peak_bytes) / (large.batch_size - small.batch_size)
    row["per_image_gb"] = per_image / 1e9
    row["max_batch"] = largest_batch(row, budget_gb)
    return row


def largest_batch(row: dict, budget_gb: float) -> int | None:
    """The largest batch whose straight line through a row's two measurements (peak at
    `batch_size`, `per_image_gb` more per image) stays within `budget_gb`; None without a slope."""
    if row.get("peak_gb") is None or not row.get("per_image_gb") or row["per_image_gb"] <= 0:
        return None
    fixed = row["peak_gb"] - row["per_image_gb"] * row["batch_size"]
    return max(0, int((budget_gb - fixed) // row["per_image_gb"]))


def run_memory(options: MemoryOptions, progress=print, partial=None) -> dict:
    """The rows in the order of the options (resolution, generator, precision, checkpointing).
    `partial`, when given, receives the payload after every row (`"partial": true`), so a run
    cut at a time limit keeps the rows it measured."""
    from p2p.bench.common import environment
    from p2p.errors import UsageError

    options.check()
    device = _resolve_device(options.device)
    if options.one_process and device != "cuda":
        raise UsageError(ONE_PROCESS_CPU)
    payload = {"environment": environment(), "config": {**asdict(options), "device": device}, "results": []}
    for res in options.resolutions:
        for gen in options.generators:
            for prec in options.precisions:
                for ckpt in options.checkpointing:
                    pair = []
                    for b in (options.batch_size, 2 * options.batch_size):
                        m = Measurement(res, gen, prec, ckpt, b, device)
                        if pair and pair[0].peak_bytes is None:  # a larger batch needs more
                            m.skipped = f"not measured (batch {options.batch_size} was not)"
                        elif options.one_process:
                            m = _in_this_process(m)
                        else:
                            m = _in_fresh_process(m, options.timeout_s)
                        pair.append(m)
                    row = summarise(*pair, options.budget_gb)
                    payload["results"].append(row)
                    shown = f"{row['peak_gb']:.2f} GB" if row["peak_gb"] is not None else row["skipped"]
                    progress(f"  {res} {gen} {prec} checkpointing={ckpt} batch {options.batch_size}: {shown}")
                    if partial is not None:
                        partial({**payload, "partial": True})
    return {**payload, "partial": False}


if __name__ == "__main__":  # one measurement, in the fresh process `_in_fresh_process` started
    print(json.dumps(measure_one(*json.loads(sys.argv[1]))))
