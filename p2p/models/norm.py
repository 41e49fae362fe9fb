"""Normalisation layers as the official pix2pix builds them, plus the bias rule that goes with them."""

from __future__ import annotations

from torch import nn


def norm_layer(norm: str, channels: int) -> nn.Module:
    """batch: BatchNorm2d with affine and running stats; instance: InstanceNorm2d without either
    (the official choice); none: Identity. `syncbatch` is built as BatchNorm2d and converted to
    SyncBatchNorm where the models are wrapped for distribution (p2p.train.wrap)."""
    if norm in ("batch", "syncbatch"):
        return nn.BatchNorm2d(channels, affine=True, track_running_stats=True)
    if norm == "instance":
        return nn.InstanceNorm2d(channels, affine=False, track_running_stats=False)
    if norm == "none":
        return nn.Identity()
    raise ValueError(f"unknown norm {norm!r}; choose batch, syncbatch, instance or none")


def uses_bias(norm: str) -> bool:
    """Official rule: convs before a norm have a bias only with instance norm (not with none)."""
    return norm == "instance"
