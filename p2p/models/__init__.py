"""Models: the U-Net and ResNet generators, pix2pixHD's global generator and local enhancer, the
PatchGAN, PixelGAN and multi-scale discriminators, weight init and loading.

`build_generator` / `build_discriminator` make plain modules from an architecture
(`p2p.models.arch`); nothing here knows about DDP, AMP or devices. `load_generator(path)` /
`load_discriminator(path)` (`p2p.models.loading`) accept a p2p checkpoint, a bare p2p state dict
or an official pix2pix `latest_net_G.pth` / `latest_net_D.pth`, infer the architecture from the
tensors, and return a ready module in eval mode; `load_generator(path, weights="auto"|"ema"|"raw")`
chooses between a checkpoint's EMA and raw generator weights. A file that is missing, truncated,
corrupt (p2p checksums) or holds anything else raises `p2p.errors.CheckpointError`, one line.
"""

from __future__ import annotations

from p2p.models.arch import (GENERATORS, DiscriminatorArch, GeneratorArch, arch_dict, architectures,
                             build_discriminator, build_generator, hd_arch, init_weights, resnet_arch, same_arch)
from p2p.models.loading import (WEIGHTS, discriminator_arch_of, generator_arch_of, load_discriminator,
                                load_generator, read_checkpoint, select_generator_weights)
from p2p.models.multiscale import MultiscaleDiscriminator
from p2p.models.patchgan import PatchDiscriminator, PixelDiscriminator
from p2p.models.pix2pixhd import GlobalGenerator, LocalEnhancer
from p2p.models.resnet import ResnetGenerator
from p2p.models.unet import UNetGenerator

__all__ = [
    "GeneratorArch", "DiscriminatorArch", "architectures", "UNetGenerator", "ResnetGenerator", "PatchDiscriminator",
    "PixelDiscriminator", "MultiscaleDiscriminator", "GENERATORS", "WEIGHTS", "build_generator",
    "build_discriminator", "init_weights", "load_generator", "load_discriminator", "read_checkpoint",
    "generator_arch_of", "discriminator_arch_of", "select_generator_weights", "arch_dict", "same_arch",
    "resnet_arch", "hd_arch", "GlobalGenerator", "LocalEnhancer",
]
