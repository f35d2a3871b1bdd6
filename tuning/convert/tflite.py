"""Converts TFLite MobileNet V1 and V2 files (quantized or float) to the Flax models.

TFLite files hold BatchNorm already folded into conv biases, so the Flax model is
built with `folded_bn=True` (and TensorFlow's SAME padding). A file carries no
layer names we can rely on, so its ops are matched in order against the
model's layers, checking each op's type, strides, padding and activation: a
file of another architecture fails at the first op that differs. Quantized
weights are dequantized as `scale * (q - zero_point)`, per output channel where
the file has per-channel scales.
"""
from __future__ import annotations

import dataclasses
import os
from collections.abc import Iterator

import flax.linen as nn
import numpy as np
import tflite
from tflite.utils import BUILTIN_OPCODE2NAME

from tuning import models
from tuning.convert.common import ConversionError, Link, check_and_build, expected_variables
from tuning.models import mobilenet_v1
from tuning.models.mobilenet_v2 import STAGES
from tuning.preprocess import MINUS_ONE_TO_ONE, Preprocess

_DTYPES = {
    tflite.TensorType.FLOAT32: np.float32, tflite.TensorType.FLOAT16: np.float16,
    tflite.TensorType.INT32: np.int32, tflite.TensorType.INT64: np.int64,
    tflite.TensorType.INT16: np.int16, tflite.TensorType.INT8: np.int8,
    tflite.TensorType.UINT8: np.uint8,
}
_ACTIVATIONS = {value: name for name, value in vars(tflite.ActivationFunctionType).items()
                if not name.startswith("_")}
_REQUANTIZE = {"QUANTIZE", "DEQUANTIZE"}  # may appear anywhere in quantized files
_AFTER_CLASSIFIER = {"RESHAPE", "SQUEEZE", "SOFTMAX"}
_HEAD = ("head", "classifier")
# Source layout -> Flax layout: conv OHWI -> HWIO; depthwise (1, k, k, C) -> (k, k, 1, C).
_PERMS = {"CONV_2D": (1, 2, 3, 0), "DEPTHWISE_CONV_2D": (1, 2, 0, 3)}


@dataclasses.dataclass(frozen=True)
class _Layer:
  """A conv of the Flax model and the TFLite op that must implement it."""
  path: tuple[str, ...]
  op: str
  strides: int = 1
  activation: str = "RELU6"
  residual: bool = False  # an ADD of the unit's input follows

  @property
  def requirement(self) -> str:
    """The op this layer needs, in the words of `_describe`."""
    return f"a {self.op} with stride {self.strides}, SAME padding and activation {self.activation}"

  def __str__(self):
    return f"{self.requirement} for {'/'.join(self.path)}"


def _mobilenet_v2_layers() -> list[_Layer]:
  """The convs of the Flax MobileNetV2 in execution order, as TFLite ops."""
  layers = [_Layer(("stem",), "CONV_2D", strides=2)]
  channels = 32
  for b, (expansion, features, units, first_strides) in enumerate(STAGES, start=1):
    for u in range(units):
      strides = first_strides if u == 0 else 1
      unit = (f"block{b}", f"unit{u}")
      if expansion != 1:
        layers.append(_Layer((*unit, "expand"), "CONV_2D"))
      layers.append(_Layer((*unit, "depthwise"), "DEPTHWISE_CONV_2D", strides))
      layers.append(_Layer((*unit, "project"), "CONV_2D", activation="NONE",
                           residual=strides == 1 and channels == features))
      channels = features
  layers.append(_Layer(("conv_last",), "CONV_2D"))
  layers.append(_Layer(_HEAD, "CONV_2D", activation="NONE"))
  return layers


def _mobilenet_v1_layers() -> list[_Layer]:
  """The convs of the Flax MobileNetV1 (any width) in execution order, as TFLite ops."""
  layers = [_Layer(("stem",), "CONV_2D", strides=2)]
  for b, (_, units, first_strides) in enumerate(mobilenet_v1.STAGES, start=1):
    for u in range(units):
      unit = (f"block{b}", f"unit{u}")
      layers.append(_Layer((*unit, "depthwise"), "DEPTHWISE_CONV_2D",
                           first_strides if u == 0 else 1))
      layers.append(_Layer((*unit, "pointwise"), "CONV_2D"))
  layers.append(_Layer(_HEAD, "CONV_2D", activation="NONE"))
  return layers


# arch -> its convs in execution order. The widths of MobileNetV1 share one op
# sequence; the weights' shapes tell them apart.
_ARCH_LAYERS = {
    "mobilenet_v2": _mobilenet_v2_layers,
    **{f"mobilenet_v1_{alpha}": _mobilenet_v1_layers for alpha in mobilenet_v1.WIDTHS},
}


class _Graph:
  """The main subgraph of a TFLite file, with dequantized constants."""

  def __init__(self, path: str):
    self.path = path
    with open(path, "rb") as f:
      buf = f.read()
    if not tflite.Model.ModelBufferHasIdentifier(buf, 0):
      raise ValueError(f"{path}: not a TFLite flatbuffer (no TFL3 identifier)")
    self.model = tflite.Model.GetRootAsModel(buf, 0)
    self.graph = self.model.Subgraphs(0)

  def ops(self) -> Iterator[tuple[int, str, tflite.Operator]]:
    for i in range(self.graph.OperatorsLength()):
      op = self.graph.Operators(i)
      code = self.model.OperatorCodes(op.OpcodeIndex())
      # Schema v3a keeps small codes in the deprecated field, for old readers.
      name = BUILTIN_OPCODE2NAME.get(max(code.BuiltinCode(), code.DeprecatedBuiltinCode()), "?")
      yield i, name, op

  def shape(self, tensor: int) -> tuple[int, ...]:
    return tuple(self.graph.Tensors(tensor).ShapeAsNumpy())

  def constant(self, tensor: int) -> np.ndarray:
    """The float32 value of a constant tensor, dequantized if quantized."""
    t = self.graph.Tensors(tensor)
    data = self.model.Buffers(t.Buffer()).DataAsNumpy()
    if isinstance(data, int) or t.Type() not in _DTYPES:
      raise ValueError(f"{self.path}: tensor {t.Name().decode()!r} holds no constant "
                       "weights of a supported type")
    q = data.view(_DTYPES[t.Type()]).reshape(self.shape(tensor))
    quant = t.Quantization()
    if quant is None or quant.ScaleLength() == 0:
      return q.astype(np.float32)
    scale, zero = quant.ScaleAsNumpy(), quant.ZeroPointAsNumpy()
    if quant.ScaleLength() > 1:  # per channel, along the quantized dimension
      broadcast = [1] * q.ndim
      broadcast[quant.QuantizedDimension()] = quant.ScaleLength()
      scale = scale.reshape(broadcast)
      zero = zero.reshape(broadcast) if quant.ZeroPointLength() > 1 else zero
    return ((q.astype(np.float64) - zero) * scale).astype(np.float32)


def _options(op: tflite.Operator, cls):
  table = op.BuiltinOptions()
  options = cls()
  options.Init(table.Bytes, table.Pos)
  return options


def _describe(name: str, op: tflite.Operator) -> str:
  """A conv op in the words of `_Layer.requirement`: equal strings mean the op fits the layer."""
  cls = tflite.Conv2DOptions if name == "CONV_2D" else tflite.DepthwiseConv2DOptions
  o = _options(op, cls)
  padding = "SAME" if o.Padding() == tflite.Padding.SAME else "VALID"
  extra = ""
  if o.DilationHFactor() != 1 or o.DilationWFactor() != 1:
    extra += f", dilation {o.DilationHFactor()}x{o.DilationWFactor()}"
  if name == "DEPTHWISE_CONV_2D" and o.DepthMultiplier() != 1:
    extra += f", depth multiplier {o.DepthMultiplier()}"
  strides = o.StrideH() if o.StrideH() == o.StrideW() else f"{o.StrideH()}x{o.StrideW()}"
  return (f"a {name} with stride {strides}, {padding} padding and activation "
          f"{_ACTIVATIONS.get(o.FusedActivationFunction(), '?')}{extra}")


def _is_global_pool(graph: _Graph, name: str, op: tflite.Operator) -> bool:
  """MEAN over height and width, or an AVERAGE_POOL_2D window as large as its input."""
  if name == "MEAN":
    return sorted(graph.constant(op.Inputs(1)).astype(int).ravel().tolist()) == [1, 2]
  if name == "AVERAGE_POOL_2D":
    o = _options(op, tflite.Pool2DOptions)
    return (o.FilterHeight(), o.FilterWidth()) == graph.shape(op.Inputs(0))[1:3]
  return False


def _is_plain_add(graph: _Graph, name: str, op: tflite.Operator) -> bool:
  del graph  # unused
  return (name == "ADD" and _options(op, tflite.AddOptions).FusedActivationFunction()
          == tflite.ActivationFunctionType.NONE)


def _match(graph: _Graph, layers: list[_Layer],
           arch: str) -> dict[tuple[str, ...], tuple[int, str, tflite.Operator]]:
  """Pairs each layer of `arch` with its op, `{path: (index, name, op)}`, checking the op sequence.

  Between the layers the sequence must have the residual ADDs and the global
  pool before the classifier; after it, only reshapes and the softmax.
  """
  steps = []
  for layer in layers:
    if layer.path == _HEAD:
      steps.append(("a MEAN or AVERAGE_POOL_2D over the whole feature map", _is_global_pool))
    steps.append(layer)
    if layer.residual:
      steps.append((f"the residual ADD (no activation) of {'/'.join(layer.path[:2])}",
                    _is_plain_add))
  ops = ((i, name, op) for i, name, op in graph.ops() if name not in _REQUANTIZE)
  matched, last = {}, -1
  for step in steps:
    i, name, op = next(ops, (None, None, None))
    expected = str(step) if isinstance(step, _Layer) else step[0]
    if i is None:
      raise ConversionError(f"{graph.path}: the graph ends after op {last}, expected {expected} "
                            f"(not a {arch})")
    if isinstance(step, _Layer):
      found = _describe(name, op) if name in _PERMS else name
      ok = found == step.requirement
      matched[step.path] = (i, name, op)
    else:
      found, ok = name, step[1](graph, name, op)
    if not ok:
      raise ConversionError(f"{graph.path}: op {i} is {found}, expected {expected} "
                            f"(not a {arch} as built here)")
    last = i
  for i, name, _ in ops:
    if name not in _AFTER_CLASSIFIER:
      raise ConversionError(f"{graph.path}: op {i} is {name} after the classifier, expected "
                            f"only {sorted(_AFTER_CLASSIFIER)}")
  return matched


def from_tflite(arch: str, path: str | os.PathLike) -> tuple[nn.Module, dict, Preprocess]:
  """Builds the Flax `arch` with the (dequantized) weights of a TFLite file.

  Args:
    arch: "mobilenet_v2" (TF-slim / TF-Hub MobileNetV2 1.0) or "mobilenet_v1_{alpha}"
      (TF-slim MobileNet V1 at width `alpha`), float, uint8 or int8.
    path: the `.tflite` file.

  Returns:
    `(model, variables, preprocess)`: the model with `same_padding=True,
    folded_bn=True` and as many classes as the file's classifier (1001 for
    ImageNet files, index 0 = background), `{"params": ...}` as float32 numpy
    arrays, and the [-1, 1] input convention of these files.

  Raises:
    ConversionError: naming the file and the first op that is not what the
      model expects, or every weight whose shape differs.
  """
  if arch not in _ARCH_LAYERS:
    raise ValueError(f"from_tflite supports arch {sorted(_ARCH_LAYERS)}, not {arch!r}")
  path = os.fspath(path)
  graph = _Graph(path)
  matched = _match(graph, _ARCH_LAYERS[arch](), arch)
  source, links = {}, {}
  for layer_path, (i, name, op) in matched.items():
    weights_key, bias_key = f"op {i} {name} weights", f"op {i} {name} bias"
    weights = graph.constant(op.Inputs(1))
    if layer_path == _HEAD:  # a 1x1 conv (O, 1, 1, I) is the Dense kernel (I, O)
      weights = weights.reshape(weights.shape[0], -1) if weights.shape[1:3] == (1, 1) else weights
      links[("params", *_HEAD, "kernel")] = Link(weights_key, (1, 0))
      links[("params", *_HEAD, "bias")] = Link(bias_key)
    else:
      links[("params", *layer_path, "conv", "kernel")] = Link(weights_key, _PERMS[name])
      links[("params", *layer_path, "conv", "bias")] = Link(bias_key)
    source[weights_key] = weights
    if op.InputsLength() > 2 and op.Inputs(2) >= 0:
      source[bias_key] = graph.constant(op.Inputs(2))
  num_classes = source[links[("params", *_HEAD, "kernel")].key].shape[0]
  model = models.create(arch, num_classes, same_padding=True, folded_bn=True)
  variables = check_and_build(expected_variables(model), links, source, path,
                              target=f"{arch} with {num_classes} classes")
  return model, variables, MINUS_ONE_TO_ONE
