"""AlexNet in Caffe's (BVLC) and torchvision's variants, in the blocks of Tajbakhsh et al. 2016.

Both have the blocks `conv1..conv5, fc6, fc7, fc8`, named as in the paper, so
its schemes read directly: "FT:fc6-fc8" is `from:fc6`, "FT:only fc8" is `head`.

- `CaffeAlexNet` is the paper's network (BVLC AlexNet, Table I): 96-256-384-384-256
  channels, LRN after conv1 and conv2, conv2/4/5 in two groups, 227 px inputs.
- `AlexNet` is torchvision's "one weird trick" variant, 64-192-384-256-256, no LRN,
  no groups: the one with obtainable ImageNet weights, a substitute for the paper's.

Both pool conv5 to 6x6 with PyTorch's adaptive average pool before fc6, as
torchvision does. At 227 px (Caffe) or 224 px (torchvision) the map already is
6x6 and the pool is the identity; it lets other sizes through (the small
images of the demo), at which Caffe's network would have no fc6 of the right
size. fc6 flattens in (C, H, W) order like Caffe and PyTorch, so their fc6
weights map with a plain transpose.

Max-pools round their output size as their framework does: down in PyTorch, up
in Caffe (the last window may hang over the edge). For the 3x3/2 pools at
227 px (55 -> 27 -> 13 -> 6) both give the same maps; at 64 px, Caffe's first
pool gives 7x7 where PyTorch's would give 6x6.

Dropout acts on a block's input: torchvision drops before fc6 and fc7, Caffe
after fc6 and fc7 (drop6, drop7), i.e. before fc7 and fc8. A frozen block runs
without dropout, so in "FT:only fc8" Caffe's drop7 still regularises fc8, as
with the paper's learning rate of 0 below fc8.

BVLC weights (`.caffemodel`, not converted here) would map like torchvision's:
conv kernels are OIHW, a grouped one (out, in/2, kh, kw), both going to Flax's
(kh, kw, in/groups, out) by a (2, 3, 1, 0) transpose; fc weights are (out, in);
inputs are BGR minus the ImageNet mean in 0..255 (`preprocess.CAFFE_IMAGENET`).

Initialisation (for `scratch`) is the library's for every architecture: Kaiming
fan-out convs, normal(0.01) dense kernels, zero biases. BVLC started from
Gaussians; Tajbakhsh et al. found Xavier and MSRA no better after convergence.
"""
from __future__ import annotations

import math
from typing import ClassVar

import flax.linen as nn
import jax
import jax.numpy as jnp

from tuning.models.layers import (adaptive_avg_pool, check_image_size, conv_general_dilated,
                                  conv_init, local_response_norm, run_blocks)


def max_pool(x: jax.Array, ceil_mode: bool) -> jax.Array:
  """3x3/2 max-pool; `ceil_mode` rounds the output size up, as Caffe does.

  The extra last window hangs over the bottom or right edge, where the padding
  is -inf, so it takes the max of the pixels it covers.
  """
  def end_pad(n):
    windows = math.ceil((n - 3) / 2) + 1
    return (windows - 1) * 2 + 3 - n
  pads = [(0, end_pad(n) if ceil_mode else 0) for n in x.shape[1:3]]
  return nn.max_pool(x, (3, 3), (2, 2), padding=pads)


def split_groups_conv(lhs: jax.Array, rhs: jax.Array, *args, dimension_numbers,
                      feature_group_count: int, **kwargs) -> jax.Array:
  """`layers.conv_general_dilated` running each feature group as a convolution of its own.

  The same result and parameters as one grouped convolution, which XLA's CPU
  backend runs slowly: with it, a CaffeAlexNet train step at 227 px takes 3x
  as long, and a forward pass 2x.
  """
  dn = dimension_numbers
  groups = zip(jnp.split(lhs, feature_group_count, dn.lhs_spec[1]),
               jnp.split(rhs, feature_group_count, dn.rhs_spec[0]))
  return jnp.concatenate([conv_general_dilated(x, w, *args, dimension_numbers=dn, **kwargs)
                          for x, w in groups], dn.out_spec[1])


class ConvBlock(nn.Module):
  """Conv (bias, explicit padding) -> ReLU -> [Caffe's LRN] -> [3x3/2 max-pool]."""
  features: int
  kernel_size: int
  strides: int
  padding: int
  groups: int = 1
  lrn: bool = False
  pool: bool = False
  ceil_mode: bool = False

  @nn.compact
  def __call__(self, x: jax.Array, train: bool) -> jax.Array:
    del train  # no BatchNorm, no dropout
    k, p = self.kernel_size, self.padding
    x = nn.Conv(self.features, (k, k), self.strides, padding=((p, p), (p, p)),
                feature_group_count=self.groups, conv_general_dilated=split_groups_conv,
                kernel_init=conv_init, name="conv")(x)
    x = nn.relu(x)
    if self.lrn:  # norm1, norm2 of BVLC's deploy.prototxt
      x = local_response_norm(x, size=5, alpha=1e-4, beta=0.75, k=1.0)
    return max_pool(x, self.ceil_mode) if self.pool else x


class FullyConnected(nn.Module):
  """[6x6 adaptive pool, (C, H, W) flatten] -> [dropout] -> Dense -> [ReLU]."""
  features: int
  dropout_rate: float
  relu: bool
  flatten: bool = False

  @nn.compact
  def __call__(self, x: jax.Array, train: bool) -> jax.Array:
    if self.flatten:
      x = adaptive_avg_pool(x, (6, 6))
      x = jnp.transpose(x, (0, 3, 1, 2)).reshape(x.shape[0], -1)
    if self.dropout_rate:
      x = nn.Dropout(self.dropout_rate, deterministic=not train)(x)
    x = nn.Dense(self.features, kernel_init=nn.initializers.normal(0.01), name="dense")(x)
    return nn.relu(x) if self.relu else x


class _AlexNet(nn.Module):
  """The layout both variants share; they differ in the class variables."""
  num_classes: int
  dropout_rate: float = 0.5
  fc_width: int = 4096  # of fc6 and fc7; smaller only in tests, to keep them light

  block_names: ClassVar[tuple[str, ...]] = (
      "conv1", "conv2", "conv3", "conv4", "conv5", "fc6", "fc7", "fc8")
  # `ConvBlock` fields of conv1..conv5: features, kernel, stride, padding, groups, lrn, pool.
  convs: ClassVar[tuple[tuple, ...]]
  # Whether fc6, fc7, fc8 apply dropout to their input.
  dropout_before: ClassVar[tuple[bool, bool, bool]]
  ceil_mode: ClassVar[bool]  # of the max-pools
  # The smallest input side leaving conv5 a map to pool; smaller ones would end
  # in an empty map and NaN logits, so they are refused.
  min_size: ClassVar[int]

  @nn.compact
  def __call__(self, x: jax.Array, train: bool = False, trainable_from: int = 0,
               start: int = 0, stop: int | None = None) -> jax.Array:
    check_image_size(self, x, start)
    blocks = [(f"conv{i}", ConvBlock(*spec, ceil_mode=self.ceil_mode, name=f"conv{i}"))
              for i, spec in enumerate(self.convs, start=1)]
    widths = (self.fc_width, self.fc_width, self.num_classes)
    for i, (features, dropout) in enumerate(zip(widths, self.dropout_before)):
      name = f"fc{6 + i}"
      blocks.append((name, FullyConnected(features, self.dropout_rate if dropout else 0.0,
                                          relu=i < 2, flatten=i == 0, name=name)))
    return run_blocks(blocks, x, train=train, trainable_from=trainable_from,
                      start=start, stop=stop)


class AlexNet(_AlexNet):
  """torchvision's AlexNet on NHWC inputs (224 px)."""
  convs = ((64, 11, 4, 2, 1, False, True), (192, 5, 1, 2, 1, False, True),
           (384, 3, 1, 1), (256, 3, 1, 1), (256, 3, 1, 1, 1, False, True))
  dropout_before = (True, True, False)
  ceil_mode = False
  min_size = 63


class CaffeAlexNet(_AlexNet):
  """BVLC Caffe's AlexNet on NHWC inputs (227 px), as Tajbakhsh et al. used."""
  convs = ((96, 11, 4, 0, 1, True, True), (256, 5, 1, 2, 2, True, True),
           (384, 3, 1, 1), (384, 3, 1, 1, 2), (256, 3, 1, 1, 2, False, True))
  dropout_before = (False, True, True)
  ceil_mode = True
  min_size = 39
