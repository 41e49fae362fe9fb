"""p2p: pix2pix image-to-image GANs (U-Net generator + PatchGAN discriminator) at HPC scale.

The dependency direction runs one way: commands -> library -> primitives.

- `cli/`: the `p2p` command, one module per subcommand (parse arguments, print, exit codes);
  nothing in the package imports it.
- library: `config/` (typed settings), `train/` (step, networks, run, loop, checkpoints,
  validation), `inference` (how a trained generator sees an image), `evaluation` (scores),
  `data/` (loaders, sample order, held-out images, `shards/` for `p2p shard`), `models/`
  (plain nn.Modules and official weights), `tasks` (uint8 batch -> model input/target),
  `slurm/` (submitit job, submission, registry), `bench/` (benchmark runners).
- primitives: `color` (RGB<->Lab on tensors), `metrics`, `losses`, `augment`, `atomic`
  (atomic writes), `dist` (rank/world/device from Slurm, torchrun or nothing), `errors`.
"""

__version__ = "0.1.0"
