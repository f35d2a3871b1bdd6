"""ResNet (He et al. 2016) with torchvision's layout, in named blocks.

Blocks: `stem, layer1..layer4, head`, the stages of torchvision's ResNet.
"""
from __future__ import annotations

from typing import ClassVar

import flax.linen as nn
import jax

from tuning.models.layers import ClassifierHead, ConvNormAct, run_blocks


class BasicBlock(nn.Module):
  features: int
  strides: int

  @nn.compact
  def __call__(self, x: jax.Array, train: bool) -> jax.Array:
    h = ConvNormAct(self.features, 3, self.strides, name="conv1")(x, train)
    h = ConvNormAct(self.features, 3, activation=None, name="conv2")(h, train)
    if self.strides != 1 or x.shape[-1] != self.features:
      x = ConvNormAct(self.features, 1, self.strides, activation=None, name="downsample")(x, train)
    return nn.relu(x + h)


class Layer(nn.Module):
  features: int
  units: int
  strides: int

  @nn.compact
  def __call__(self, x: jax.Array, train: bool) -> jax.Array:
    for i in range(self.units):
      x = BasicBlock(self.features, self.strides if i == 0 else 1, name=f"unit{i}")(x, train)
    return x


class Stem(nn.Module):
  """7x7/2 conv, BatchNorm, ReLU, 3x3/2 max-pool (padding 1, as torchvision)."""

  @nn.compact
  def __call__(self, x: jax.Array, train: bool) -> jax.Array:
    x = ConvNormAct(64, 7, 2, name="conv")(x, train)
    return nn.max_pool(x, (3, 3), (2, 2), padding=((1, 1), (1, 1)))


class ResNet(nn.Module):
  """ResNet with basic blocks on NHWC inputs; `units` per stage (ResNet-18: 2,2,2,2)."""
  num_classes: int
  units: tuple[int, ...] = (2, 2, 2, 2)

  block_names: ClassVar[tuple[str, ...]] = ("stem", "layer1", "layer2", "layer3", "layer4", "head")

  @nn.compact
  def __call__(self, x: jax.Array, train: bool = False, trainable_from: int = 0) -> jax.Array:
    blocks = [("stem", Stem(name="stem"))]
    for i, units in enumerate(self.units):
      blocks.append((f"layer{i + 1}", Layer(64 * 2**i, units, 1 if i == 0 else 2,
                                             name=f"layer{i + 1}")))
    blocks.append(("head", ClassifierHead(self.num_classes, name="head")))
    return run_blocks(blocks, x, train=train, trainable_from=trainable_from)
