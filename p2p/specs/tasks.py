"""The tasks: what a generator learns, one `TaskSpec` each, registered once in `TASKS`.

A spec is plain data read by everything that depends on the task: the config schema
(`task.name`'s choices), `p2p shard` (which images it keeps, whether samples are A|B pairs),
the loaders (`paired`: the batch is A|B side by side, N x 3 x S x 2S), the networks (the
channels), `p2p predict` (how it shows a model its images and how output and input become the
RGB a user gets) and the device step (the fused kernel, if any). The tensor work is the class
`impl` names (p2p.tasks), imported only when a task is built.

Adding a task: a `p2p.tasks.Task` subclass in a module of its own, and one `TASKS.register`
line here; tests/test_task_specs.py then runs it through the task contract.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Union

from p2p.specs import Table, load

# A channel count, or a function of the task's config (`TaskConfig`) for a task whose channels
# depend on it (e.g. a label map's class count).
Channels = Union[int, Callable[[Any], int]]

INPUT_KINDS = {
    "rgb": "photographs: stored as JPEG, resized with Lanczos (shards) or bicubic/bilinear (loaders)",
    "labels": "class-id maps: stored losslessly (PNG), resized with nearest neighbour, one-hot on the device",
}
SHARD_FILTERS = {
    "any": "every image that decodes, at least --size on its short side",
    "colour": "images with colour only: grayscale ones (mode L, or RGB with max |R-G|,|G-B| <= 3) are skipped",
}
RECOMBINATIONS = {
    "output": "the output is the image (in [-1, 1]); upsampled bicubic to the input's size",
    "input_lightness": "the output is Lab ab, upsampled bilinear and joined to the input's full-resolution L",
}
PREDICT_GEOMETRIES = {
    "scale": "short side resized to the training load size, aspect kept",
    "full": "the whole image at its own resolution (the task's degradations live on that pixel grid)",
}


@dataclass(frozen=True)
class TaskSpec:
    name: str
    """the `task.name` value"""
    impl: str
    """"module:Class" of the p2p.tasks.Task subclass that does the tensor work"""
    summary: str
    """what a model of this task does, one line (help texts, the model card)"""
    in_channels: Channels = 3
    """generator input channels (an int, or a function of the TaskConfig)"""
    out_channels: Channels = 3
    """generator output channels (an int, or a function of the TaskConfig)"""
    paired: bool = False
    """samples are A|B side by side (loaders deliver N x 3 x S x 2S; `p2p shard` pairs images or A/ B/ folders)"""
    input_kind: str = "rgb"
    """how the input images are stored and resized: one of INPUT_KINDS"""
    shard_filter: str = "any"
    """which single images `p2p shard` keeps: one of SHARD_FILTERS"""
    recombination: str = "output"
    """how the generator's output (and the input) become RGB: one of RECOMBINATIONS"""
    predict_geometry: str = "scale"
    """how `p2p predict` shows a model an image by default: one of PREDICT_GEOMETRIES"""
    device_step: str | None = None
    """"module:Class.method" of the fused kernel for crop..normalise (p2p.fused.DeviceStep), or None: eager only"""

    def __post_init__(self):
        for value, allowed, what in ((self.input_kind, INPUT_KINDS, "input_kind"),
                                     (self.shard_filter, SHARD_FILTERS, "shard_filter"),
                                     (self.recombination, RECOMBINATIONS, "recombination"),
                                     (self.predict_geometry, PREDICT_GEOMETRIES, "predict_geometry")):
            if value not in allowed:
                raise ValueError(f"task {self.name}: {what}={value!r} is not one of {', '.join(allowed)}")
        if self.paired and self.shard_filter != "any":
            raise ValueError(f"task {self.name}: a shard filter applies to single images, not to A|B pairs")

    def channels(self, cfg: Any = None) -> tuple[int, int]:
        """(generator input, output) channels for the task config `cfg` (a TaskConfig; only
        tasks whose channels depend on it need it)."""
        return tuple(c(cfg) if callable(c) else c for c in (self.in_channels, self.out_channels))  # type: ignore

    @property
    def image_pairs(self) -> bool:
        """Samples are two RGB images side by side (what `p2p predict --ab` and `p2p shard --b-dir`
        take); a label map with its photo is paired too, but made from its own folders."""
        return self.paired and self.input_kind == "rgb"

    @property
    def geometry(self) -> str:
        """What the loader delivers per sample: "2:1" (A|B side by side) or "square"."""
        return "2:1" if self.paired else "square"

    def sample_shape(self, load_size: int) -> tuple[int, int, int]:
        """C x H x W of one uint8 sample the loaders deliver for this task at `load_size`."""
        return (3, load_size, 2 * load_size if self.paired else load_size)

    def task_class(self) -> type:
        return load(self.impl)


def _label_channels(cfg: Any) -> int:
    """task.label_nc one-hot channels, plus one for pix2pixHD's instance boundaries."""
    return cfg.label_nc + int(cfg.instance_boundaries)


TASKS: Table[TaskSpec] = Table("task.name")

# Order matters once: official pix2pix weights carry no task, and `p2p predict` takes the first
# task here whose channels match theirs, so paired (3->3, the official datasets) precedes restore.
TASKS.register(TaskSpec("colorize", "p2p.tasks:Colorize",
                        "colourises grayscale photographs (the network predicts Lab a*b* from L*; the output keeps "
                        "the input's full-resolution L*)",
                        in_channels=1, out_channels=2, shard_filter="colour", recombination="input_lightness",
                        device_step="p2p.fused:DeviceStep.colorize"))
TASKS.register(TaskSpec("gray2rgb", "p2p.tasks:Gray2RGB", "turns grayscale images into RGB ones",
                        in_channels=1, out_channels=3, device_step="p2p.fused:DeviceStep.gray2rgb"))
TASKS.register(TaskSpec("paired", "p2p.tasks:Paired",
                        "translates images of one domain into another, learned from aligned pairs", paired=True))
TASKS.register(TaskSpec("restore", "p2p.tasks:Restore",
                        "restores photographs degraded by noise, blur and JPEG compression", predict_geometry="full"))
TASKS.register(TaskSpec("labels", "p2p.label_task:LabelMaps",
                        "paints photographs from semantic label maps (pix2pixHD's Cityscapes/ADE20K inputs: class ids, "
                        "optional instance boundaries)",
                        in_channels=_label_channels, paired=True, input_kind="labels"))
