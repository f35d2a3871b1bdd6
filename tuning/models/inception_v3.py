"""InceptionV3 (Szegedy et al. 2016) as `keras.applications.InceptionV3` builds it, in named blocks.

Blocks: `stem` (five convs and two max-pools), `mixed0`..`mixed10` (the eleven
Inception modules, under the names Keras gives their outputs) and `head`.
Every conv is Keras's `conv2d_bn`: a conv without bias, a BatchNorm without
scale (eps 1e-3) and a ReLU, with TensorFlow's 'valid' or 'same' padding; the
average pools of the modules are 'same' and, like TensorFlow's, leave the
padding out of the count. The architecture is data (`STEM`, `BLOCKS`), so the
Keras converter derives the order of Keras's layers from the same description.
Convs are named as in torchvision's InceptionV3 (`branch5x5_1`, ...), whose
modules are the same, with the same concatenation order.

torchvision's (and timm's) `Inception3` computes in eval mode as this model with
`bn_scale=True` (its BasicConv2d's BatchNorm, also eps 1e-3, has a scale) and
`pool_count_pad=True` (its `F.avg_pool2d(x, 3, 1, padding=1)` counts the zero
padding, which matters at the map's border). Its explicit paddings are
TensorFlow's 'same' for every stride-1 conv (all odd kernels) and none for
every stride-2 conv and max-pool, as here. Its `transform_input` is the input
convention of its weights (tuning/convert/torchvision.py), and its auxiliary
classifier and dropout act in training only.
"""
from __future__ import annotations

import dataclasses
from typing import ClassVar

import flax.linen as nn
import jax
import jax.numpy as jnp

from tuning.models.layers import ClassifierHead, ConvNormAct, check_image_size, run_blocks

# Keras's BatchNormalization default; the weights only reproduce their outputs with it.
BN_EPSILON = 1e-3


@dataclasses.dataclass(frozen=True)
class Conv:
  """One `conv2d_bn`: `features` outputs of a (height, width) `kernel`, 'same' unless `valid`."""
  name: str
  features: int
  kernel: tuple[int, int]
  strides: int = 1
  valid: bool = False


@dataclasses.dataclass(frozen=True)
class Branch:
  """One branch of an Inception module, run on the module's input.

  An optional `pool` first ("avg": 3x3/1 'same'; "max": 3x3/2 'valid'), then
  `convs` in sequence, then the `split` convs side by side on the result, their
  outputs concatenated (the 1x3 and 3x1 pairs of mixed9 and mixed10).
  """
  convs: tuple[Conv, ...] = ()
  pool: str | None = None
  split: tuple[Conv, ...] = ()


# Groups of convs, each followed by a 3x3/2 max-pool.
STEM = (
    (Conv("Conv2d_1a_3x3", 32, (3, 3), 2, valid=True),
     Conv("Conv2d_2a_3x3", 32, (3, 3), valid=True),
     Conv("Conv2d_2b_3x3", 64, (3, 3))),
    (Conv("Conv2d_3b_1x1", 80, (1, 1), valid=True),
     Conv("Conv2d_4a_3x3", 192, (3, 3), valid=True)),
)


def _module_a(pool_features: int) -> tuple[Branch, ...]:
  """mixed0..mixed2 at 35x35 (299 px input)."""
  return (
      Branch((Conv("branch1x1", 64, (1, 1)),)),
      Branch((Conv("branch5x5_1", 48, (1, 1)), Conv("branch5x5_2", 64, (5, 5)))),
      Branch((Conv("branch3x3dbl_1", 64, (1, 1)), Conv("branch3x3dbl_2", 96, (3, 3)),
              Conv("branch3x3dbl_3", 96, (3, 3)))),
      Branch((Conv("branch_pool", pool_features, (1, 1)),), pool="avg"),
  )


def _module_b() -> tuple[Branch, ...]:
  """mixed3: 35x35 -> 17x17."""
  return (
      Branch((Conv("branch3x3", 384, (3, 3), 2, valid=True),)),
      Branch((Conv("branch3x3dbl_1", 64, (1, 1)), Conv("branch3x3dbl_2", 96, (3, 3)),
              Conv("branch3x3dbl_3", 96, (3, 3), 2, valid=True))),
      Branch(pool="max"),
  )


def _module_c(width: int) -> tuple[Branch, ...]:
  """mixed4..mixed7 at 17x17, with factorised 7x7 convs of `width` channels inside."""
  return (
      Branch((Conv("branch1x1", 192, (1, 1)),)),
      Branch((Conv("branch7x7_1", width, (1, 1)), Conv("branch7x7_2", width, (1, 7)),
              Conv("branch7x7_3", 192, (7, 1)))),
      Branch((Conv("branch7x7dbl_1", width, (1, 1)), Conv("branch7x7dbl_2", width, (7, 1)),
              Conv("branch7x7dbl_3", width, (1, 7)), Conv("branch7x7dbl_4", width, (7, 1)),
              Conv("branch7x7dbl_5", 192, (1, 7)))),
      Branch((Conv("branch_pool", 192, (1, 1)),), pool="avg"),
  )


def _module_d() -> tuple[Branch, ...]:
  """mixed8: 17x17 -> 8x8."""
  return (
      Branch((Conv("branch3x3_1", 192, (1, 1)), Conv("branch3x3_2", 320, (3, 3), 2, valid=True))),
      Branch((Conv("branch7x7x3_1", 192, (1, 1)), Conv("branch7x7x3_2", 192, (1, 7)),
              Conv("branch7x7x3_3", 192, (7, 1)),
              Conv("branch7x7x3_4", 192, (3, 3), 2, valid=True))),
      Branch(pool="max"),
  )


def _module_e() -> tuple[Branch, ...]:
  """mixed9 and mixed10 at 8x8, whose 3x3 branches end in a 1x3 and a 3x1 conv side by side."""
  return (
      Branch((Conv("branch1x1", 320, (1, 1)),)),
      Branch((Conv("branch3x3_1", 384, (1, 1)),),
             split=(Conv("branch3x3_2a", 384, (1, 3)), Conv("branch3x3_2b", 384, (3, 1)))),
      Branch((Conv("branch3x3dbl_1", 448, (1, 1)), Conv("branch3x3dbl_2", 384, (3, 3))),
             split=(Conv("branch3x3dbl_3a", 384, (1, 3)), Conv("branch3x3dbl_3b", 384, (3, 1)))),
      Branch((Conv("branch_pool", 192, (1, 1)),), pool="avg"),
  )


BLOCKS = (
    ("mixed0", _module_a(32)), ("mixed1", _module_a(64)), ("mixed2", _module_a(64)),
    ("mixed3", _module_b()),
    ("mixed4", _module_c(128)), ("mixed5", _module_c(160)), ("mixed6", _module_c(160)),
    ("mixed7", _module_c(192)),
    ("mixed8", _module_d()),
    ("mixed9", _module_e()), ("mixed10", _module_e()),
)


def _conv_bn(conv: Conv, bn_scale: bool) -> ConvNormAct:
  return ConvNormAct(conv.features, conv.kernel, conv.strides, same_padding=True,
                     valid_padding=conv.valid, bn_epsilon=BN_EPSILON, bn_scale=bn_scale,
                     name=conv.name)


class Stem(nn.Module):
  """The convs and max-pools before mixed0: 299 px -> 35x35x192."""
  bn_scale: bool = False

  @nn.compact
  def __call__(self, x: jax.Array, train: bool) -> jax.Array:
    for group in STEM:
      for conv in group:
        x = _conv_bn(conv, self.bn_scale)(x, train)
      x = nn.max_pool(x, (3, 3), (2, 2))
    return x


class Mixed(nn.Module):
  """An Inception module: its `branches` side by side, concatenated in order on channels."""
  branches: tuple[Branch, ...]
  bn_scale: bool = False
  pool_count_pad: bool = False

  @nn.compact
  def __call__(self, x: jax.Array, train: bool) -> jax.Array:
    conv_bn = lambda conv: _conv_bn(conv, self.bn_scale)
    outputs = []
    for branch in self.branches:
      h = x
      if branch.pool == "avg":
        h = nn.avg_pool(h, (3, 3), padding="SAME", count_include_pad=self.pool_count_pad)
      elif branch.pool == "max":
        h = nn.max_pool(h, (3, 3), (2, 2))
      for conv in branch.convs:
        h = conv_bn(conv)(h, train)
      if branch.split:
        h = jnp.concatenate([conv_bn(conv)(h, train) for conv in branch.split], axis=-1)
      outputs.append(h)
    return jnp.concatenate(outputs, axis=-1)


class InceptionV3(nn.Module):
  """InceptionV3 on NHWC inputs of at least 75 pixels (299 for ImageNet weights).

  Keras puts no dropout before its classifier, and neither does the `head`
  (torchvision's dropout 0.5 there acts in training only, before a classifier
  that transfer replaces).

  Attributes:
    num_classes: outputs of the fresh `head`.
    bn_scale: BatchNorms with a scale (gamma): torchvision's and timm's weights.
    pool_count_pad: the modules' 3x3 average pools divide by 9 at the border
      too, counting the zero padding (torchvision, timm), rather than by the
      pixels they cover (Keras).
  """
  num_classes: int
  bn_scale: bool = False
  pool_count_pad: bool = False

  block_names: ClassVar[tuple[str, ...]] = ("stem", *(name for name, _ in BLOCKS), "head")
  # Keras's minimum: smaller inputs leave mixed2's output too small for mixed3's
  # stride-2 valid convs, and the maps (then the logits) go empty.
  min_size: ClassVar[int] = 75

  @nn.compact
  def __call__(self, x: jax.Array, train: bool = False, trainable_from: int = 0,
               start: int = 0, stop: int | None = None) -> jax.Array:
    check_image_size(self, x, start)
    blocks = [("stem", Stem(self.bn_scale, name="stem"))]
    blocks += [(name, Mixed(branches, self.bn_scale, self.pool_count_pad, name=name))
               for name, branches in BLOCKS]
    blocks.append(("head", ClassifierHead(self.num_classes, name="head")))
    return run_blocks(blocks, x, train=train, trainable_from=trainable_from,
                      start=start, stop=stop)
