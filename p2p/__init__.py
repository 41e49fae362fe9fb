"""p2p: pix2pix image-to-image GANs (U-Net generator + PatchGAN discriminator) at HPC scale.

The dependency direction runs one way: commands -> library -> primitives.

- `cli/`: the `p2p` command, one module per subcommand (parse arguments, print, exit codes);
  nothing in the package imports it.
- library: `config/` (typed settings), `train/` (step, networks, run, loop, checkpoints,
  validation), `inference` (how a trained generator sees an image), `evaluation` (scores),
  `data/` (loaders, sample order, held-out images, `shards/` for `p2p shard`), `models/`
  (plain nn.Modules and official weights), `tasks` (uint8 batch -> model input/target),
  `slurm/` (submitit job, submission, registry), `bench/` (benchmark runners).
- `api`: `p2p.load_model(path).predict(image)`, the library `p2p predict` runs; `model_folder`
  (safetensors, config.json and the `model_card`) is what `p2p export --format folder` writes.
- primitives: `color` (RGB<->Lab on tensors), `metrics`, `losses`, `augment`, `atomic`
  (atomic writes), `dist` (rank/world/device from Slurm, torchrun or nothing), `errors`.
"""

from p2p.version import __version__

__all__ = ["load_model", "Model", "__version__"]


def __getattr__(name: str):
    """`p2p.load_model` and `p2p.Model` (p2p.api), imported on first use: `import p2p` stays
    cheap (no torch) for commands that never run a model."""
    if name in ("load_model", "Model"):
        from p2p import api

        return getattr(api, name)
    raise AttributeError(f"module 'p2p' has no attribute {name!r}")
