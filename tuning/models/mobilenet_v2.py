"""MobileNetV2 (Sandler et al. 2018), width 1.0, in named blocks.

Blocks: `stem, block1..block7, conv_last, head`; `blockN` is the N-th stage of
inverted residuals of the paper's Table 2 (torchvision `features[1..17]`).
"""
from __future__ import annotations

from typing import ClassVar

import flax.linen as nn
import jax
import jax.numpy as jnp

from tuning.models.layers import ClassifierHead, ConvNormAct, run_blocks

# (expansion, output channels, units, stride of the first unit) per stage.
STAGES = ((1, 16, 1, 1), (6, 24, 2, 2), (6, 32, 3, 2), (6, 64, 4, 2),
          (6, 96, 3, 1), (6, 160, 3, 2), (6, 320, 1, 1))


def relu6(x: jax.Array) -> jax.Array:
  return jnp.clip(x, 0.0, 6.0)


class InvertedResidual(nn.Module):
  expansion: int
  features: int
  strides: int
  same_padding: bool = False
  folded_bn: bool = False
  bn_epsilon: float = 1e-5

  @nn.compact
  def __call__(self, x: jax.Array, train: bool) -> jax.Array:
    conv = lambda *a, **kw: ConvNormAct(*a, **kw, same_padding=self.same_padding,
                                        folded_bn=self.folded_bn, bn_epsilon=self.bn_epsilon)
    h = x
    if self.expansion != 1:
      h = conv(x.shape[-1] * self.expansion, 1, activation=relu6, name="expand")(h, train)
    h = conv(None, 3, self.strides, activation=relu6, name="depthwise")(h, train)
    h = conv(self.features, 1, activation=None, name="project")(h, train)
    return x + h if self.strides == 1 and x.shape[-1] == self.features else h


class Stage(nn.Module):
  expansion: int
  features: int
  units: int
  strides: int
  same_padding: bool = False
  folded_bn: bool = False
  bn_epsilon: float = 1e-5

  @nn.compact
  def __call__(self, x: jax.Array, train: bool) -> jax.Array:
    for i in range(self.units):
      x = InvertedResidual(self.expansion, self.features, self.strides if i == 0 else 1,
                           self.same_padding, self.folded_bn, self.bn_epsilon,
                           name=f"unit{i}")(x, train)
    return x


class MobileNetV2(nn.Module):
  """MobileNetV2 on NHWC inputs.

  Attributes:
    num_classes: outputs of the fresh `head`.
    same_padding: TensorFlow 'SAME' padding (TFLite / Keras weights) instead of
      PyTorch's symmetric padding (torchvision weights).
    folded_bn: BatchNorm folded into conv biases, the layout of TFLite files.
    bn_epsilon: the BatchNorm epsilon the weights were trained with (Keras: 1e-3).
    dropout_rate: dropout before the classifier (torchvision uses 0.2).
  """
  num_classes: int
  same_padding: bool = False
  folded_bn: bool = False
  bn_epsilon: float = 1e-5
  dropout_rate: float = 0.2

  block_names: ClassVar[tuple[str, ...]] = (
      "stem", *(f"block{i}" for i in range(1, 8)), "conv_last", "head")

  @nn.compact
  def __call__(self, x: jax.Array, train: bool = False, trainable_from: int = 0,
               start: int = 0, stop: int | None = None) -> jax.Array:
    conv = lambda *a, **kw: ConvNormAct(*a, **kw, same_padding=self.same_padding,
                                        folded_bn=self.folded_bn, bn_epsilon=self.bn_epsilon)
    blocks = [("stem", conv(32, 3, 2, activation=relu6, name="stem"))]
    for i, (expansion, features, units, strides) in enumerate(STAGES, start=1):
      blocks.append((f"block{i}", Stage(expansion, features, units, strides, self.same_padding,
                                        self.folded_bn, self.bn_epsilon, name=f"block{i}")))
    blocks.append(("conv_last", conv(1280, 1, activation=relu6, name="conv_last")))
    blocks.append(("head", ClassifierHead(self.num_classes, self.dropout_rate, name="head")))
    return run_blocks(blocks, x, train=train, trainable_from=trainable_from,
                      start=start, stop=stop)
