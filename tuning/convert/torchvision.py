"""Converts torchvision ImageNet checkpoints (MobileNetV2, ResNet-18) to the Flax models.

The Flax models mirror torchvision's modules one to one, so a checkpoint maps
onto them by name: each conv kernel is moved from OIHW to HWIO (which also takes
a depthwise (C, 1, k, k) kernel to (k, k, 1, C)), each linear weight is
transposed, and BatchNorm weight/bias/running statistics become scale/bias and
the `batch_stats` mean/var.
"""
from __future__ import annotations

import functools
import os
from collections.abc import Callable, Mapping
from pathlib import Path

import flax.linen as nn
import numpy as np

from tuning import models
from tuning.download import download
from tuning.convert.common import Link, check_and_build, expected_variables
from tuning.convert.torch_pickle import load_state_dict
from tuning.models.mobilenet_v2 import STAGES
from tuning.preprocess import TORCHVISION, Preprocess

URLS = {
    "mobilenet_v2": "https://download.pytorch.org/models/mobilenet_v2-b0353104.pth",
    "resnet18": "https://download.pytorch.org/models/resnet18-f37072fd.pth",
}

_OIHW_TO_HWIO = (2, 3, 1, 0)
# (collection, "conv" or "bn", Flax leaf of a ConvNormAct) ->
# (0: the torch conv / 1: the torch BatchNorm, torch leaf, perm).
_LEAVES = {
    ("params", "conv", "kernel"): (0, "weight", _OIHW_TO_HWIO),
    ("params", "bn", "scale"): (1, "weight", None),
    ("params", "bn", "bias"): (1, "bias", None),
    ("batch_stats", "bn", "mean"): (1, "running_mean", None),
    ("batch_stats", "bn", "var"): (1, "running_var", None),
}


def _mobilenet_v2_modules(path: tuple[str, ...]) -> tuple[str, str]:
  """torchvision (conv, bn) prefixes of a `ConvNormAct` of the Flax MobileNetV2.

  `features.0` is the stem, `features.1..17` the inverted residuals in order and
  `features.18` the last conv. In a residual, every conv but the last is a
  `Conv2dNormActivation` (`conv.j.0`, `conv.j.1`); the projection is a bare conv
  then a BatchNorm (`conv.j`, `conv.j+1`).
  """
  if len(path) == 1:
    feature = 0 if path == ("stem",) else 1 + sum(units for _, _, units, _ in STAGES)
    return f"features.{feature}.0", f"features.{feature}.1"
  block, unit, name = path
  stage = int(block.removeprefix("block")) - 1
  feature = 1 + sum(units for _, _, units, _ in STAGES[:stage]) + int(unit.removeprefix("unit"))
  names = ("expand", "depthwise", "project")[STAGES[stage][0] == 1:]
  j = names.index(name)
  prefix = f"features.{feature}.conv"
  if name == "project":
    return f"{prefix}.{j}", f"{prefix}.{j + 1}"
  return f"{prefix}.{j}.0", f"{prefix}.{j}.1"


def _resnet_modules(path: tuple[str, ...]) -> tuple[str, str]:
  """torchvision (conv, bn) prefixes of a `ConvNormAct` of the Flax ResNet."""
  if path == ("stem", "conv"):
    return "conv1", "bn1"
  layer, unit, name = path
  prefix = f"{layer}.{unit.removeprefix('unit')}"
  if name == "downsample":
    return f"{prefix}.downsample.0", f"{prefix}.downsample.1"
  return f"{prefix}.{name}", f"{prefix}.bn{name.removeprefix('conv')}"


def _conv_bn_links(expected, classifier: str,
                   modules: Callable[[tuple[str, ...]], tuple[str, str]]) -> dict[tuple[str, ...], Link]:
  """Links for models built from `ConvNormAct`s and a `ClassifierHead`.

  `modules` maps a ConvNormAct's Flax path to its torch (conv, bn) prefixes;
  `classifier` is the torch prefix of the final linear layer.
  """
  links = {}
  for path in expected:
    collection, *module, layer, leaf = path
    if module == ["head"]:
      links[path] = Link(f"{classifier}.{'weight' if leaf == 'kernel' else leaf}",
                         (1, 0) if leaf == "kernel" else None)
    elif (collection, layer, leaf) in _LEAVES:
      which, torch_leaf, perm = _LEAVES[(collection, layer, leaf)]
      links[path] = Link(f"{modules(tuple(module))[which]}.{torch_leaf}", perm)
  return links


# arch -> (links(expected variables, classifier) of the Flax variables to torch keys,
# the torch prefix of the classifier, whose weight shape gives the number of classes).
_ARCHS: dict[str, tuple[Callable[[dict, str], dict[tuple[str, ...], Link]], str]] = {
    "mobilenet_v2": (functools.partial(_conv_bn_links, modules=_mobilenet_v2_modules), "classifier.1"),
    "resnet18": (functools.partial(_conv_bn_links, modules=_resnet_modules), "fc"),
}


def _as_numpy(value) -> np.ndarray:
  """torch tensors (via float32, as numpy has no bfloat16) or array-likes."""
  if hasattr(value, "detach"):
    return np.asarray(value.detach().cpu().float())
  return np.asarray(value)


def from_torchvision(
    arch: str, source: str | os.PathLike | Mapping[str, np.ndarray],
) -> tuple[nn.Module, dict, Preprocess]:
  """Builds the Flax `arch` with a torchvision checkpoint's weights.

  Args:
    arch: "mobilenet_v2" or "resnet18".
    source: a torchvision `.pth` state dict (read without torch), or the state
      dict itself (numpy arrays or torch tensors).

  Returns:
    `(model, variables, preprocess)`: the model with as many classes as the
    checkpoint's classifier, `{"params", "batch_stats"}` as float32 numpy arrays,
    and the input convention of torchvision weights.

  Raises:
    ConversionError: listing every missing, unexpected or mis-shaped key.
  """
  if arch not in _ARCHS:
    raise ValueError(f"unknown arch {arch!r}; expected one of {sorted(_ARCHS)}")
  if isinstance(source, (str, os.PathLike)):
    name, state = os.fspath(source), load_state_dict(source)
  else:
    name, state = "the state dict given", {k: _as_numpy(v) for k, v in source.items()}
  links, classifier = _ARCHS[arch]
  weight = state.get(f"{classifier}.weight")
  num_classes = weight.shape[0] if weight is not None and weight.ndim == 2 else 1000
  model = models.create(arch, num_classes)
  expected = expected_variables(model)
  variables = check_and_build(
      expected, links(expected, classifier), state, name,
      target=f"torchvision {arch} with {num_classes} classes",
      unused_ok=lambda key: key.endswith(".num_batches_tracked"))
  return model, variables, TORCHVISION


def fetch(url: str, dest_dir: str | os.PathLike) -> Path:
  """Downloads a torchvision checkpoint into `dest_dir` once; see `tuning.download`."""
  return download(url, Path(dest_dir) / url.rsplit("/", 1)[-1])
