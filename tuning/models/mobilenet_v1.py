"""MobileNet V1 (Howard et al. 2017) in TF-slim's layout, at any width multiplier, in named blocks.

Blocks: `stem, block1..block5, head`. `stem` is the 3x3/2 conv; each `blockN`
holds the depthwise-separable units (depthwise 3x3 + BN + ReLU6, then pointwise
1x1 + BN + ReLU6) at one width, so blocks 2-5 each start with their stride-2
unit: 1 unit at 64 channels, 2 at 128, 2 at 256, 6 at 512 and 2 at 1024
(the paper's Table 1, times the width multiplier `alpha`). Keras's `MobileNet`
and timm's `mobilenetv1_100` are this network too; they differ from TF-slim only
in padding and BatchNorm epsilon, which are attributes here.
"""
from __future__ import annotations

from typing import ClassVar

import flax.linen as nn
import jax

from tuning.models.layers import ClassifierHead, ConvNormAct, run_blocks
from tuning.models.mobilenet_v2 import relu6

# (output channels at width 1.0, units, stride of the first unit) of block1..block5.
STAGES = ((64, 1, 1), (128, 2, 2), (256, 2, 2), (512, 6, 2), (1024, 2, 2))
# The width multipliers of the published ImageNet files (TF-slim's `mobilenet_v1_{alpha}_{size}`).
WIDTHS = (0.25, 0.5, 0.75, 1.0)


def width(channels: int, alpha: float) -> int:
  """TF-slim's channel count at width multiplier `alpha` (`depth(d)`, never below 8)."""
  return max(int(channels * alpha), 8)


class DepthwiseSeparable(nn.Module):
  """Depthwise 3x3 conv with `strides`, then pointwise 1x1 conv to `features`, each + BN + ReLU6."""
  features: int
  strides: int
  same_padding: bool
  folded_bn: bool
  bn_epsilon: float

  @nn.compact
  def __call__(self, x: jax.Array, train: bool) -> jax.Array:
    conv = lambda *a, **kw: ConvNormAct(*a, **kw, activation=relu6,
                                        same_padding=self.same_padding, folded_bn=self.folded_bn,
                                        bn_epsilon=self.bn_epsilon)
    x = conv(None, 3, self.strides, name="depthwise")(x, train)
    return conv(self.features, 1, name="pointwise")(x, train)


class Stage(nn.Module):
  """`units` depthwise-separable units to `features` channels, the first with `strides`."""
  features: int
  units: int
  strides: int
  same_padding: bool
  folded_bn: bool
  bn_epsilon: float

  @nn.compact
  def __call__(self, x: jax.Array, train: bool) -> jax.Array:
    for i in range(self.units):
      x = DepthwiseSeparable(self.features, self.strides if i == 0 else 1, self.same_padding,
                             self.folded_bn, self.bn_epsilon, name=f"unit{i}")(x, train)
    return x


class MobileNetV1(nn.Module):
  """MobileNet V1 on NHWC inputs.

  Attributes:
    num_classes: outputs of the fresh `head` (1001 in TF-slim's ImageNet files,
      index 0 = background).
    alpha: width multiplier of every layer's channels (`WIDTHS` have weights).
    same_padding: TensorFlow 'SAME' padding, which TF-slim's files (and Keras's,
      translated from them) were trained with; False pads symmetrically as
      PyTorch does (timm's files).
    folded_bn: BatchNorm folded into conv biases, the layout of TFLite files.
    bn_epsilon: the BatchNorm epsilon the weights were trained with (Keras: 1e-3).
    dropout_rate: dropout before the classifier (TF-slim keeps 0.999, so 0.001).
  """
  num_classes: int
  alpha: float = 1.0
  same_padding: bool = True
  folded_bn: bool = False
  bn_epsilon: float = 1e-5
  dropout_rate: float = 0.001

  block_names: ClassVar[tuple[str, ...]] = (
      "stem", *(f"block{i}" for i in range(1, len(STAGES) + 1)), "head")

  @nn.compact
  def __call__(self, x: jax.Array, train: bool = False, trainable_from: int = 0,
               start: int = 0, stop: int | None = None) -> jax.Array:
    blocks = [("stem", ConvNormAct(width(32, self.alpha), 3, 2, activation=relu6,
                                   same_padding=self.same_padding, folded_bn=self.folded_bn,
                                   bn_epsilon=self.bn_epsilon, name="stem"))]
    for i, (features, units, strides) in enumerate(STAGES, start=1):
      blocks.append((f"block{i}", Stage(width(features, self.alpha), units, strides,
                                        self.same_padding, self.folded_bn, self.bn_epsilon,
                                        name=f"block{i}")))
    blocks.append(("head", ClassifierHead(self.num_classes, self.dropout_rate, name="head")))
    return run_blocks(blocks, x, train=train, trainable_from=trainable_from,
                      start=start, stop=stop)
