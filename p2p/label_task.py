"""The `labels` task: a semantic label map (and pix2pixHD's instance boundaries) -> the photo.

The batch is A|B side by side as for `paired` (p2p.data.label_maps: A channel 0 the class id, channel 1
the boundary 0/255; B the photo), cropped and flipped as one 6-channel image. On the device the
ids become `task.label_nc` one-hot channels (pix2pixHD's scatter of ones into zeros), and with
`task.instance_boundaries` the boundary channel is appended as 0/1, so the generator sees
label_nc (+1) channels of 0 and 1, as pix2pixHD's does; the target is the photo in [-1, 1].

Ids are checked on the CPU before the batch reaches the device (p2p.data.label_maps.check_batch_ids, called by
the loaders' wrapper in p2p.data.label_loaders): an id >= label_nc in a CUDA scatter or one_hot
is a device-side assert that kills the process with no word of which file was wrong.
"""

from __future__ import annotations

import numpy as np
import torch

from p2p.errors import UsageError
from p2p.data.label_maps import MAX_LABEL_NC
from p2p.tasks import Task, _signed, _to_unit, _unsigned


def one_hot(ids: torch.Tensor, label_nc: int, dtype=torch.float32) -> torch.Tensor:
    """N x H x W integer ids -> N x label_nc x H x W of 0/1 on the ids' device (a scatter into
    zeros: no N x H x W x C intermediate and permute, as F.one_hot would make)."""
    n, h, w = ids.shape
    out = torch.zeros((n, label_nc, h, w), dtype=dtype, device=ids.device)
    return out.scatter_(1, ids.long().unsqueeze(1), 1.0)


# A fixed colour per class for sample sheets: the input a person can look at
def _palette(n: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(0)
    colours = torch.rand((n, 3), generator=g)
    colours[0] = 0.0
    return colours


class LabelMaps(Task):
    input_resize = "nearest-exact"  # p2p.inference resizes inputs of this task by nearest neighbour

    def __init__(self, cfg, device_step: str = "fused", spec=None):
        super().__init__(cfg, device_step, spec)
        self.label_nc = int(cfg.label_nc)
        self.boundaries = bool(cfg.instance_boundaries)

    def prepare(self, images, size, gen, flip=True, crop_gen=None):
        from p2p.augment import crop_flip

        w = images.shape[-1] // 2
        ab = crop_flip(torch.cat([images[..., :w], images[..., w:2 * w]], dim=1), size, crop_gen, flip)
        return self.convert(ab, gen)

    def encode(self, a: torch.Tensor) -> torch.Tensor:
        """The uint8 A half (N x 3 x H x W) -> the generator's input: one-hot ids (+ boundary)."""
        x = one_hot(a[:, 0], self.label_nc)
        if self.boundaries:
            x = torch.cat([x, (a[:, 1:2] > 127).float()], dim=1)
        return x

    def convert(self, images, gen):
        return self.encode(images[:, :3]), _signed(_to_unit(images[:, 3:]))

    def eval_pair(self, images, gen):
        w = images.shape[-1] // 2
        return _to_unit(images[..., :w]), _to_unit(images[..., w:2 * w])

    def model_input(self, rgb01: torch.Tensor) -> torch.Tensor:
        """The A half as float in [0, 1] (N x 3 x H x W, any size, resized nearest) -> the input.
        Checks the ids here (inference only: one host sync per batch)."""
        a = rgb01.mul(255).round_()
        top = int(a[:, 0].max()) if a.numel() else 0  # a host sync: inference, not the training step
        if top >= self.label_nc:
            raise UsageError(f"a label map has {'an id >= 255' if top >= MAX_LABEL_NC else f'class id {top}'}, "
                             f"outside 0..{self.label_nc - 1} (the model's task.label_nc={self.label_nc})")
        return self.encode(a.to(torch.uint8))

    def output_rgb(self, inp, out):
        return _unsigned(out)

    def input_rgb(self, inp):
        """The one-hot input as a picture: each class its colour, boundaries white."""
        ids = inp[:, :self.label_nc].argmax(1)
        rgb = _palette(self.label_nc).to(inp.device)[ids].permute(0, 3, 1, 2)
        if self.boundaries:
            rgb = torch.maximum(rgb, inp[:, -1:].float().expand(-1, 3, -1, -1))
        return rgb


def instance_maps(folder: str | None, task) -> dict | None:
    """`p2p predict --instances DIR`: {match key: instance map path}, checked against the task."""
    from pathlib import Path

    from p2p.data.label_maps import _by_key

    if task.spec.input_kind != "labels":
        if folder:
            raise UsageError("--instances only applies to a model of task labels")
        return None
    if task.boundaries and not folder:
        raise UsageError("this model was trained with task.instance_boundaries: give its instance maps with "
                         "--instances DIR (matched to the label maps by name)")
    if folder and not task.boundaries:
        raise UsageError("--instances: this model was trained without instance boundaries (task.instance_boundaries=false)")
    if not folder:
        return None
    if not Path(folder).is_dir():
        raise UsageError(f"--instances {folder} is not a folder")
    return {Path(k).name: p for k, p in _by_key(Path(folder)).items()}


def model_size(geometry, h: int, w: int) -> tuple[int, int]:
    """(h, w) the model sees an h x w input at (p2p.inference.predict's resize)."""
    from p2p.inference import scaled_size

    if geometry.mode == "full":
        return h, w
    if geometry.mode == "squash":
        return geometry.size, geometry.size
    return scaled_size(h, w, geometry.size)


def label_input(path, instances: dict | None, geometry, task, max_pixels: int) -> torch.Tensor:
    """A label map file (and its instance map from `instances`) -> the A half as float in [0, 1],
    1 x 3 x H x W at the map's size: what `p2p.inference.predict` takes for this task.

    Boundaries are taken where pix2pixHD takes them, on the instance map NEAREST-resized to the
    size the model sees, and brought back to the map's size by NEAREST: predict's own NEAREST
    resize to the model's size then gives exactly those boundaries (both sample pixel centres)."""
    from pathlib import Path

    from p2p.data.label_maps import LabelMapError, a_half, check_ids, instance_edges, match_key, read_id_map, resize_nearest

    try:
        ids = read_id_map(path, "label map", max_pixels)
        check_ids(ids, task.label_nc, "label map")
        a = a_half(ids, None)
        if instances is not None:
            found = instances.get(match_key(Path(path).stem))
            if found is None:
                raise UsageError(f"{path}: no instance map for it in --instances (matched by name)")
            inst = read_id_map(found, "instance map", max_pixels)
            if inst.shape != ids.shape:
                raise LabelMapError("size_mismatch", f"its instance map {found} is {inst.shape[1]}x{inst.shape[0]}, "
                                                     f"the label map {ids.shape[1]}x{ids.shape[0]}")
            h, w = ids.shape
            sh, sw = model_size(geometry, h, w)
            if (sh, sw) != (h, w) and sh <= h and sw <= w:
                edges = resize_nearest(instance_edges(resize_nearest(inst, (sw, sh))).astype(np.int32), (w, h))
            else:
                edges = instance_edges(inst)
            a[..., 1] = (edges > 0) * np.uint8(255)
    except LabelMapError as e:
        raise UsageError(f"{path}: {e}") from None
    return torch.from_numpy(a).permute(2, 0, 1)[None].float().div_(255)
