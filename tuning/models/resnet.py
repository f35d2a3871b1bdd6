"""ResNet (He et al. 2016) with torchvision's layout, in named blocks.

Blocks: `stem, layer1..layer4, head`, the stages of torchvision's ResNet.
ResNet-18 stacks basic blocks, ResNet-50 bottlenecks.
"""
from __future__ import annotations

import functools
from typing import Callable, ClassVar

import flax.linen as nn
import jax

from tuning.models.layers import ClassifierHead, ConvNormAct, run_blocks


def _shortcut_relu(x: jax.Array, h: jax.Array, strides: int, train: bool) -> jax.Array:
  """relu(x + h); x goes through a strided 1x1 conv + BN (`downsample`) if its shape differs."""
  if strides != 1 or x.shape[-1] != h.shape[-1]:
    x = ConvNormAct(h.shape[-1], 1, strides, activation=None, name="downsample")(x, train)
  return nn.relu(x + h)


class BasicBlock(nn.Module):
  features: int
  strides: int

  @nn.compact
  def __call__(self, x: jax.Array, train: bool) -> jax.Array:
    h = ConvNormAct(self.features, 3, self.strides, name="conv1")(x, train)
    h = ConvNormAct(self.features, 3, activation=None, name="conv2")(h, train)
    return _shortcut_relu(x, h, self.strides, train)


class Bottleneck(nn.Module):
  """1x1 reduce, 3x3, 1x1 expand to 4x `features`.

  The stride is on the 3x3 conv (torchvision's "ResNet v1.5"), not on the first
  1x1 as in the paper, so torchvision's weights only fit this placement;
  `stride_in_1x1=True` is the paper's placement, which Keras's weights need.
  """
  features: int
  strides: int
  stride_in_1x1: bool = False

  @nn.compact
  def __call__(self, x: jax.Array, train: bool) -> jax.Array:
    first, second = (self.strides, 1) if self.stride_in_1x1 else (1, self.strides)
    h = ConvNormAct(self.features, 1, first, name="conv1")(x, train)
    h = ConvNormAct(self.features, 3, second, name="conv2")(h, train)
    h = ConvNormAct(4 * self.features, 1, activation=None, name="conv3")(h, train)
    return _shortcut_relu(x, h, self.strides, train)


class Layer(nn.Module):
  features: int
  units: int
  strides: int
  block: Callable[..., nn.Module] = BasicBlock

  @nn.compact
  def __call__(self, x: jax.Array, train: bool) -> jax.Array:
    for i in range(self.units):
      x = self.block(self.features, self.strides if i == 0 else 1, name=f"unit{i}")(x, train)
    return x


class Stem(nn.Module):
  """7x7/2 conv, BatchNorm, ReLU, 3x3/2 max-pool (padding 1, as torchvision)."""

  @nn.compact
  def __call__(self, x: jax.Array, train: bool) -> jax.Array:
    x = ConvNormAct(64, 7, 2, name="conv")(x, train)
    return nn.max_pool(x, (3, 3), (2, 2), padding=((1, 1), (1, 1)))


class ResNet(nn.Module):
  """ResNet on NHWC inputs.

  Attributes:
    num_classes: outputs of the fresh `head`.
    units: blocks per stage (ResNet-18: 2,2,2,2; ResNet-50: 3,4,6,3).
    block: `BasicBlock` or `Bottleneck`.
    stride_in_1x1: bottlenecks stride their first 1x1 conv, as in the paper
      (Keras's ResNet50), not their 3x3 conv (torchvision's).
  """
  num_classes: int
  units: tuple[int, ...] = (2, 2, 2, 2)
  block: type[nn.Module] = BasicBlock
  stride_in_1x1: bool = False

  block_names: ClassVar[tuple[str, ...]] = ("stem", "layer1", "layer2", "layer3", "layer4", "head")

  @nn.compact
  def __call__(self, x: jax.Array, train: bool = False, trainable_from: int = 0,
               start: int = 0, stop: int | None = None) -> jax.Array:
    block = (functools.partial(self.block, stride_in_1x1=True) if self.stride_in_1x1
             else self.block)
    blocks = [("stem", Stem(name="stem"))]
    for i, units in enumerate(self.units):
      blocks.append((f"layer{i + 1}", Layer(64 * 2**i, units, 1 if i == 0 else 2, block,
                                             name=f"layer{i + 1}")))
    blocks.append(("head", ClassifierHead(self.num_classes, name="head")))
    return run_blocks(blocks, x, train=train, trainable_from=trainable_from,
                      start=start, stop=stop)
