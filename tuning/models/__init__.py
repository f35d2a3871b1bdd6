"""Architectures whose layers are grouped into named, ordered blocks.

Every model is a Flax linen module called as `model.apply(variables, images,
train=..., trainable_from=k)` on NHWC images; `type(model).block_names` lists its
blocks from input to `head`, and blocks below index `k` are frozen.
"""
from __future__ import annotations

import functools

import flax.linen as nn

from tuning.models.mobilenet_v2 import MobileNetV2
from tuning.models.resnet import ResNet

ARCHITECTURES = {
    "mobilenet_v2": MobileNetV2,
    "resnet18": functools.partial(ResNet, units=(2, 2, 2, 2)),
}


def create(arch: str, num_classes: int, **kwargs) -> nn.Module:
  if arch not in ARCHITECTURES:
    raise ValueError(f"unknown arch {arch!r}; expected one of {sorted(ARCHITECTURES)}")
  return ARCHITECTURES[arch](num_classes=num_classes, **kwargs)
