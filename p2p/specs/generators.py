"""The generators p2p trains and loads: one `GeneratorSpec` per `model.generator` choice,
registered in `GENERATORS`.

A spec says which `model.*` keys the generator reads and which `GeneratorArch` field (what a
checkpoint records under `arch`) each fills (`reads`), how it is built from that arch (`build`,
"module:attr"), how its official state dicts are recognised and their architecture read off the
tensors (`layout`, "module:attr": `f(state, dropout) -> GeneratorArch | None`, on p2p's tensor
names; `from_official` renames the official ones first where they differ), and its stride: the
one rule, for the config's image size check and for a built network alike, that input sides
must be multiples of 2 ** (fixed downsamplings + the arch fields that count more).

Adding a generator: a module with its network and its build/layout functions, one
`GENERATORS.register(...)` line below, and tests/test_generator_specs.py runs it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Mapping

from p2p.specs import Table

SHARED = ("ngf", "norm", "dropout")  # the model.* keys every generator reads into its GeneratorArch field of that name


@dataclass(frozen=True)
class GeneratorSpec:
    name: str  # the model.generator value and the GeneratorArch `kind`
    help: str  # what it is, for model.generator's help line
    build: str  # "module:attr": f(GeneratorArch) -> nn.Module
    layout: str  # "module:attr": f(state dict in p2p's names, dropout) -> its GeneratorArch, or None if not its layout
    reads: tuple[tuple[str, str], ...] = ()  # (model.* key, GeneratorArch field) beyond SHARED
    fixed_downsamplings: int = 0  # stride-2 steps no setting changes (the official ResNet: 2)
    stride_fields: tuple[str, ...] = ()  # GeneratorArch fields that count further stride-2 steps
    min_strides: int = 1  # input sides at least this many strides (pix2pixHD: 2, its residual blocks reflect-pad)
    stride_why: str = ""  # why sides are multiples of the stride, for the config's error
    dropout: bool = True  # whether model.dropout applies (pix2pixHD's have none)
    from_official: str = ""  # "module:attr": f(state) -> state in p2p's names, or None if not its official layout
    to_official: str = ""  # "module:attr": the inverse, for `p2p export --format official` ("" = the same names)
    card: str = ""  # the model card's line, formatted with the model.* values, `norm`/`drop` in words and `stride`
    # enhancers around a global generator that a global run trains first: model.init_global and
    # train.fix_global_steps apply (p2p.train.coarse_to_fine)
    coarse_to_fine: bool = False

    @property
    def fields(self) -> tuple[str, ...]:
        """The GeneratorArch fields it reads, beyond the channels and SHARED."""
        return tuple(f for _, f in self.reads)

    def stride(self, arch: Mapping) -> int:
        """What input sides must be multiples of, for these GeneratorArch values (a mapping)."""
        return 2 ** (self.fixed_downsamplings + sum(int(arch[f]) for f in self.stride_fields))

    def arch_values(self, model) -> dict:
        """The GeneratorArch fields it reads, from a ModelConfig."""
        values = {f: getattr(model, key.partition(".")[2]) for key, f in self.reads}
        values.update({k: getattr(model, k) for k in SHARED})
        if not self.dropout:
            values["dropout"] = False
        return values

    def config_stride(self, model) -> int:
        """The stride of the generator a ModelConfig describes."""
        return self.stride(self.arch_values(model))


GENERATORS: Table[GeneratorSpec] = Table("model.generator")

_A, _O, _H = "p2p.models.arch", "p2p.models.official", "p2p.models.hd_layout"
GENERATORS.register(GeneratorSpec(
    "unet", "the official unet_256/unet_128", f"{_A}:build_unet", f"{_O}:unet_arch_of",
    reads=(("model.num_downs", "num_downs"),), stride_fields=("num_downs",),
    stride_why="divisible by 2**model.num_downs, as the U-Net halves it model.num_downs times (lower "
               "model.num_downs or pick another size)",
    from_official=f"{_O}:unet_from_official", to_official=f"{_O}:generator_to_official",
    card="U-Net generator, {num_downs} levels (input sides padded to multiples of {stride}), ngf {ngf}, {norm}, {drop}"))
GENERATORS.register(GeneratorSpec(
    "resnet", "the official resnet_9blocks/6blocks", f"{_A}:build_resnet", f"{_O}:resnet_arch_of",
    reads=(("model.n_blocks", "n_blocks"),), fixed_downsamplings=2,
    stride_why="the ResNet generator downsamples twice",
    card="ResNet generator, {n_blocks} residual blocks, ngf {ngf}, {norm}, {drop}"))
GENERATORS.register(GeneratorSpec(
    "global", "pix2pixHD's GlobalGenerator", f"{_A}:build_global", f"{_H}:global_arch_of",
    reads=(("model.n_downsample_global", "num_downs"), ("model.n_blocks_global", "n_blocks")),
    stride_fields=("num_downs",), min_strides=2, dropout=False,
    stride_why="pix2pixHD's global generator halves it model.n_downsample_global times and its residual blocks "
               "reflect-pad 2 px",
    card="pix2pixHD global generator: {n_downsample_global} downsamplings, {n_blocks_global} residual blocks, "
         "ngf {ngf}, {norm}"))
GENERATORS.register(GeneratorSpec(
    "local", "pix2pixHD's LocalEnhancer around a global generator of 2**n_local_enhancers x ngf",
    f"{_A}:build_local", f"{_H}:local_arch_of",
    reads=(("model.n_downsample_global", "num_downs"), ("model.n_blocks_global", "n_blocks"),
           ("model.n_local_enhancers", "n_local_enhancers"), ("model.n_blocks_local", "n_blocks_local")),
    stride_fields=("num_downs", "n_local_enhancers"), min_strides=2, dropout=False, coarse_to_fine=True,
    stride_why="pix2pixHD's local enhancer halves it model.n_downsample_global + model.n_local_enhancers times "
               "and its global part's residual blocks reflect-pad 2 px",
    card="pix2pixHD local generator: {n_downsample_global} downsamplings, {n_blocks_global} residual blocks under "
         "{n_local_enhancers} local enhancer(s) of {n_blocks_local} blocks, ngf {ngf}, {norm}"))
