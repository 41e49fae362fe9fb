"""How a trained generator is shown images (`Geometry`), and the one it was trained at: what
`p2p predict` (p2p.inference), validation and a model folder's config (p2p.model_folder) agree on.
The modes are described in p2p.inference."""

from __future__ import annotations

from dataclasses import dataclass

OFFICIAL_TEST_SIZE = 256  # official pix2pix test.py: load_size = crop_size = 256


@dataclass(frozen=True)
class Geometry:
    mode: str = "scale"  # scale | full | squash
    size: int = OFFICIAL_TEST_SIZE  # scale: the short side; squash: the square's side


def training_geometry(task, load_size: int) -> Geometry:
    """How images are shown to a model trained at `load_size` (a p2p.tasks.Task's)."""
    return Geometry("full", 0) if task.spec.predict_geometry == "full" else Geometry("scale", load_size)
