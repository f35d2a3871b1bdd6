"""SqueezeNet 1.1 (Iandola et al. 2016; v1.1 of DeepScale's Caffe release) in named blocks.

Blocks `stem, fire2..fire9, head`, named after the Caffe layers they hold, so
torchvision's and Caffe's files map onto them alike:

- `stem`: conv1 (64 3x3/2, unpadded) + ReLU, then pool1.
- `fireN`: a Fire module: a 1x1 `squeeze` conv, then 1x1 and 3x3 `expand` convs
  side by side, concatenated (1x1 first), each conv with bias and ReLU.
  `fire3` and `fire5` end with the max-pool that follows them (pool3, pool5).
- `head`: dropout, then a 1x1 conv to the classes with a ReLU, then global
  average pooling (drop9, conv10, relu_conv10, pool10). The ReLU before the
  pool is SqueezeNet's: its logits are never negative.

The max-pools are 3x3/2 and round their output size up, as Caffe's pools do
and torchvision's (`ceil_mode=True`): e.g. a 32x32 map pools to 16x16, not 15x15.
"""
from __future__ import annotations

from typing import ClassVar

import flax.linen as nn
import jax
import jax.numpy as jnp

from tuning.models.alexnet import ConvBlock, max_pool
from tuning.models.layers import Conv, check_image_size, run_blocks

# (squeeze channels, channels of each expand conv, a max-pool follows) of fire2..fire9.
FIRES = ((16, 64, False), (16, 64, True), (32, 128, False), (32, 128, True),
         (48, 192, False), (48, 192, False), (64, 256, False), (64, 256, False))
_FIRE_NAMES = tuple(f"fire{i}" for i in range(2, 2 + len(FIRES)))


class Fire(nn.Module):
  """Squeeze 1x1 -> [expand 1x1, expand 3x3] concatenated -> [3x3/2 max-pool]."""
  squeeze: int
  expand: int
  pool: bool = False

  @nn.compact
  def __call__(self, x: jax.Array, train: bool) -> jax.Array:
    x = ConvBlock(self.squeeze, 1, 1, 0, name="squeeze")(x, train)
    x = jnp.concatenate([ConvBlock(self.expand, 1, 1, 0, name="expand1x1")(x, train),
                         ConvBlock(self.expand, 3, 1, 1, name="expand3x3")(x, train)], axis=-1)
    return max_pool(x, ceil_mode=True) if self.pool else x


class Classifier(nn.Module):
  """Dropout -> 1x1 conv to `num_classes` -> ReLU -> global average pool."""
  num_classes: int
  dropout_rate: float

  @nn.compact
  def __call__(self, x: jax.Array, train: bool) -> jax.Array:
    x = nn.Dropout(self.dropout_rate, deterministic=not train)(x)
    # torchvision initialises this conv with normal(0, 0.01), unlike the others.
    x = Conv(self.num_classes, (1, 1), kernel_init=nn.initializers.normal(0.01),
             name="classifier")(x)
    return jnp.mean(nn.relu(x), axis=(1, 2))


class SqueezeNet(nn.Module):
  """SqueezeNet 1.1 on NHWC inputs of at least `min_size` pixels (227 in Caffe, 224 in torchvision).

  Attributes:
    num_classes: outputs of the fresh `head`.
    dropout_rate: before the final conv (0.5 in Caffe and torchvision).
  """
  num_classes: int
  dropout_rate: float = 0.5

  block_names: ClassVar[tuple[str, ...]] = ("stem", *_FIRE_NAMES, "head")
  # The smallest side leaving pool5 a map: 17 -> conv1 8 -> pool1 4 -> pool3 2 -> pool5 1.
  # Smaller images would end in an empty map and NaN logits, so they are refused.
  min_size: ClassVar[int] = 17

  @nn.compact
  def __call__(self, x: jax.Array, train: bool = False, trainable_from: int = 0,
               start: int = 0, stop: int | None = None) -> jax.Array:
    check_image_size(self, x, start)
    blocks = [("stem", ConvBlock(64, 3, 2, 0, pool=True, ceil_mode=True, name="stem"))]
    blocks += [(name, Fire(*spec, name=name)) for name, spec in zip(_FIRE_NAMES, FIRES)]
    blocks.append(("head", Classifier(self.num_classes, self.dropout_rate, name="head")))
    return run_blocks(blocks, x, train=train, trainable_from=trainable_from,
                      start=start, stop=stop)
