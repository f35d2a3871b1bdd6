"""DenseNet (Huang et al. 2017) with torchvision's layout, in named blocks.

Blocks: `stem, block1..block4, head`. `blockK` is torchvision's `denseblockK`
followed by `transitionK`; `block4` ends instead in the final BatchNorm and ReLU
(`norm5`), so that `head` holds only the fresh classifier.
"""
from __future__ import annotations

from typing import ClassVar

import flax.linen as nn
import jax
import jax.numpy as jnp

from tuning.models.layers import ClassifierHead, NormActConv, batch_norm, run_blocks
from tuning.models.resnet import Stem


class DenseLayer(nn.Module):
  """Appends `growth` channels: BN-ReLU-1x1 conv to `bn_size * growth`, BN-ReLU-3x3 conv."""
  growth: int
  bn_size: int

  @nn.compact
  def __call__(self, x: jax.Array, train: bool) -> jax.Array:
    h = NormActConv(self.bn_size * self.growth, 1, name="conv1")(x, train)
    h = NormActConv(self.growth, 3, name="conv2")(h, train)
    return jnp.concatenate([x, h], axis=-1)


class DenseBlock(nn.Module):
  """`units` dense layers, then a transition halving channels and resolution.

  The last block has no transition but the final BatchNorm (`bn`, torchvision's
  `norm5`) and ReLU, which pre-activation layers leave to the end of the network.
  """
  units: int
  growth: int
  bn_size: int
  last: bool

  @nn.compact
  def __call__(self, x: jax.Array, train: bool) -> jax.Array:
    for i in range(self.units):
      x = DenseLayer(self.growth, self.bn_size, name=f"layer{i}")(x, train)
    if self.last:
      return nn.relu(batch_norm(train)(x))
    x = NormActConv(x.shape[-1] // 2, 1, name="transition")(x, train)
    return nn.avg_pool(x, (2, 2), (2, 2))


class DenseNet(nn.Module):
  """DenseNet on NHWC inputs, with the 64-channel ResNet stem as torchvision.

  Attributes:
    num_classes: outputs of the fresh `head`.
    units: dense layers per block (DenseNet-121: 6,12,24,16).
    growth: channels each dense layer appends.
    bn_size: width of a dense layer's 1x1 bottleneck, in multiples of `growth`.
  """
  num_classes: int
  units: tuple[int, ...] = (6, 12, 24, 16)
  growth: int = 32
  bn_size: int = 4

  block_names: ClassVar[tuple[str, ...]] = ("stem", "block1", "block2", "block3", "block4", "head")

  @nn.compact
  def __call__(self, x: jax.Array, train: bool = False, trainable_from: int = 0,
               start: int = 0, stop: int | None = None) -> jax.Array:
    blocks = [("stem", Stem(name="stem"))]
    for i, units in enumerate(self.units, start=1):
      blocks.append((f"block{i}", DenseBlock(units, self.growth, self.bn_size,
                                             last=i == len(self.units), name=f"block{i}")))
    blocks.append(("head", ClassifierHead(self.num_classes, name="head")))
    return run_blocks(blocks, x, train=train, trainable_from=trainable_from,
                      start=start, stop=stop)
