"""Converts Keras ImageNet weight files (HDF5, read with h5py: no Keras needed) to the Flax models.

Both layouts Keras writes are read:

- legacy HDF5, as `keras.applications` downloads it (and Keras 2's
  `save_weights`, or a whole model saved as `.h5`, whose weights sit under
  `model_weights`): the attribute `layer_names` lists the layers in
  `model.layers` order, and each layer group lists its arrays in `weight_names`;
- Keras 3's `.weights.h5` (`model.save_weights`): `layers/<class>[_k]/vars/<i>`
  for the k-th layer of each class in `model.layers` order.

Layer names do not identify layers: Keras numbers them per session
(`conv2d_37`, ...), and Keras 3 files do not use them. So, as Keras's own
loaders do, layers are matched by position: each architecture lists its
weighted Keras layers in `model.layers` order, with the Flax variable each of
their arrays becomes. Keras kernels already have Flax's layouts (conv HWIO,
dense (in, out)), but for depthwise kernels, (k, k, C, 1) in Keras and
(k, k, 1, C) in Flax, and VGG's fc1 rows, which need reordering. ResNet50's
convs have a bias before their BatchNorm, which the model has not: BN(conv(x) + b)
with moving mean m is BN(conv(x)) with mean m - b (and in training the batch
mean absorbs b), so the bias is folded into the mean. EfficientNet normalises
its input inside the model, with a `Normalization` layer whose mean and
variance are in the file: they become the returned `Preprocess`, not layers.
MobileNet (V1) classifies with a 1x1 conv (`conv_preds`) on the pooled map,
whose (1, 1, C, classes) kernel is the Flax classifier's (C, classes).

Keras's MobileNet pads the input of each stride-2 depthwise conv by one pixel
at the end (`ZeroPadding2D(((0, 1), (0, 1)))`, then 'valid'), which is
TensorFlow's 'SAME' on even maps only: on an odd map SAME pads one pixel on
both sides. The Flax model uses SAME, the padding TF-slim trained the weights
with (Keras's ImageNet files are TF-slim's checkpoints): it reproduces Keras
wherever every stride-2 depthwise conv sees an even map (as on inputs of a
multiple of 32 pixels, 224 among them), and TF-slim's network everywhere.
"""
from __future__ import annotations

import dataclasses
import functools
import os
from collections.abc import Callable

import flax.linen as nn
import h5py
import jax
import numpy as np
from flax import traverse_util

from tuning import models
from tuning.convert.common import ConversionError, Link, check_and_build, expected_variables
from tuning.models.efficientnet import STAGES as EFFICIENTNET_STAGES
from tuning.models.inception_v3 import BLOCKS, STEM
from tuning.models.mobilenet_v1 import STAGES as MOBILENET_V1_STAGES
from tuning.models.mobilenet_v1 import WIDTHS as MOBILENET_V1_WIDTHS
from tuning.models.mobilenet_v2 import STAGES as MOBILENET_V2_STAGES
from tuning.models.vgg import VGG16, VGG19
from tuning.preprocess import KERAS_CAFFE, MINUS_ONE_TO_ONE, TORCHVISION, Preprocess

_BASE = "https://storage.googleapis.com/tensorflow/keras-applications"
# How keras.applications.mobilenet writes each width multiplier in its file names.
_MOBILENET_V1_ALPHAS = {1.0: "1_0", 0.75: "7_5", 0.5: "5_0", 0.25: "2_5"}
# keras.applications' WEIGHTS_PATH and WEIGHTS_PATH_NO_TOP.
URLS = {
    "vgg16": f"{_BASE}/vgg16/vgg16_weights_tf_dim_ordering_tf_kernels.h5",
    "vgg16_notop": f"{_BASE}/vgg16/vgg16_weights_tf_dim_ordering_tf_kernels_notop.h5",
    "vgg19": f"{_BASE}/vgg19/vgg19_weights_tf_dim_ordering_tf_kernels.h5",
    "vgg19_notop": f"{_BASE}/vgg19/vgg19_weights_tf_dim_ordering_tf_kernels_notop.h5",
    "inception_v3": f"{_BASE}/inception_v3/inception_v3_weights_tf_dim_ordering_tf_kernels.h5",
    "inception_v3_notop":
        f"{_BASE}/inception_v3/inception_v3_weights_tf_dim_ordering_tf_kernels_notop.h5",
    "densenet121": f"{_BASE}/densenet/densenet121_weights_tf_dim_ordering_tf_kernels.h5",
    "densenet121_notop":
        f"{_BASE}/densenet/densenet121_weights_tf_dim_ordering_tf_kernels_notop.h5",
    "mobilenet_v2":
        f"{_BASE}/mobilenet_v2/mobilenet_v2_weights_tf_dim_ordering_tf_kernels_1.0_224.h5",
    "mobilenet_v2_notop":
        f"{_BASE}/mobilenet_v2/mobilenet_v2_weights_tf_dim_ordering_tf_kernels_1.0_224_no_top.h5",
    "resnet50": f"{_BASE}/resnet/resnet50_weights_tf_dim_ordering_tf_kernels.h5",
    "resnet50_notop": f"{_BASE}/resnet/resnet50_weights_tf_dim_ordering_tf_kernels_notop.h5",
    # keras.applications.efficientnet's own BASE_WEIGHTS_PATH, outside `_BASE`.
    "efficientnet_b0": "https://storage.googleapis.com/keras-applications/efficientnetb0.h5",
    "efficientnet_b0_notop":
        "https://storage.googleapis.com/keras-applications/efficientnetb0_notop.h5",
    # keras.applications.mobilenet's BASE_WEIGHT_PATH; the 224 px files of each width
    # (its 128, 160 and 192 px files hold the same layers, and convert as well).
    **{f"mobilenet_v1_{alpha}{key}": f"{_BASE}/mobilenet/mobilenet_{text}_224_tf{suffix}.h5"
       for alpha, text in _MOBILENET_V1_ALPHAS.items()
       for key, suffix in (("", ""), ("_notop", "_no_top"))},
}

Path = tuple[str, ...]
# The pseudo-collection of conv biases to fold into BatchNorm means: `(_CONV_BIAS,
# *path)` is the bias folded into the variable `("batch_stats", *path)`.
_CONV_BIAS = "conv_bias"
# (H, W, C) of the map VGG's fc6 flattens: block5's 512 channels, pooled to 7x7.
_VGG_FC6_INPUT = (7, 7, 512)
# The pseudo-collection of the input `Normalization` layer's arrays (EfficientNet),
# by name with their shapes: per-channel mean and variance, and the sample count
# of `adapt`, which the conversion checks but does not need.
_NORMALIZATION = "normalization"
_NORMALIZATION_SHAPES = {"mean": (3,), "variance": (3,), "count": ()}
# keras.applications.efficientnet.IMAGENET_STDDEV_RGB (see `_normalization_preprocess`).
_KERAS_IMAGENET_STDDEV = (0.229, 0.224, 0.225)


@dataclasses.dataclass(frozen=True)
class _Layer:
  """A weighted Keras layer: its class (snake case) and the Flax variable of each array.

  `flatten_hwc`: the kernel's rows are a Keras `Flatten` of an (H, W, C) map,
  while the Flax model flattens (C, H, W) as torchvision does.
  `kernel_perm`: the axis permutation of the first array (the kernel) into Flax's layout.
  `conv_1x1`: the kernel is a 1x1 Conv2D's, (1, 1, in, out), where the Flax layer is dense.
  """
  kind: str
  variables: tuple[Path, ...]
  flatten_hwc: tuple[int, int, int] | None = None
  kernel_perm: tuple[int, ...] | None = None
  conv_1x1: bool = False


def _dense(block: str, layer: str, flatten_hwc=None) -> _Layer:
  return _Layer("dense", (("params", block, layer, "kernel"), ("params", block, layer, "bias")),
                flatten_hwc)


def _conv(path: Path, depthwise: bool = False, bias: bool = False) -> _Layer:
  """A Conv2D (or DepthwiseConv2D), the `conv` of a `ConvNormAct` at `path`.

  `bias`: the conv has one, to fold into the moving mean of the `ConvNormAct`'s BatchNorm.
  """
  kernel = (("params", *path, "conv", "kernel"),)
  if depthwise:
    return _Layer("depthwise_conv2d", kernel, kernel_perm=(0, 1, 3, 2))
  return _Layer("conv2d", (*kernel, (_CONV_BIAS, *path, "bn", "mean")) if bias else kernel)


def _batch_norm(path: Path, scale: bool = True) -> _Layer:
  """The BatchNormalization `bn` at `path`: gamma (if `scale`), beta, moving mean and variance."""
  gamma = (("params", *path, "bn", "scale"),) if scale else ()
  return _Layer("batch_normalization", (*gamma, ("params", *path, "bn", "bias"),
                                        ("batch_stats", *path, "bn", "mean"),
                                        ("batch_stats", *path, "bn", "var")))


def _conv_bn(path: Path, scale: bool = True, depthwise: bool = False,
             bias: bool = False) -> tuple[_Layer, _Layer]:
  """The conv and BatchNormalization of a `ConvNormAct` at `path`."""
  return _conv(path, depthwise, bias), _batch_norm(path, scale)


def _inception_v3_layers() -> list[_Layer]:
  """InceptionV3's weighted layers in Keras's `model.layers` order.

  A Keras functional model orders its layers by decreasing depth (the longest
  path to the output), ties in the order they were created (`map_graph` in
  keras/src/ops/function.py), which is not the order of the source: within a
  module, long branches come first. A `conv2d_bn` is three layers (conv,
  BatchNorm, ReLU) and a concatenation one, so a conv lies 3 layers per conv
  from it to the end of its branch above the module's output, plus one behind
  the inner concatenation of mixed9/mixed10. The modules follow each other.
  """
  layers = [layer for group in STEM for conv in group
            for layer in _conv_bn(("stem", conv.name), scale=False)]
  for block, branches in BLOCKS:
    ranked = []  # (-depth, creation index, layer)
    for branch in branches:
      stages = [(conv,) for conv in branch.convs] + ([branch.split] if branch.split else [])
      for i, stage in enumerate(stages):
        depth = 3 * (len(stages) - i) + bool(branch.split)
        for conv in stage:
          conv_layer, bn_layer = _conv_bn((block, conv.name), scale=False)
          ranked += [(-depth, len(ranked), conv_layer), (1 - depth, len(ranked) + 1, bn_layer)]
    layers += [layer for *_, layer in sorted(ranked, key=lambda item: item[:2])]
  return layers + [_dense("head", "classifier")]


def _biased_conv(path: Path) -> _Layer:
  """A Conv2D with a bias: the `nn.Conv` at `path`."""
  return _Layer("conv2d", (("params", *path, "kernel"), ("params", *path, "bias")))


def _vgg_layers(depths: tuple[int, ...]) -> list[_Layer]:
  """block1_conv1 .. block5_convN, fc1, fc2, predictions."""
  convs = [_biased_conv((f"block{b}", f"conv{j}"))
           for b, depth in enumerate(depths, start=1) for j in range(depth)]
  return convs + [_dense("fc6", "dense", _VGG_FC6_INPUT), _dense("fc7", "dense"),
                  _dense("head", "classifier")]


def _densenet121_layers() -> list[_Layer]:
  """conv1, then per dense layer `_0_bn, _1_conv, _1_bn, _2_conv`, per transition `_bn, _conv`.

  The shortcut of each dense layer (its input, concatenated to its output) is
  shorter than the layer itself, so Keras's depth order is the source order.
  The final `bn` is block4's own BatchNorm.
  """
  units = models.create("densenet121", 1000).units
  layers = list(_conv_bn(("stem", "conv")))
  for k, count in enumerate(units, start=1):
    for i in range(count):
      for conv in ("conv1", "conv2"):
        layers += [_batch_norm((f"block{k}", f"layer{i}", conv)),
                   _conv((f"block{k}", f"layer{i}", conv))]
    layers += ([_batch_norm((f"block{k}", "transition")), _conv((f"block{k}", "transition"))]
               if k < len(units) else [_batch_norm((f"block{k}",))])
  return layers + [_dense("head", "classifier")]


def _mobilenet_v2_layers() -> list[_Layer]:
  """Conv1, each inverted residual's expand (but at expansion 1), depthwise and project, Conv_1.

  As in DenseNet, the residual shortcuts are shorter than the convs they skip:
  Keras's depth order is the source order.
  """
  layers = list(_conv_bn(("stem",)))
  for i, (expansion, _, units, _) in enumerate(MOBILENET_V2_STAGES, start=1):
    for unit in range(units):
      for conv in ("expand", "depthwise", "project")[expansion == 1:]:
        layers += _conv_bn((f"block{i}", f"unit{unit}", conv), depthwise=conv == "depthwise")
  return layers + [*_conv_bn(("conv_last",)), _dense("head", "classifier")]


def _mobilenet_v1_layers() -> list[_Layer]:
  """conv1, per unit `conv_dw_k, conv_dw_k_bn, conv_pw_k, conv_pw_k_bn`, conv_preds.

  A single chain of layers: Keras's depth order is the source order. The
  classifier `conv_preds` is a 1x1 Conv2D with bias.
  """
  layers = list(_conv_bn(("stem",)))
  for i, (_, units, _) in enumerate(MOBILENET_V1_STAGES, start=1):
    for unit in range(units):
      for conv in ("depthwise", "pointwise"):
        layers += _conv_bn((f"block{i}", f"unit{unit}", conv), depthwise=conv == "depthwise")
  return layers + [_Layer("conv2d", _dense("head", "classifier").variables, conv_1x1=True)]


def _resnet50_layers() -> list[_Layer]:
  """conv1, then per unit `_1_conv, _1_bn, _2_conv, _2_bn, _3_conv, _3_bn`, all convs with bias.

  A stage's first unit has a shortcut conv `_0_conv, _0_bn`, 2 layers deep to
  the unit's sum as `_3_conv, _3_bn` are, and created before them: Keras's
  depth order (see `_inception_v3_layers`) puts `_0_conv, _3_conv, _0_bn, _3_bn`.
  """
  units = models.create("resnet50", 1000).units
  layers = list(_conv_bn(("stem", "conv"), bias=True))
  for s, count in enumerate(units, start=1):
    for i in range(count):
      unit = (f"layer{s}", f"unit{i}")
      for conv in ("conv1", "conv2"):
        layers += _conv_bn((*unit, conv), bias=True)
      last = _conv_bn((*unit, "conv3"), bias=True)
      if i == 0:
        shortcut = _conv_bn((*unit, "downsample"), bias=True)
        last = (shortcut[0], last[0], shortcut[1], last[1])
      layers += last
  return layers + [_dense("head", "classifier")]


def _efficientnet_b0_layers() -> list[_Layer]:
  """normalization, stem, per unit expand, dwconv, se_reduce, se_expand, project; top_conv.

  Units at expansion 1 have no expand conv. Each conv has a BatchNorm but the
  squeeze-excitation's two, which have a bias instead. The squeeze-excitation
  branch is longer than the path it gates and the residual shortcuts are
  shorter than the units they skip: as in MobileNetV2, Keras's depth order is
  the source order.
  """
  normalization = tuple((_NORMALIZATION, name) for name in _NORMALIZATION_SHAPES)
  layers = [_Layer("normalization", normalization), *_conv_bn(("stem",))]
  for i, (expansion, _, _, units, _) in enumerate(EFFICIENTNET_STAGES, start=1):
    for unit in range(units):
      path = (f"block{i}", f"unit{unit}")
      if expansion != 1:
        layers += _conv_bn((*path, "expand"))
      layers += [*_conv_bn((*path, "depthwise"), depthwise=True),
                 _biased_conv((*path, "se", "fc1")), _biased_conv((*path, "se", "fc2")),
                 *_conv_bn((*path, "project"))]
  return layers + [*_conv_bn(("conv_last",)), _dense("head", "classifier")]


def _normalization_preprocess(normalization: dict) -> Preprocess:
  """The input convention of Keras EfficientNet's `Rescaling(1/255)` and `Normalization`.

  Keras computes `(x/255 - mean) / sqrt(variance)` with the file's mean and
  variance. Its ImageNet file holds ImageNet's RGB mean, but its RGB standard
  deviation as the variance (tensorflow/tensorflow#49930), so a model built
  with `weights="imagenet"` divides by `sqrt(stddev)` once more, which gives
  `(x/255 - mean) / stddev`, the convention the weights were trained with.
  A file with this variance comes from such a model (the Normalization is not
  trained when fine-tuning it): its convention is that; any other file's is its
  own Normalization's. Conventions equal to torchvision's are returned as `TORCHVISION`.
  """
  mean = 255.0 * normalization["mean"].astype(np.float64)
  std = 255.0 * np.sqrt(normalization["variance"].astype(np.float64))
  if np.allclose(normalization["variance"], _KERAS_IMAGENET_STDDEV):
    std = std * np.sqrt(_KERAS_IMAGENET_STDDEV)
  if np.allclose(mean, TORCHVISION.mean, atol=1e-3) and np.allclose(std, TORCHVISION.std,
                                                                     atol=1e-3):
    return TORCHVISION
  return Preprocess("keras_efficientnet", tuple(mean.tolist()), tuple(std.tolist()))


def _fold_conv_biases(variables: dict) -> dict:
  """`variables` with each `_CONV_BIAS` subtracted from its BatchNorm's moving mean."""
  biases = traverse_util.flatten_dict(variables.pop(_CONV_BIAS, {}))
  if biases:
    stats = traverse_util.flatten_dict(variables["batch_stats"])
    for path, bias in biases.items():
      stats[path] = stats[path] - bias
    variables["batch_stats"] = traverse_util.unflatten_dict(stats)
  return variables


@dataclasses.dataclass(frozen=True)
class _Arch:
  """How `keras.applications` builds an arch.

  `layers`: its weighted Keras layers in order; `top_size`: how many of them a
  `notop` file lacks; `preprocess`: the input convention of its weights (None:
  that of the file's `Normalization` layer, see `_normalization_preprocess`);
  `attributes`: the Flax model attributes that reproduce Keras's layers.
  """
  layers: Callable[[], list[_Layer]]
  top_size: int
  preprocess: Preprocess | None
  attributes: dict = dataclasses.field(default_factory=dict)


_ARCHS: dict[str, _Arch] = {
    "vgg16": _Arch(functools.partial(_vgg_layers, VGG16), 3, KERAS_CAFFE),
    "vgg19": _Arch(functools.partial(_vgg_layers, VGG19), 3, KERAS_CAFFE),
    "inception_v3": _Arch(_inception_v3_layers, 1, MINUS_ONE_TO_ONE),
    # Keras's `preprocess_input(mode="torch")` is torchvision's normalisation. Its
    # BatchNorms' eps, 1.001e-5, is the model's 1e-5 to within 1e-8 of a variance.
    "densenet121": _Arch(_densenet121_layers, 1, TORCHVISION),
    # TensorFlow's padding and BatchNorm epsilon, and 1000 classes (no background).
    "mobilenet_v2": _Arch(_mobilenet_v2_layers, 1, MINUS_ONE_TO_ONE,
                          {"same_padding": True, "bn_epsilon": 1e-3}),
    # The paper's ResNet (v1); BatchNorm eps as DenseNet's.
    "resnet50": _Arch(_resnet50_layers, 1, KERAS_CAFFE, {"stride_in_1x1": True}),
    # ZeroPadding2D(correct_pad) before 'valid' stride-2 convs is TensorFlow's
    # 'SAME'; Keras's BatchNorm epsilon.
    "efficientnet_b0": _Arch(_efficientnet_b0_layers, 1, None,
                             {"same_padding": True, "bn_epsilon": 1e-3}),
    # TensorFlow's padding (see the module's doc) and Keras's BatchNorm epsilon.
    **{f"mobilenet_v1_{alpha}": _Arch(_mobilenet_v1_layers, 1, MINUS_ONE_TO_ONE,
                                      {"same_padding": True, "bn_epsilon": 1e-3})
       for alpha in MOBILENET_V1_WIDTHS},
}
# Variants with a new head on an arch's trunk: they take the trunk of a full or
# a notop file, and everything but their `head`, which `pretrained.transplant`
# initialises anyway.
_NEW_HEAD_VARIANTS = {"vgg16_gap": "vgg16", "vgg19_gap": "vgg19"}


def _strings(group: h5py.Group, name: str) -> list[str]:
  """A list-of-strings attribute, which Keras splits into `name0`, `name1`, ... when large."""
  chunks = [group.attrs[name]] if name in group.attrs else []
  while f"{name}{len(chunks)}" in group.attrs:
    chunks.append(group.attrs[f"{name}{len(chunks)}"])
  return [s.decode("utf8") if isinstance(s, bytes) else str(s) for chunk in chunks for s in chunk]


class _File:
  """The arrays of a Keras weights file by HDF5 path, and the path of each layer's arrays."""

  def __init__(self, path: str):
    self.path = path
    with h5py.File(path, "r") as f:
      group = f["model_weights"] if "model_weights" in f else f
      names = _strings(group, "layer_names")
      self.legacy = bool(names)
      if not self.legacy and "layers" not in f:
        raise ConversionError(f"{path}: not a Keras weights file (neither a `layer_names` "
                              "attribute, as in legacy .h5 files, nor a Keras 3 `layers` group)")
      self.arrays: dict[str, np.ndarray] = {}
      # Legacy files: each weighted layer's name and array paths, in order.
      self.layers: list[tuple[str, list[str]]] = []
      if self.legacy:
        for name in names:
          keys = [f"{name}/{weight}" for weight in _strings(group[name], "weight_names")]
          if keys:
            self.layers.append((name, keys))
            self.arrays.update((key, group[key][()]) for key in keys)
      else:
        f.visititems(lambda key, item: self.arrays.__setitem__(key, item[()])
                     if isinstance(item, h5py.Dataset) else None)

  def keys(self, layers: list[_Layer]) -> list[list[str]]:
    """The array paths that hold each of `layers` (a model's, in order), present or not."""
    keys = []
    if self.legacy:
      for i, layer in enumerate(layers):
        name, found = self.layers[i] if i < len(self.layers) else (f"weighted layer {i + 1}", [])
        keys.append([found[j] if j < len(found) else f"{name}/weight {j}"
                     for j in range(len(layer.variables))])
      return keys
    counts = {}
    for layer in layers:
      k = counts[layer.kind] = counts.get(layer.kind, -1) + 1
      keys.append([f"layers/{layer.kind}{f'_{k}' if k else ''}/vars/{j}"
                   for j in range(len(layer.variables))])
    return keys


def _chw_rows(kernel: np.ndarray, hwc: tuple[int, int, int]) -> np.ndarray:
  """A dense kernel on a Keras (H, W, C) flatten, reordered for a (C, H, W) one."""
  h, w, c = hwc
  return kernel.reshape(h, w, c, -1).transpose(2, 0, 1, 3).reshape(h * w * c, -1)


def _flax_kernel(layer: _Layer, kernel: np.ndarray) -> np.ndarray:
  """`layer`'s kernel as its Flax variable lays it out, where more than a permutation differs.

  A kernel of an unexpected shape is left as it is, for `check_and_build` to report.
  """
  if layer.flatten_hwc and kernel.ndim == 2 and kernel.shape[0] == np.prod(layer.flatten_hwc):
    return _chw_rows(kernel, layer.flatten_hwc)
  if layer.conv_1x1 and kernel.ndim == 4 and kernel.shape[:2] == (1, 1):
    return kernel[0, 0]
  return kernel


def from_keras(arch: str, path: str | os.PathLike) -> tuple[nn.Module, dict, Preprocess]:
  """Builds the Flax `arch` with the weights of a Keras HDF5 file.

  Args:
    arch: "vgg16", "vgg19", "inception_v3", "densenet121", "mobilenet_v2",
      "mobilenet_v1_{0.25,0.5,0.75,1.0}", "resnet50", "efficientnet_b0", or
      "vgg16_gap"/"vgg19_gap" (the conv blocks of a VGG file, with or without
      its top).
    path: a legacy `.h5` (keras.applications' downloads, full or `notop`) or
      a Keras 3 `.weights.h5` file, of the architecture as `keras.applications`
      builds it.

  Returns:
    `(model, variables, preprocess)`: the model with as many classes as the
    file's classifier (1000 without one) and the attributes of Keras's layers
    (MobileNetV2, MobileNet V1, EfficientNet-B0: `same_padding=True,
    bn_epsilon=1e-3`; ResNet50: `stride_in_1x1=True`), its variables as float32
    numpy arrays (without the `head` when the file has no top, or for a `_gap`
    variant) and the input convention of Keras's weights:
    `preprocess_input(mode="caffe")` for VGG and ResNet50, `mode="tf"`
    ([-1, 1]) for InceptionV3 and the MobileNets, `mode="torch"`
    (torchvision's) for DenseNet, and for EfficientNet-B0 the one of its own
    input layers (`_normalization_preprocess`; torchvision's for the ImageNet file).

  Raises:
    ConversionError: naming the file and every missing, unexpected or
      mis-shaped array.
  """
  base = _NEW_HEAD_VARIANTS.get(arch, arch)
  if base not in _ARCHS:
    raise ValueError(f"unknown arch {arch!r}; "
                     f"expected one of {sorted([*_ARCHS, *_NEW_HEAD_VARIANTS])}")
  spec = _ARCHS[base]
  layers, top_size = spec.layers(), spec.top_size
  source = _File(os.fspath(path))
  keys = source.keys(layers)
  arrays = source.arrays
  for layer, layer_keys in zip(layers, keys):
    if layer_keys[0] in arrays:
      arrays[layer_keys[0]] = _flax_kernel(layer, arrays[layer_keys[0]])
  top = [key for layer_keys in keys[-top_size:] for key in layer_keys]
  has_top = any(key in arrays for key in top)
  # A variant links the trunk only; an arch all its layers but the head if the file has no top.
  linked = len(layers) - top_size if arch != base else len(layers) - (not has_top)
  head_kernel = arrays.get(keys[-1][0]) if has_top else None
  num_classes = head_kernel.shape[-1] if head_kernel is not None and head_kernel.ndim == 2 else 1000
  model = models.create(arch, num_classes, **spec.attributes)
  expected = {variable: shape for variable, shape in expected_variables(model).items()
              if variable[1] != "head" or linked == len(layers)}
  links = {}
  for layer, layer_keys in zip(layers[:linked], keys[:linked]):
    links.update((variable, Link(key, layer.kernel_perm if j == 0 else None))
                 for j, (variable, key) in enumerate(zip(layer.variables, layer_keys)))
  # A conv bias is checked as the BatchNorm mean it is folded into.
  expected.update((variable, expected[("batch_stats", *variable[1:])])
                  for variable in links if variable[0] == _CONV_BIAS)
  expected.update((variable, jax.ShapeDtypeStruct(_NORMALIZATION_SHAPES[variable[1]], np.float32))
                  for variable in links if variable[0] == _NORMALIZATION)
  variables = check_and_build(
      expected, links, arrays, source.path,
      target=f"Keras {base} with {num_classes} classes" + (" (its trunk)" if arch != base else ""),
      unused_ok=lambda key: arch != base and key in top)
  normalization = variables.pop(_NORMALIZATION, None)
  preprocess = spec.preprocess or _normalization_preprocess(normalization)
  return model, _fold_conv_biases(variables), preprocess
