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
dense (in, out)); only VGG's fc1 rows need reordering.
"""
from __future__ import annotations

import dataclasses
import functools
import os
from collections.abc import Callable

import flax.linen as nn
import h5py
import numpy as np

from tuning import models
from tuning.convert.common import ConversionError, Link, check_and_build, expected_variables
from tuning.models.inception_v3 import BLOCKS, STEM
from tuning.models.vgg import VGG16, VGG19
from tuning.preprocess import KERAS_CAFFE, MINUS_ONE_TO_ONE, Preprocess

_BASE = "https://storage.googleapis.com/tensorflow/keras-applications"
# keras.applications' WEIGHTS_PATH and WEIGHTS_PATH_NO_TOP.
URLS = {
    "vgg16": f"{_BASE}/vgg16/vgg16_weights_tf_dim_ordering_tf_kernels.h5",
    "vgg16_notop": f"{_BASE}/vgg16/vgg16_weights_tf_dim_ordering_tf_kernels_notop.h5",
    "vgg19": f"{_BASE}/vgg19/vgg19_weights_tf_dim_ordering_tf_kernels.h5",
    "vgg19_notop": f"{_BASE}/vgg19/vgg19_weights_tf_dim_ordering_tf_kernels_notop.h5",
    "inception_v3": f"{_BASE}/inception_v3/inception_v3_weights_tf_dim_ordering_tf_kernels.h5",
    "inception_v3_notop":
        f"{_BASE}/inception_v3/inception_v3_weights_tf_dim_ordering_tf_kernels_notop.h5",
}

Path = tuple[str, ...]
# (H, W, C) of the map VGG's fc6 flattens: block5's 512 channels, pooled to 7x7.
_VGG_FC6_INPUT = (7, 7, 512)


@dataclasses.dataclass(frozen=True)
class _Layer:
  """A weighted Keras layer: its class (snake case) and the Flax variable of each array.

  `flatten_hwc`: the kernel's rows are a Keras `Flatten` of an (H, W, C) map,
  while the Flax model flattens (C, H, W) as torchvision does.
  """
  kind: str
  variables: tuple[Path, ...]
  flatten_hwc: tuple[int, int, int] | None = None


def _dense(block: str, layer: str, flatten_hwc=None) -> _Layer:
  return _Layer("dense", (("params", block, layer, "kernel"), ("params", block, layer, "bias")),
                flatten_hwc)


def _conv_bn(path: Path) -> tuple[_Layer, _Layer]:
  """The Conv2D (no bias) and BatchNormalization (no scale) of a `conv2d_bn` at `path`."""
  return (_Layer("conv2d", (("params", *path, "conv", "kernel"),)),
          _Layer("batch_normalization", (("params", *path, "bn", "bias"),
                                         ("batch_stats", *path, "bn", "mean"),
                                         ("batch_stats", *path, "bn", "var"))))


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
  layers = [layer for group in STEM for conv in group for layer in _conv_bn(("stem", conv.name))]
  for block, branches in BLOCKS:
    ranked = []  # (-depth, creation index, layer)
    for branch in branches:
      stages = [(conv,) for conv in branch.convs] + ([branch.split] if branch.split else [])
      for i, stage in enumerate(stages):
        depth = 3 * (len(stages) - i) + bool(branch.split)
        for conv in stage:
          conv_layer, bn_layer = _conv_bn((block, conv.name))
          ranked += [(-depth, len(ranked), conv_layer), (1 - depth, len(ranked) + 1, bn_layer)]
    layers += [layer for *_, layer in sorted(ranked, key=lambda item: item[:2])]
  return layers + [_dense("head", "classifier")]


def _vgg_layers(depths: tuple[int, ...]) -> list[_Layer]:
  """block1_conv1 .. block5_convN, fc1, fc2, predictions."""
  convs = [_Layer("conv2d", (("params", f"block{b}", f"conv{j}", "kernel"),
                             ("params", f"block{b}", f"conv{j}", "bias")))
           for b, depth in enumerate(depths, start=1) for j in range(depth)]
  return convs + [_dense("fc6", "dense", _VGG_FC6_INPUT), _dense("fc7", "dense"),
                  _dense("head", "classifier")]


# arch -> (its weighted Keras layers in order, how many of them a `notop` file
# lacks, the input convention of the weights).
_ARCHS: dict[str, tuple[Callable[[], list[_Layer]], int, Preprocess]] = {
    "vgg16": (functools.partial(_vgg_layers, VGG16), 3, KERAS_CAFFE),
    "vgg19": (functools.partial(_vgg_layers, VGG19), 3, KERAS_CAFFE),
    "inception_v3": (_inception_v3_layers, 1, MINUS_ONE_TO_ONE),
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


def from_keras(arch: str, path: str | os.PathLike) -> tuple[nn.Module, dict, Preprocess]:
  """Builds the Flax `arch` with the weights of a Keras HDF5 file.

  Args:
    arch: "vgg16", "vgg19", "inception_v3", or "vgg16_gap"/"vgg19_gap" (the
      conv blocks of a VGG file, with or without its top).
    path: a legacy `.h5` (keras.applications' downloads, full or `notop`) or
      a Keras 3 `.weights.h5` file, of the architecture as `keras.applications`
      builds it.

  Returns:
    `(model, variables, preprocess)`: the model with as many classes as the
    file's classifier (1000 without one), its variables as float32 numpy arrays
    (without the `head` when the file has no top, or for a `_gap` variant) and
    the input convention of Keras's weights: `preprocess_input(mode="caffe")`
    for VGG, `mode="tf"` ([-1, 1]) for InceptionV3.

  Raises:
    ConversionError: naming the file and every missing, unexpected or
      mis-shaped array.
  """
  base = _NEW_HEAD_VARIANTS.get(arch, arch)
  if base not in _ARCHS:
    raise ValueError(f"unknown arch {arch!r}; "
                     f"expected one of {sorted([*_ARCHS, *_NEW_HEAD_VARIANTS])}")
  list_layers, top_size, preprocess = _ARCHS[base]
  layers = list_layers()
  source = _File(os.fspath(path))
  keys = source.keys(layers)
  arrays = source.arrays
  top = [key for layer_keys in keys[-top_size:] for key in layer_keys]
  has_top = any(key in arrays for key in top)
  # A variant links the trunk only; an arch all its layers but the head if the file has no top.
  linked = len(layers) - top_size if arch != base else len(layers) - (not has_top)
  head_kernel = arrays.get(keys[-1][0]) if has_top else None
  num_classes = head_kernel.shape[-1] if head_kernel is not None and head_kernel.ndim == 2 else 1000
  model = models.create(arch, num_classes)
  expected = {variable: shape for variable, shape in expected_variables(model).items()
              if variable[1] != "head" or linked == len(layers)}
  links = {}
  for layer, layer_keys in zip(layers[:linked], keys[:linked]):
    if layer.flatten_hwc and layer_keys[0] in arrays:
      kernel = arrays[layer_keys[0]]
      if kernel.ndim == 2 and kernel.shape[0] == np.prod(layer.flatten_hwc):
        arrays[layer_keys[0]] = _chw_rows(kernel, layer.flatten_hwc)
    links.update((variable, Link(key)) for variable, key in zip(layer.variables, layer_keys))
  variables = check_and_build(
      expected, links, arrays, source.path,
      target=f"Keras {base} with {num_classes} classes" + (" (its trunk)" if arch != base else ""),
      unused_ok=lambda key: arch != base and key in top)
  return model, variables, preprocess
