"""p2p: pix2pix image-to-image GANs (U-Net generator + PatchGAN discriminator) at HPC scale.

The package is organised by role: `config` (typed settings), `color` (RGB<->Lab on tensors),
`models` (plain nn.Modules), `tasks` (uint8 batch -> model input/target), `data` (every loader
yields the same uint8 batch), `dist` (rank/world from Slurm, torchrun or nothing), `train`
(step, loop, checkpoints) and `cli` (the `p2p` command).
"""

__version__ = "0.1.0"
