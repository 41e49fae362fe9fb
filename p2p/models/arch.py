"""What a network is, as plain data (`GeneratorArch`, `DiscriminatorArch`: what a p2p checkpoint
records under `arch`), and the one place that turns it into a module, plus the official init."""

from __future__ import annotations

from dataclasses import asdict, dataclass

from torch import nn
from torch.nn import init

from p2p.errors import UsageError
from p2p.models.multiscale import MultiscaleDiscriminator
from p2p.models.patchgan import PatchDiscriminator, PixelDiscriminator
from p2p.models.pix2pixhd import GlobalGenerator, LocalEnhancer
from p2p.models.resnet import ResnetGenerator
from p2p.models.unet import UNetGenerator
from p2p.specs import load
from p2p.specs.generators import GENERATORS

# the GeneratorArch fields only some generators read (p2p.specs.generators: each spec's `reads`)
OPTIONAL_FIELDS = ("num_downs", "n_blocks", "n_local_enhancers", "n_blocks_local")


@dataclass
class GeneratorArch:
    """A generator of kind `kind` (a name in p2p.specs.generators.GENERATORS), which says which
    of the optional fields it reads: a U-Net's `num_downs` levels; the official ResnetGenerator's
    `n_blocks` residual blocks (its two downsamplings are fixed); pix2pixHD's `global` generator's
    `num_downs` downsamplings and `n_blocks` residual blocks, and its `local` enhancer (that
    global generator at 2**n_local_enhancers x ngf under `n_local_enhancers` enhancers of
    `n_blocks_local` blocks). The fields a kind does not read are 0, and dropout is off for the
    kinds without dropout, so two archs of the same network are equal."""

    in_channels: int
    out_channels: int
    num_downs: int = 8
    ngf: int = 64
    norm: str = "batch"
    dropout: bool = True
    kind: str = "unet"
    n_blocks: int = 0
    n_local_enhancers: int = 0
    n_blocks_local: int = 0

    def __post_init__(self):
        spec = GENERATORS[self.kind]
        for name in OPTIONAL_FIELDS:
            if name not in spec.fields:
                setattr(self, name, 0)
        self.dropout = self.dropout and spec.dropout

    @property
    def stride(self) -> int:
        """Input sides must be multiples of this (the spec's rule)."""
        return GENERATORS[self.kind].stride(asdict(self))


def resnet_arch(in_channels: int, out_channels: int, n_blocks: int, ngf: int, norm: str,
                dropout: bool) -> GeneratorArch:
    return GeneratorArch(in_channels, out_channels, 0, ngf, norm, dropout, "resnet", n_blocks)


def hd_arch(kind: str, in_channels: int, out_channels: int, ngf: int, n_downsample_global: int,
            n_blocks_global: int, n_local_enhancers: int, n_blocks_local: int, norm: str) -> GeneratorArch:
    """pix2pixHD's `global` or `local` generator (no dropout: pix2pixHD has none; a global one
    has no enhancers, whatever they are given as)."""
    return GeneratorArch(in_channels, out_channels, n_downsample_global, ngf, norm, False, kind, n_blocks_global,
                         n_local_enhancers, n_blocks_local)


@dataclass
class DiscriminatorArch:
    in_channels: int
    ndf: int = 64
    n_layers: int = 3
    norm: str = "batch"
    num_d: int = 1  # > 1: pix2pixHD's multi-scale discriminator of num_d PatchGANs


def architectures(cfg, task) -> tuple[GeneratorArch, DiscriminatorArch]:
    """The networks of a run's config (`cfg.model`) for its task: G maps the task's input channels
    to its output channels; D sees both, concatenated."""
    m = cfg.model
    g = GeneratorArch(task.in_channels, task.out_channels, kind=m.generator,
                      **GENERATORS[m.generator].arch_values(m))  # the keys its spec reads
    d = DiscriminatorArch(task.in_channels + task.out_channels, m.ndf, m.n_layers_d, m.norm, m.num_d)
    return g, d


def build_generator(arch: GeneratorArch) -> nn.Module:
    """The generator `arch` describes, built by its kind's spec."""
    return load(GENERATORS[arch.kind].build)(arch)


# the `build` of each spec registered in p2p.specs.generators


def build_unet(arch: GeneratorArch) -> nn.Module:
    return UNetGenerator(arch.in_channels, arch.out_channels, arch.num_downs, arch.ngf, arch.norm, arch.dropout)


def build_resnet(arch: GeneratorArch) -> nn.Module:
    return ResnetGenerator(arch.in_channels, arch.out_channels, arch.n_blocks, arch.ngf, arch.norm, arch.dropout)


def build_global(arch: GeneratorArch) -> nn.Module:
    return GlobalGenerator(arch.in_channels, arch.out_channels, arch.ngf, arch.num_downs, arch.n_blocks, arch.norm)


def build_local(arch: GeneratorArch) -> nn.Module:
    return LocalEnhancer(arch.in_channels, arch.out_channels, arch.ngf, arch.num_downs, arch.n_blocks,
                         arch.n_local_enhancers, arch.n_blocks_local, arch.norm)


def build_discriminator(arch: DiscriminatorArch) -> nn.Module:
    if arch.num_d > 1:
        return MultiscaleDiscriminator(arch.in_channels, arch.ndf, arch.n_layers, arch.norm, arch.num_d)
    if arch.n_layers == 0:
        return PixelDiscriminator(arch.in_channels, arch.ndf, arch.norm)
    return PatchDiscriminator(arch.in_channels, arch.ndf, arch.n_layers, arch.norm)


def arch_dict(g: GeneratorArch, d: DiscriminatorArch) -> dict:
    """What a p2p checkpoint records so `load_*` needs no config."""
    return {"generator": asdict(g), "discriminator": asdict(d)}


def same_arch(saved: dict | None, g: GeneratorArch, d: DiscriminatorArch) -> bool:
    """Whether a checkpoint's `arch` describes these networks."""
    try:
        if "kind" not in saved["generator"]:  # every p2p checkpoint records it
            return False
        return GeneratorArch(**saved["generator"]) == g and DiscriminatorArch(**saved["discriminator"]) == d
    except (KeyError, TypeError, UsageError):  # UsageError: a kind no spec registers
        return False


def init_weights(net: nn.Module, init_type: str = "normal", gain: float = 0.02) -> nn.Module:
    """The official init: conv weights N(0, gain) (or xavier/kaiming/orthogonal), biases 0,
    BatchNorm weights N(1, gain) and biases 0. Draws from the global torch RNG in module order."""
    for m in net.modules():
        if isinstance(m, (nn.Conv2d, nn.ConvTranspose2d, nn.Linear)):
            if init_type == "normal":
                init.normal_(m.weight, 0.0, gain)
            elif init_type == "xavier":
                init.xavier_normal_(m.weight, gain=gain)
            elif init_type == "kaiming":
                init.kaiming_normal_(m.weight, a=0, mode="fan_in")
            elif init_type == "orthogonal":
                init.orthogonal_(m.weight, gain=gain)
            else:
                raise ValueError(f"unknown init_type {init_type!r}")
            if m.bias is not None:
                init.zeros_(m.bias)
        elif isinstance(m, nn.modules.batchnorm._BatchNorm) and m.affine:
            init.normal_(m.weight, 1.0, gain)
            init.zeros_(m.bias)
    return net
