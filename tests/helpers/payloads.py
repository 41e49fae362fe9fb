"""Small but real p2p training payloads (networks, Adam states, position), built in-process in
milliseconds: what `Checkpoints.save` writes and a resume checks field by field."""

from __future__ import annotations

import torch

from p2p.models import DiscriminatorArch, GeneratorArch, arch_dict, build_discriminator, build_generator


def tiny_payload(step: int, ema: bool = False) -> dict:
    """A training payload of a U-Net with 5 levels and 8 filters (1 -> 2 channels) and a
    PatchGAN, at `step`, with one Adam step taken so that the optimizers hold moments."""
    torch.manual_seed(step)
    g, d = GeneratorArch(1, 2, 5, 8), DiscriminatorArch(3, 8)
    G, D = build_generator(g), build_discriminator(d)
    opts = [torch.optim.Adam(net.parameters(), lr=2e-4, betas=(0.5, 0.999)) for net in (G, D)]
    for net, opt, x in ((G, opts[0], torch.rand(1, 1, 32, 32)), (D, opts[1], torch.rand(1, 3, 32, 32))):
        net(x).mean().backward()
        opt.step()
    payload = {"format": "p2p", "version": 2, "arch": arch_dict(g, d), "generator": G.state_dict(),
               "discriminator": D.state_dict(), "opt_g": opts[0].state_dict(), "opt_d": opts[1].state_dict(),
               "step": step, "epoch": 0, "batch_in_epoch": step, "best": None, "world_size": 1,
               "batch_size": 1, "epoch_history": [], "images_in_epoch": step}
    if ema:
        payload["generator_ema"] = G.state_dict()
    return payload
