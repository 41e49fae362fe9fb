"""What the tests share (test modules import from here, never from each other or from conftest):

- `runs`: the TINY model/data overrides, running `p2p` and `torchrun` in fresh processes,
  bounded waits, loading checkpoints;
- `requirements`: components a test needs (the local Slurm cluster, DALI, a package): missing,
  the test is skipped with the reason, or fails when CI says the component is required
  (P2P_REQUIRE_SLURM=1, P2P_REQUIRE_DALI=1);
- `image_folders`: COCO-shaped folders, faulty files, paired data and photo batches built from
  the photographs inside scikit-image;
- `official_layout`: the official pix2pix network layout, restated independently, for
  weight-import tests;
- `train_worker.py`, `ddp_data_worker.py`: scripts that torchrun starts (training with an
  injected fault; loaders under a real process group).
"""
