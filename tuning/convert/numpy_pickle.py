"""Converts pickles of numpy arrays by layer name to the Flax models.

numpy-only frameworks ship their weights this way. The SqueezeNet 1.1 file of
the `ndf` package holds DeepScale's Caffe-trained weights as `{layer: [kernel,
bias]}`, named as the Caffe layers (`conv1`, `fire2/squeeze1x1`, ...,
`conv10`), its kernels already in Flax's HWIO layout, so they map without
transposes. Being Caffe's, they take BGR pixels minus the ImageNet mean
(`CAFFE_IMAGENET`): fed RGB, the real file's top-5 on natural photos gets worse.

Only numpy arrays and the containers around them are unpickled: any other
global in the file is an error, so reading weights never runs code from it.
"""
from __future__ import annotations

import os
import pickle
from collections.abc import Callable, Mapping

import flax.linen as nn
import numpy as np

from tuning import models
from tuning.convert.common import Link, check_and_build, expected_variables
from tuning.preprocess import CAFFE_IMAGENET, Preprocess

# What a pickled ndarray needs; numpy 2 renamed numpy.core to numpy._core.
_GLOBALS = {(core, "_reconstruct") for core in ("numpy.core.multiarray", "numpy._core.multiarray")}
_GLOBALS |= {("numpy", "ndarray"), ("numpy", "dtype")}


class _Unpickler(pickle.Unpickler):
  """Unpickles numpy arrays, dicts, lists and scalars, and refuses every other global."""

  def find_class(self, module, name):
    if (module, name) in _GLOBALS:
      return super().find_class(module, name)
    raise pickle.UnpicklingError(f"unsupported object {module}.{name} in the pickle; "
                                 "only numpy arrays and their containers are read")


def load_arrays(path: str | os.PathLike) -> dict[str, np.ndarray]:
  """The arrays of a pickled `{name: array or list of arrays}`, flattened to `{key: array}`.

  A list's arrays get the keys `name[0]`, `name[1]`, ... (for a layer, its
  kernel and bias), so a converter can name each one it expects.

  Raises:
    ValueError: naming the file, if it is not such a pickle.
  """
  path = os.fspath(path)
  with open(path, "rb") as f:
    try:
      obj = _Unpickler(f).load()
    except Exception as e:  # Any bytes can break the unpickler, each in its own way.
      raise ValueError(f"{path}: not a pickle of numpy arrays ({e})") from e
  if not isinstance(obj, Mapping):
    raise ValueError(f"{path}: the pickle holds a {type(obj).__name__}, not a dict of arrays")
  arrays = {}
  for name, value in obj.items():
    items = ({f"{name}[{i}]": v for i, v in enumerate(value)} if isinstance(value, (list, tuple))
             else {str(name): value})
    for key, array in items.items():
      if not isinstance(array, np.ndarray):
        raise ValueError(f"{path}: {key} is a {type(array).__name__}, not a numpy array")
      arrays[key] = array
  return arrays


def _squeezenet_links(expected) -> dict[tuple[str, ...], Link]:
  """Links for the Flax SqueezeNet 1.1 to Caffe's layer names (`[0]` kernel, `[1]` bias)."""
  links = {}
  for path in expected:
    _, block, *module, _, leaf = path  # e.g. ("params", "fire2", "squeeze", "conv", "kernel")
    if block == "stem":
      layer = "conv1"
    elif block == "head":
      layer = "conv10"
    else:
      layer = f"{block}/{'squeeze1x1' if module == ['squeeze'] else module[0]}"
    links[path] = Link(f"{layer}[{0 if leaf == 'kernel' else 1}]")
  return links


# arch -> (links of its Flax variables to the pickle's keys, the key of the
# classifier's kernel (HWIO, so its last axis counts the classes), input convention).
_ARCHS: dict[str, tuple[Callable[[dict], dict[tuple[str, ...], Link]], str, Preprocess]] = {
    "squeezenet1_1": (_squeezenet_links, "conv10[0]", CAFFE_IMAGENET),
}


def from_numpy_pickle(arch: str, path: str | os.PathLike) -> tuple[nn.Module, dict, Preprocess]:
  """Builds the Flax `arch` with the weights of a pickle of numpy arrays.

  Args:
    arch: a key of `_ARCHS`: "squeezenet1_1" (Caffe layer names, HWIO kernels).
    path: the pickle file.

  Returns:
    `(model, variables, preprocess)`: the model with as many classes as the
    file's classifier, `{"params": ...}` as float32 numpy arrays, and the input
    convention the weights were trained on.

  Raises:
    ValueError: if `path` is not a pickle of numpy arrays.
    ConversionError: listing every missing, unexpected or mis-shaped array.
  """
  if arch not in _ARCHS:
    raise ValueError(f"from_numpy_pickle supports arch {sorted(_ARCHS)}, not {arch!r}")
  links, classifier, preprocess = _ARCHS[arch]
  path = os.fspath(path)
  source = load_arrays(path)
  kernel = source.get(classifier)
  num_classes = kernel.shape[-1] if kernel is not None and kernel.ndim == 4 else 1000
  model = models.create(arch, num_classes)
  expected = expected_variables(model)
  variables = check_and_build(expected, links(expected), source, path,
                              target=f"{arch} with {num_classes} classes")
  return model, variables, preprocess
