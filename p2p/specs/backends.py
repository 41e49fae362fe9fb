"""Data backends: what each one needs and can do, registered once each (`BACKENDS`).

Everything that offers, resolves, checks or reports a backend reads this table: the config's
choices for data.backend, the `auto` rule (p2p.data.resolve_backend), the loader it builds
(p2p.data.build_loader), held-out data (shards or a folder), the trainer's notices, the
checkpoint resume on another world size (p2p.train.position), Slurm submission and the data
benchmark. A new backend is its loader module and one `BACKENDS.register` line below.
"""

from __future__ import annotations

from dataclasses import dataclass

from p2p.specs import Table


@dataclass(frozen=True)
class BackendSpec:
    name: str
    loader: str  # "module:Class" of its loader (p2p.data's loader contract), imported when built
    needs_shards: bool  # reads shard folders made by `p2p shard` (else image folders and `embedded`)
    devices: tuple[str, ...] = ("cpu", "cuda")  # device types it runs on
    auto_devices: tuple[str, ...] = ()  # device types on which data.backend=auto may choose it
    auto_rank: int = 0  # among those auto may choose for a source, the lowest rank wins
    package: str = ""  # a module that must import (an optional extra), and how to get it
    install: str = ""
    # whether it can go on with an epoch begun under another world or batch size; why not
    continues_other_world: bool = True
    cannot_continue: str = ""
    worker_kinds: tuple[str, ...] = ("process",)  # the data.worker_kind values it honours
    workers_are: str = "loads in worker processes"  # said when worker_kind is not one of them
    cpu_jpeg_decoder: bool = False  # decodes JPEGs on the CPU with p2p.data.decode (its decoder is reported)
    bench_rows: str = ""  # "module:function" adding its rows to `p2p bench data` (p2p.bench.data_rows)
    label_loader: str = ""  # "module:function" of its loader for label-map inputs (task labels); "" = none
    cannot_read: str = "it decodes JPEG images on the GPU and has no PNG path"  # why, when it has none

    def reads(self, inputs: str) -> bool:
        """Whether it reads task inputs of kind `inputs` (p2p.specs.tasks.INPUT_KINDS)."""
        return inputs == "rgb" or (inputs == "labels" and bool(self.label_loader))

    def loader_for(self, inputs: str) -> str:
        return self.label_loader if inputs == "labels" else self.loader

    @property
    def needs_gpu(self) -> bool:
        return "cpu" not in self.devices


BACKENDS: Table[BackendSpec] = Table("data.backend")

BACKENDS.register(BackendSpec(
    "folder", "p2p.data.folder:FolderLoader", needs_shards=False, auto_devices=("cpu", "cuda"),
    bench_rows="p2p.bench.data_rows:folder_rows", label_loader="p2p.data.label_loaders:label_folder_loader"))
BACKENDS.register(BackendSpec(
    "wds", "p2p.data.wds:WdsLoader", needs_shards=True, auto_devices=("cpu", "cuda"), auto_rank=2,
    worker_kinds=("process", "thread"), cpu_jpeg_decoder=True, bench_rows="p2p.bench.data_rows:wds_rows",
    label_loader="p2p.data.label_loaders:label_wds_loader"))
BACKENDS.register(BackendSpec(
    "dali", "p2p.data.dali:DaliLoader", needs_shards=True, auto_devices=("cuda",), auto_rank=0,
    package="nvidia.dali",
    install="pip install 'p2p[dali]' (CUDA 13 driver) or 'p2p[dali-cuda12]' (CUDA 12 driver)",
    continues_other_world=False,
    cannot_continue="DALI's reader shuffles inside each rank's range with its own buffer, so which images the "
                    "old ranks read is not known",
    workers_are="decodes in data.workers threads of its own", bench_rows="p2p.bench.data_rows:dali_rows"))
BACKENDS.register(BackendSpec(
    "nvjpeg", "p2p.data.nvjpeg:NvjpegLoader", needs_shards=True, devices=("cuda",), auto_devices=("cuda",),
    auto_rank=1, worker_kinds=("process", "thread"), bench_rows="p2p.bench.data_rows:nvjpeg_rows"))
