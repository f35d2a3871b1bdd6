"""VGG (Simonyan & Zisserman 2015) with torchvision's layout (no BatchNorm), in named blocks.

`blockN` is the N-th resolution's 3x3 convs (each with bias and ReLU) and the
2x2/2 max-pool after them. `VGG` then has torchvision's classifier as `fc6, fc7,
head`; `VGGGap` replaces all three by global average pooling and one linear `head`.
"""
from __future__ import annotations

from typing import ClassVar

import flax.linen as nn
import jax
import jax.numpy as jnp

from tuning.models.layers import ClassifierHead, Conv, adaptive_avg_pool, conv_init, run_blocks

VGG16 = (2, 2, 3, 3, 3)
VGG19 = (2, 2, 4, 4, 4)

_CONV_BLOCKS = tuple(f"block{i}" for i in range(1, 6))
# torchvision initialises linear layers with normal(0, 0.01) and zero bias.
_dense_init = nn.initializers.normal(0.01)


class ConvBlock(nn.Module):
  """`convs` 3x3 convs with bias and ReLU (padding 1, as torchvision), then a 2x2/2 max-pool."""
  features: int
  convs: int

  @nn.compact
  def __call__(self, x: jax.Array, train: bool) -> jax.Array:
    del train  # no BatchNorm or dropout here
    for i in range(self.convs):
      x = nn.relu(Conv(self.features, (3, 3), padding=1, kernel_init=conv_init,
                       name=f"conv{i}")(x))
    return nn.max_pool(x, (2, 2), (2, 2))


class FullyConnected(nn.Module):
  """Linear -> ReLU -> dropout (fc6, fc7); `flatten` first pools to 7x7 and flattens (fc6)."""
  features: int
  dropout_rate: float
  flatten: bool = False

  @nn.compact
  def __call__(self, x: jax.Array, train: bool) -> jax.Array:
    if self.flatten:
      # torchvision's AdaptiveAvgPool2d((7, 7)) and flatten in NCHW order, so the
      # fc6 weight converts by a plain transpose.
      x = jnp.transpose(adaptive_avg_pool(x, (7, 7)), (0, 3, 1, 2)).reshape(x.shape[0], -1)
    x = nn.relu(nn.Dense(self.features, kernel_init=_dense_init, name="dense")(x))
    return nn.Dropout(self.dropout_rate, deterministic=not train)(x)


class Classifier(nn.Module):
  """The final linear layer of `num_classes` on fc7's features."""
  num_classes: int

  @nn.compact
  def __call__(self, x: jax.Array, train: bool) -> jax.Array:
    del train
    return nn.Dense(self.num_classes, kernel_init=_dense_init, name="classifier")(x)


class _VGGBase(nn.Module):
  """The conv blocks both VGG variants share, on NHWC inputs of at least 32 pixels.

  A subclass adds the blocks after block5 (`top`).

  Attributes:
    num_classes: outputs of the `head`.
    depths: convs in each of the five blocks (VGG16 or VGG19).
  """
  num_classes: int
  depths: tuple[int, ...] = VGG16

  def top(self) -> list[tuple[str, nn.Module]]:
    raise NotImplementedError

  @nn.compact
  def __call__(self, x: jax.Array, train: bool = False, trainable_from: int = 0,
               start: int = 0, stop: int | None = None) -> jax.Array:
    blocks = [(name, ConvBlock(min(64 * 2**i, 512), convs, name=name))
              for i, (name, convs) in enumerate(zip(_CONV_BLOCKS, self.depths, strict=True))]
    return run_blocks(blocks + self.top(), x, train=train, trainable_from=trainable_from,
                      start=start, stop=stop)


class VGG(_VGGBase):
  """VGG with torchvision's classifier; fc6 pools any input size to 7x7 first.

  Attributes:
    dropout_rate: after fc6 and fc7 (0.5 in torchvision).
    fc_width: outputs of fc6 and fc7; 4096 in the paper and torchvision's weights,
      smaller only to keep tests light.
  """
  dropout_rate: float = 0.5
  fc_width: int = 4096

  block_names: ClassVar[tuple[str, ...]] = (*_CONV_BLOCKS, "fc6", "fc7", "head")

  def top(self) -> list[tuple[str, nn.Module]]:
    return [("fc6", FullyConnected(self.fc_width, self.dropout_rate, flatten=True, name="fc6")),
            ("fc7", FullyConnected(self.fc_width, self.dropout_rate, name="fc7")),
            ("head", Classifier(self.num_classes, name="head"))]


class VGGGap(_VGGBase):
  """VGG's conv blocks with a global-average-pool linear head (no dropout) instead of fc6/fc7.

  A new head of 512 x `num_classes` weights in place of ~120M fully-connected
  ones, for small datasets; only the conv blocks carry over from ImageNet weights.
  """
  block_names: ClassVar[tuple[str, ...]] = (*_CONV_BLOCKS, "head")

  def top(self) -> list[tuple[str, nn.Module]]:
    return [("head", ClassifierHead(self.num_classes, name="head"))]
