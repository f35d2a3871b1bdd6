"""Layers shared by the architectures: padding conventions, fast convolutions for XLA:CPU."""
from __future__ import annotations

import functools
import math
from typing import Callable, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

Padding = tuple[tuple[int, int], tuple[int, int]]


def conv_padding(hw: Sequence[int], kernel: int | Sequence[int], stride: int,
                 same: bool) -> Padding:
  """Explicit (height, width) padding for a `kernel` conv (square, or (height, width)) on `hw`.

  PyTorch pads `(kernel-1)//2` on both sides. TensorFlow's 'SAME' pads so the
  output has ceil(size/stride) pixels and puts the odd pixel at the end, which
  differs from PyTorch for stride-2 convs on even inputs: converted weights only
  reproduce their source with their own convention.
  """
  kernels = (kernel, kernel) if isinstance(kernel, int) else tuple(kernel)

  def pad(size, kernel):
    if not same:
      return ((kernel - 1) // 2,) * 2
    total = max((math.ceil(size / stride) - 1) * stride + kernel - size, 0)
    return (total // 2, total - total // 2)
  return (pad(hw[0], kernels[0]), pad(hw[1], kernels[1]))


# Flax's layout for 2-D convolutions: NHWC inputs and outputs, HWIO kernels.
_NHWC_HWIO = jax.lax.ConvDimensionNumbers((0, 3, 1, 2), (3, 2, 0, 1), (0, 3, 1, 2))


def conv_general_dilated(lhs: jax.Array, rhs: jax.Array, window_strides: Sequence[int],
                         padding: str | Sequence[tuple[int, int]], lhs_dilation=None,
                         rhs_dilation=None, dimension_numbers=None, feature_group_count: int = 1,
                         precision=None) -> jax.Array:
  """`jax.lax.conv_general_dilated`, with two kinds of conv written as matrix products.

  XLA's CPU backend (benchmarks/README.md, batch 32 at 96 px):
  - computes a 1x1 conv's gradients 1.3-4.5x slower than the same product over the
    channel axis (of every `stride`-th pixel) written as a dot: MobileNetV2's
    expand and project convs;
  - runs a stride-2 3x3 conv on the 3 channels of an image (the stem of MobileNets,
    EfficientNets, InceptionV3) 2.6-3.5x slower than a product with its 27-wide patches.
  Other convolutions go to XLA as they are.
  """
  simple = (dimension_numbers == _NHWC_HWIO and feature_group_count == 1
            and all(d == 1 for d in (*(lhs_dilation or ()), *(rhs_dilation or ()))))
  if simple and rhs.shape[:2] == (1, 1) and (
      isinstance(padding, str) or all(tuple(p) == (0, 0) for p in padding)):
    # A 1x1 window has no padding under 'SAME' or 'VALID' and sees pixels 0, s, 2s, ...
    stride_h, stride_w = window_strides
    return _pixelwise_matmul(lhs[:, ::stride_h, ::stride_w, :], rhs[0, 0], precision)
  if simple and rhs.shape[:3] == (3, 3, 3) and tuple(window_strides) == (2, 2):
    kernel = rhs.reshape(-1, rhs.shape[-1])  # (kh, kw, in) flattened, as `_patches` orders them
    return _pixelwise_matmul(_patches(lhs, rhs.shape[:2], window_strides, padding), kernel,
                             precision)
  return jax.lax.conv_general_dilated(
      lhs, rhs, window_strides, padding, lhs_dilation=lhs_dilation, rhs_dilation=rhs_dilation,
      dimension_numbers=dimension_numbers, feature_group_count=feature_group_count,
      precision=precision)


def _window_taps(x: jax.Array, window: Sequence[int], strides: Sequence[int],
                 padding: str | Sequence[tuple[int, int]]) -> list[jax.Array]:
  """For each (row, column) of a conv window, in that order, what it sees of NHWC `x` at
  every output pixel: `x`, padded, sliced with the conv's strides (no discarded pixels)."""
  if isinstance(padding, str):
    padding = jax.lax.padtype_to_pads(x.shape[1:3], window, strides, padding)
  x = jnp.pad(x, ((0, 0), *padding, (0, 0)))
  (kh, kw), (sh, sw) = window, strides
  out_h, out_w = (x.shape[1] - kh) // sh + 1, (x.shape[2] - kw) // sw + 1
  return [jax.lax.slice(x, (0, dy, dx, 0),
                        (x.shape[0], dy + sh * (out_h - 1) + 1, dx + sw * (out_w - 1) + 1,
                         x.shape[3]), (1, sh, sw, 1))
          for dy in range(kh) for dx in range(kw)]


def _patches(x: jax.Array, window: Sequence[int], strides: Sequence[int],
             padding: str | Sequence[tuple[int, int]]) -> jax.Array:
  """Each output pixel's window of NHWC `x`, flattened (row, column, channel) on the channel axis."""
  return jnp.concatenate(_window_taps(x, window, strides, padding), axis=-1)


@functools.partial(jax.custom_vjp, nondiff_argnums=(2,))
def _pixelwise_matmul(x: jax.Array, kernel: jax.Array, precision=None) -> jax.Array:
  """`x @ kernel` over the channel axis of NHWC `x`, with the kernel gradient as one product.

  JAX's own transpose of this product lets XLA transpose the incoming gradient
  into a copy fused with whatever produced it (MobileNetV2's BatchNorm backward:
  26 ms of a 131 ms block2 step); written as (pixels x Cin)^T (pixels x Cout),
  the product reads both operands as they lie.
  """
  return jax.lax.dot_general(x, kernel, (((3,), (0,)), ((), ())), precision=precision)


def _pixelwise_matmul_fwd(x, kernel, precision):
  return _pixelwise_matmul(x, kernel, precision), (x, kernel)


def _pixelwise_matmul_bwd(precision, residuals, grad):
  x, kernel = residuals
  grad_x = jax.lax.dot_general(grad, kernel, (((3,), (1,)), ((), ())), precision=precision)
  grad_kernel = jax.lax.dot_general(x.reshape(-1, x.shape[-1]), grad.reshape(-1, grad.shape[-1]),
                                    (((0,), (0,)), ((), ())), precision=precision)
  return grad_x, grad_kernel


_pixelwise_matmul.defvjp(_pixelwise_matmul_fwd, _pixelwise_matmul_bwd)


# `nn.Conv` with the parameters, names and results of Flax's; 1x1 convs and image stems
# faster on CPU (`conv_general_dilated`).
Conv = functools.partial(nn.Conv, conv_general_dilated=conv_general_dilated)


class DepthwiseConv(nn.Module):
  """Depthwise `kernel x kernel` conv as a sum of shifted multiply-adds.

  Same parameters (`kernel` of shape (k, k, 1, C)) and result as `nn.Conv` with
  `feature_group_count=C`, but XLA's CPU backend runs grouped convolutions
  about 10x slower than this formulation, which it fuses into one loop.
  Strided taps are sliced directly, so stride 2 never computes discarded pixels.
  """
  kernel_size: int = 3
  strides: int = 1
  same_padding: bool = False
  use_bias: bool = False
  kernel_init: nn.initializers.Initializer = nn.initializers.lecun_normal()

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    k, s = self.kernel_size, self.strides
    channels = x.shape[-1]
    # lecun_normal on (k, k, 1, C) uses fan_in = k*k, as for a grouped nn.Conv.
    kernel = self.param("kernel", self.kernel_init, (k, k, 1, channels), jnp.float32)
    taps = _window_taps(x, (k, k), (s, s), conv_padding(x.shape[1:3], k, s, self.same_padding))
    y = None
    for tap, weight in zip(taps, kernel.reshape(k * k, channels)):
      term = tap * weight
      y = term if y is None else y + term
    if self.use_bias:
      y = y + self.param("bias", nn.initializers.zeros, (channels,), jnp.float32)
    return y


def check_image_size(model: nn.Module, x: jax.Array, start: int) -> None:
  """Refuses images smaller than `model.min_size` (when `x` is an image, `start == 0`):
  they would shrink to an empty map and give NaN logits rather than an error."""
  if start == 0 and min(x.shape[1:3]) < model.min_size:
    raise ValueError(f"{type(model).__name__} needs images of at least {model.min_size} px, "
                     f"got {x.shape[1]}x{x.shape[2]}")


def run_blocks(blocks: Sequence[tuple[str, nn.Module]], x: jax.Array, *, train: bool,
               trainable_from: int, start: int = 0, stop: int | None = None) -> jax.Array:
  """Applies the model's named blocks in order, freezing those below `trainable_from`.

  Frozen blocks run in inference mode (BatchNorm uses and keeps its running
  averages, dropout is off), and the activation entering the first trainable
  block is cut from the graph with `stop_gradient`, so no gradient work happens
  below the freeze boundary even when something later reads the frozen grads.
  Trainable blocks run in training mode; their BatchNorm normalises with batch
  statistics only where the caller lets it update them (see `BatchNorm`).

  Only blocks `start` to `stop - 1` run (`stop=None`: to the end), `x` being what
  enters block `start`: the frozen trunk, a fixed function of each image, can
  then be run once per image (`stop=trainable_from`) and training continue from
  its output (`start=trainable_from`; see tuning/feature_cache.py).
  """
  for index, (_, block) in list(enumerate(blocks))[start:stop]:
    if index == trainable_from and index > 0:
      x = jax.lax.stop_gradient(x)
    x = block(x, train=train and index >= trainable_from)
  return x


# torchvision initialises conv kernels with Kaiming-normal (fan_out); `scratch`
# runs start from the same distribution as the reference implementation.
conv_init = nn.initializers.variance_scaling(2.0, "fan_out", "normal")


# Flax's momentum keeps this share of the old running average: PyTorch's momentum 0.1.
BN_MOMENTUM = 0.9


class BatchNorm(nn.BatchNorm):
  """`nn.BatchNorm` that, in training, normalises with batch statistics only if it may keep them.

  Applied with `train=True` and `mutable=["batch_stats"]` it normalises with the
  batch's statistics and updates its running averages; with `batch_stats`
  immutable it normalises with its running averages, which stay as they are,
  while dropout and stochastic depth still act (`train` is still True for them).
  The train step chooses by what it lets change (tuning/bn_policy.py): a model
  never normalises with statistics it does not keep.
  """
  train: bool = False

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    batch = self.train and self.is_mutable_collection("batch_stats")
    return super().__call__(x, use_running_average=not batch)


def batch_norm(train: bool, epsilon: float = 1e-5, use_scale: bool = True) -> BatchNorm:
  """A `BatchNorm` named `bn` with PyTorch's BatchNorm2d defaults (eps 1e-5, momentum 0.1 there).

  Weights trained in TensorFlow (EfficientNet-Lite) normalised with eps 1e-3
  and only reproduce their outputs with it; the momentum, a training choice
  rather than part of the weights, stays PyTorch's for every architecture.
  `use_scale=False` leaves out the scale (gamma), as Keras's InceptionV3 does:
  its ReLU follows directly, so a scale would only rescale what the next conv sees.
  """
  return BatchNorm(train=train, momentum=BN_MOMENTUM, epsilon=epsilon, use_scale=use_scale,
                   name="bn")


class ConvNormAct(nn.Module):
  """Conv -> BatchNorm -> activation; `features=None` makes the conv depthwise.

  `folded_bn=True` is the layout of deployment files (TFLite) whose BatchNorm was
  folded into the conv: the conv gets a bias and there is no BatchNorm.
  `bn_epsilon` is the BatchNorm's epsilon and `bn_scale=False` drops its scale
  (see `batch_norm`). A full conv's `kernel_size` may be (height, width), and
  `valid_padding=True` pads it not at all (Keras/TensorFlow 'valid').
  """
  features: int | None
  kernel_size: int | tuple[int, int] = 1
  strides: int = 1
  activation: Callable[[jax.Array], jax.Array] | None = nn.relu
  same_padding: bool = False
  folded_bn: bool = False
  bn_epsilon: float = 1e-5
  bn_scale: bool = True
  valid_padding: bool = False

  @nn.compact
  def __call__(self, x: jax.Array, train: bool) -> jax.Array:
    k, s = self.kernel_size, self.strides
    if self.features is None:
      x = DepthwiseConv(k, s, self.same_padding, use_bias=self.folded_bn,
                        kernel_init=conv_init, name="conv")(x)
    else:
      kernel = (k, k) if isinstance(k, int) else tuple(k)
      padding = (((0, 0), (0, 0)) if self.valid_padding
                 else conv_padding(x.shape[1:3], kernel, s, self.same_padding))
      x = Conv(self.features, kernel, (s, s), padding=padding,
               use_bias=self.folded_bn, kernel_init=conv_init, name="conv")(x)
    if not self.folded_bn:
      x = batch_norm(train, self.bn_epsilon, self.bn_scale)(x)
    return x if self.activation is None else self.activation(x)


class NormActConv(nn.Module):
  """BatchNorm -> ReLU -> stride-1 conv: the pre-activation order of DenseNet's layers."""
  features: int
  kernel_size: int = 1

  @nn.compact
  def __call__(self, x: jax.Array, train: bool) -> jax.Array:
    k = self.kernel_size
    x = nn.relu(batch_norm(train)(x))
    return Conv(self.features, (k, k), padding=conv_padding(x.shape[1:3], k, 1, False),
                use_bias=False, kernel_init=conv_init, name="conv")(x)


class ClassifierHead(nn.Module):
  """Global average pool -> dropout -> a fresh linear layer of `num_classes`."""
  num_classes: int
  dropout_rate: float = 0.0

  @nn.compact
  def __call__(self, x: jax.Array, train: bool) -> jax.Array:
    x = jnp.mean(x, axis=(1, 2))
    if self.dropout_rate:
      x = nn.Dropout(self.dropout_rate, deterministic=not train)(x)
    return nn.Dense(self.num_classes, kernel_init=nn.initializers.normal(0.01),
                    name="classifier")(x)


def adaptive_avg_pool(x: jax.Array, output_size: tuple[int, int]) -> jax.Array:
  """PyTorch's `AdaptiveAvgPool2d` on NHWC, for any input size.

  Output cell i averages input rows floor(i*H/out) .. ceil((i+1)*H/out)-1 (and
  likewise columns): windows overlap or differ in size when H is not a multiple
  of `out`, and a map smaller than `out` is spread out by repetition. The fc6 of
  torchvision's VGG and AlexNet was trained behind exactly these windows, so it
  only reproduces its outputs at other input sizes with them.
  """
  def pool(x, axis, out):
    size = x.shape[axis]
    if size == out:
      return x
    return jnp.concatenate([
        jax.lax.slice_in_dim(x, i * size // out, -(-(i + 1) * size // out), axis=axis)
        .mean(axis, keepdims=True) for i in range(out)], axis)
  # A rectangle's mean is the mean of its row means: pool rows, then columns.
  return pool(pool(x, 1, output_size[0]), 2, output_size[1])


def local_response_norm(x: jax.Array, size: int, alpha: float, beta: float, k: float
                        ) -> jax.Array:
  """Across-channel LRN on NHWC: x / (k + alpha/size * sum of x^2 over `size` channels)^beta.

  The definition of `torch.nn.functional.local_response_norm` and of Caffe's LRN
  layer (which only takes odd sizes): alpha is divided by the window size, and
  the window, `size // 2` channels below to `(size - 1) // 2` above, is zero-padded
  at the ends of the channel axis.
  """
  squares = jax.lax.reduce_window(
      x * x, 0.0, jax.lax.add, (1, 1, 1, size), (1, 1, 1, 1),
      ((0, 0), (0, 0), (0, 0), (size // 2, (size - 1) // 2)))
  return x / (k + alpha / size * squares) ** beta
