"""The benchmark suites of `p2p bench`: one spec each, registered once in SUITES.

`p2p bench` (p2p.cli.bench) offers one sub-command per spec, in this order; `p2p bench all` runs
the suites that have a `section`; its report (p2p.bench.report) renders each such section with
the spec's title and columns; benchmarks/gpu-check.sh runs the suites that have a `gpu_check`
part and p2p.bench.gpu_check keeps the row keys that part names. A new suite is one module in
p2p.bench (its flags and its run) and one registration line here.

Every reference is "module:attribute" in the library (p2p.bench), imported when the suite is
used: this module imports nothing heavy, and the library never imports the command (p2p.cli).
"""

from __future__ import annotations

from dataclasses import dataclass

from p2p.specs import Table

# (row key, column header, format) of a report table: "s" as text, "x" a ratio, "%" a share,
# else a format spec; a key no row has leaves its column out
Columns = tuple[tuple[str, str, str], ...]


@dataclass(frozen=True)
class GpuCheckPart:
    """How benchmarks/gpu-check.sh runs a suite: `p2p bench NAME ARGS --json WORK/NAME.json`.
    In the arguments `{shards}` is the check's shard folder and `{backends}` the data backends
    the node can run; `keys` are the row keys the check's summary keeps."""

    args: str  # on the GPU node
    stub_args: str  # with P2P_GPU_CHECK_STUB=1: toy sizes on the CPU
    seconds: int  # its share of the planned 440 s on an H100/H200
    stub_seconds: int  # its share of the stub's 440 s
    keys: tuple[str, ...] = ("name", "img_per_s", "ratio", "skipped")
    # after the GPU trainings' pytest (the first part cut when time runs short), not before it
    last: bool = False
    # "module:function"s: the summary's rows from the suite's JSON (default: its rows, `keys`
    # kept) and one row's line in summary.md (default: img/s and ratio)
    rows: str = ""
    line: str = ""


@dataclass(frozen=True)
class SuiteSpec:
    """A `p2p bench` suite."""

    name: str
    help: str  # one line, for `p2p bench --help`
    arguments: str  # "module:attr", a function(parser) declaring its flags
    run: str  # "module:attr", a function(args, out) -> exit code (out: p2p.bench.suite_io.SuiteOutput)
    section: str | None = None  # "module:attr", its `bench all` section: function(AllOptions, out_dir, progress)
    title: str = ""  # the heading of its section in report.md
    columns: Columns = ()  # the report table of its section's rows
    plot: str = "p2p.bench.report:plot_throughput"  # "module:attr", function(rows, title, path) -> path | None
    report: str | None = None  # "module:attr", function(section, out_dir, hardware) -> lines, for a section
    # whose rows are not a table (profile); replaces the table and the plot
    gpu_check: GpuCheckPart | None = None
    # its smallest run (seconds on a CPU), which tests/test_suite_specs.py makes of every suite:
    # flags, where {tmp} is a new folder and {shards} a small shard folder; and where it writes
    # its JSON. No smoke run: the suite needs what a CPU machine has not.
    smoke: str = ""
    smoke_json: str = "{tmp}/out.json"


SUITES: Table[SuiteSpec] = Table("bench suite")

SUITES.register(SuiteSpec(
    "lab", "RGB->Lab: p2p batched vs skimage per image",
    "p2p.bench.suites.lab:add_arguments", "p2p.bench.suites.lab:run", "p2p.bench.all_bench:lab_section",
    "RGB to Lab conversion",
    (("name", "row", "s"), ("device", "device", "s"), ("img_per_s", "img/s", ".1f"), ("ratio", "vs baseline", "x"),
     ("max_abs_diff_vs_skimage", "max abs diff", ".3g")),
    gpu_check=GpuCheckPart("--device cuda", "--device cpu --quick --images 4 --size 64", 10, 30,
                           ("name", "device", "img_per_s", "ratio", "max_abs_diff_vs_skimage")),
    smoke="--device cpu --quick --images 2 --size 32 --repeats 1 --json {tmp}/out.json"))
SUITES.register(SuiteSpec(
    "step", "training step img/s: baseline vs each optimisation (and MFU on GPU)",
    "p2p.bench.suites.step:add_arguments", "p2p.bench.suites.step:run", "p2p.bench.all_bench:step_section",
    "Training step",
    (("name", "mode", "s"), ("precision", "precision", "s"), ("channels_last", "channels_last", "s"),
     ("adam", "Adam", "s"), ("sync_every_step", "sync/step", "s"), ("compile", "compile", "s"),
     ("cuda_graphs", "graphs", "s"), ("img_per_s", "img/s", ".2f"), ("step_ms", "ms/step", ".0f"),
     ("ratio", "vs baseline", "x"), ("mfu", "MFU", "%")),
    gpu_check=GpuCheckPart("--device cuda --model full --batch-size 64 --steps 10 --repeats 3 --warmup 2",
                           "--device cpu --quick --ngf 8 --ndf 8 --num-downs 5 --image-size 32 --batch-size 2 "
                           "--steps 1 --repeats 1 --warmup 1", 60, 45,
                           ("name", "precision", "img_per_s", "ratio", "mfu", "peak_flops", "warmup_s",
                            "cuda_graphs_in_effect", "notices", "skipped")),
    smoke="--device cpu --ngf 8 --ndf 8 --num-downs 5 --image-size 32 --batch-size 2 --steps 1 --warmup 1 --repeats 1 "
    "--modes channels_last --json {tmp}/out.json"))
SUITES.register(SuiteSpec(
    "data", "input pipelines (wds, dali, nvjpeg, folder) vs the per-image PIL + skimage baseline",
    "p2p.bench.suites.data:add_arguments", "p2p.bench.suites.data:run", "p2p.bench.all_bench:data_section",
    "Input pipelines (files to model-ready tensors)",
    (("name", "row", "s"), ("stage", "stage", "s"), ("workers", "workers", "s"), ("main_threads", "main threads", "s"),
     ("img_per_s", "img/s", ".1f"), ("ratio", "vs baseline", "x"), ("gpu_mem_peak_mb", "GPU MB (torch peak)", ".0f"),
     ("gpu_mem_used_mb", "GPU MB (device)", ".0f")),
    gpu_check=GpuCheckPart("--source {shards} --images 256 --repeats 2 --backends {backends}",
                           "--source {shards} --quick --backends wds", 20, 30,
                           ("name", "backend", "stage", "device", "img_per_s", "ratio", "decoder", "skipped")),
    smoke="--source {shards} --quick --backends wds --batch-size 4 --image-size 32 --json {tmp}/out.json"))
SUITES.register(SuiteSpec(
    "decode", "JPEG decoders on the shards, one core each: img/s and pixel differences",
    "p2p.bench.suites.decode:add_arguments", "p2p.bench.suites.decode:run",
    smoke="--source {shards} --images 8 --repeats 1 --json {tmp}/out.json"))
SUITES.register(SuiteSpec(
    "ranks", "weak scaling over processes, the same batch per rank (gloo on CPU, NCCL on GPUs)",
    "p2p.bench.suites.ranks:add_arguments", "p2p.bench.suites.ranks:run", "p2p.bench.all_bench:ranks_section",
    "Weak scaling over processes",
    (("name", "row", "s"), ("threads_per_process", "threads/proc", "s"), ("global_batch", "global batch", "s"),
     ("img_per_s", "img/s (global)", ".2f"), ("img_per_s_per_process", "img/s per process", ".2f"),
     ("efficiency", "efficiency", "%"), ("ratio", "speed-up", "x")),
    plot="p2p.bench.report:plot_scaling",
    smoke="--procs 1 --device cpu --ngf 8 --ndf 8 --num-downs 5 --image-size 32 --batch-size 2 --steps 1 --warmup 1 "
    "--repeats 1 --threads 1 --json {tmp}/out.json"))
SUITES.register(SuiteSpec(
    "profile", "torch.profiler trace and top operators of a real run",
    "p2p.bench.suites.profile:add_arguments", "p2p.bench.suites.profile:run", "p2p.bench.all_bench:profile_section",
    "Profile of a real run", report="p2p.bench.report:profile_lines",
    smoke="--quick --steps 1 --warmup 1 --out {tmp}/profile model.ngf=8 model.ndf=8 model.num_downs=5 "
    "data.image_size=32 data.load_size=40 train.batch_size=2 train.device=cpu data.workers=0",
    smoke_json="{tmp}/profile/profile.json"))
SUITES.register(SuiteSpec(
    "memory", "peak memory of one training step over resolution x generator x precision x checkpointing, and the "
    "largest batch that fits --budget-gb",
    "p2p.bench.suites.memory:add_arguments", "p2p.bench.suites.memory:run",
    # issue 25's GPU rows, the most asked-for first: pix2pixHD's generators at 2048x1024 and 1024
    gpu_check=GpuCheckPart("--device cuda --one-process --resolutions 2048x1024,1024 --generators local,global "
                           "--precisions bf16 --checkpointing none,all --budget-gb 80",
                           "--device cpu --resolutions 256 --generators unet --precisions fp32 --checkpointing none "
                           "--budget-gb 80", 25, 35, last=True, rows="p2p.bench.gpu_check:memory_rows",
                           line="p2p.bench.gpu_check:memory_line"),
    smoke="--resolutions 256 --generators unet --precisions fp32 --checkpointing none --device cpu "
    "--timeout-s 0.5 --json {tmp}/out.json"))
SUITES.register(SuiteSpec(
    "scale", "growth with the dataset: N COCO-shaped images sharded, planned, trained and resumed",
    "p2p.bench.suites.scale:add_arguments", "p2p.bench.suites.scale:run",
    smoke="--simulate --sizes 1000 --worlds 2 --changes 2:1 --shard-size 100 --batch-size 4 "
    "--work {tmp}/work --out {tmp}/out", smoke_json="{tmp}/out/plan-scale.json"))
SUITES.register(SuiteSpec(
    "all", "every suite with a report section into one folder: results.json, report.md, plots",
    "p2p.bench.suites.all:add_arguments", "p2p.bench.suites.all:run",
    smoke="--quick --sections lab --device cpu --ngf 8 --ndf 8 --num-downs 5 --image-size 32 --batch-size 2 "
    "--out {tmp}/all", smoke_json="{tmp}/all/results.json"))
SUITES.register(SuiteSpec(
    "report", "re-render report.md and the plots of a `p2p bench all` results.json",
    "p2p.bench.suites.all:add_report_arguments", "p2p.bench.suites.all:run_report",
    smoke="{tmp}/results.json", smoke_json=""))
SUITES.register(SuiteSpec(
    "gpu-report", "summarise a benchmarks/gpu-check.sh folder into gpu-check.json and summary.md (exit 1 when a "
    "check did not pass)", "p2p.bench.suites.gpu_report:add_arguments", "p2p.bench.suites.gpu_report:run",
    smoke="{tmp} --quiet", smoke_json="{tmp}/gpu-check.json"))


def sections() -> tuple[str, ...]:
    """The suites `p2p bench all` runs and its report renders, in order."""
    return tuple(s.name for s in SUITES if s.section)


def gpu_check_parts() -> tuple[SuiteSpec, ...]:
    """The suites benchmarks/gpu-check.sh runs, in order."""
    return tuple(s for s in SUITES if s.gpu_check)
