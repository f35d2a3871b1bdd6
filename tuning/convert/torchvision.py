"""Converts torchvision ImageNet checkpoints to the Flax models.

The Flax models mirror torchvision's modules one to one, so a checkpoint maps
onto them by name: each conv kernel is moved from OIHW to HWIO (which also takes
a depthwise (C, 1, k, k) kernel to (k, k, 1, C)), each linear weight is
transposed, and BatchNorm weight/bias/running statistics become scale/bias and
the `batch_stats` mean/var. Where a Flax model also serves another framework's
layout (InceptionV3: Keras's), `_ATTRIBUTES` sets it to compute as torchvision's.

EfficientNet-Lite0 files in the layout of efficientnet-lite-pytorch (a PyTorch
port of the TensorFlow Lite models) are PyTorch state dicts too, and convert here.
"""
from __future__ import annotations

import functools
import os
import re
from collections.abc import Callable, Mapping
from pathlib import Path

import flax.linen as nn
import numpy as np

from tuning import models
from tuning.download import download
from tuning.convert.common import Link, check_and_build, expected_variables
from tuning.convert.torch_pickle import load_state_dict
from tuning.models.efficientnet import STAGES as EFFICIENTNET_STAGES
from tuning.models.inception_v3 import BLOCKS as INCEPTION_V3_BLOCKS
from tuning.models.mobilenet_v2 import STAGES
from tuning.models.vgg import VGG16, VGG19
from tuning.preprocess import MINUS_ONE_TO_ONE, TORCHVISION, Preprocess

URLS = {
    "alexnet": "https://download.pytorch.org/models/alexnet-owt-7be5be79.pth",
    "mobilenet_v2": "https://download.pytorch.org/models/mobilenet_v2-b0353104.pth",
    "resnet18": "https://download.pytorch.org/models/resnet18-f37072fd.pth",
    "resnet50": "https://download.pytorch.org/models/resnet50-11ad3fa6.pth",
    "densenet121": "https://download.pytorch.org/models/densenet121-a639ec97.pth",
    "vgg16": "https://download.pytorch.org/models/vgg16-397923af.pth",
    "vgg19": "https://download.pytorch.org/models/vgg19-dcbb9e9d.pth",
    "squeezenet1_1": "https://download.pytorch.org/models/squeezenet1_1-b8a52dc0.pth",
    "efficientnet_b0": "https://download.pytorch.org/models/efficientnet_b0_rwightman-7f5810bc.pth",
    "inception_v3": "https://download.pytorch.org/models/inception_v3_google-0cc3c7bd.pth",
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


def _densenet_modules(path: tuple[str, ...]) -> tuple[str | None, str]:
  """torchvision (conv, bn) prefixes of a `ConvNormAct` or `NormActConv` of the Flax DenseNet.

  The last block's own BatchNorm is `features.norm5`, the one without a conv (None).
  """
  if path == ("stem", "conv"):
    return "features.conv0", "features.norm0"
  block, *rest = path
  k = block.removeprefix("block")
  if not rest:
    return None, "features.norm5"
  if rest == ["transition"]:
    return f"features.transition{k}.conv", f"features.transition{k}.norm"
  layer, name = rest
  prefix = f"features.denseblock{k}.denselayer{int(layer.removeprefix('layer')) + 1}"
  return f"{prefix}.{name}", f"{prefix}.norm{name.removeprefix('conv')}"


def _efficientnet_module(path: tuple[str, ...]) -> str:
  """torchvision module of a `ConvNormAct` or a squeeze-excitation of the Flax EfficientNet-B0.

  `features.0` is the stem, `features.N.j` unit j of stage N and `features.8`
  the last conv. A unit's `block` Sequential holds the expand conv (absent at
  expansion 1), the depthwise conv, the squeeze-excitation and the projection,
  each conv a `Conv2dNormActivation` (conv `.0`, BatchNorm `.1`).
  """
  if len(path) == 1:
    return f"features.{0 if path == ('stem',) else len(EFFICIENTNET_STAGES) + 1}"
  block, unit, name = path
  stage = int(block.removeprefix("block"))
  names = ("expand", "depthwise", "se", "project")[EFFICIENTNET_STAGES[stage - 1][0] == 1:]
  return f"features.{stage}.{unit.removeprefix('unit')}.block.{names.index(name)}"


def _efficientnet_links(expected, classifier: str) -> dict[tuple[str, ...], Link]:
  """Links for the Flax EfficientNet-B0: `_conv_bn_links`, plus the squeeze-excitations' convs.

  Those are `fc1` and `fc2`, 1x1 convs with bias and no BatchNorm.
  """
  links = _conv_bn_links(expected, classifier,
                         lambda path: (f"{_efficientnet_module(path)}.0",
                                       f"{_efficientnet_module(path)}.1"))
  for path in expected:
    _, *module, layer, leaf = path
    if module[-1:] == ["se"]:
      links[path] = Link(f"{_efficientnet_module(tuple(module))}.{layer}."
                         f"{'weight' if leaf == 'kernel' else leaf}",
                         _OIHW_TO_HWIO if leaf == "kernel" else None)
  return links


def _efficientnet_lite_modules(path: tuple[str, ...]) -> tuple[str, str]:
  """(conv, bn) prefixes of a `ConvNormAct` of the Flax EfficientNet-Lite0.

  The layout is efficientnet-lite-pytorch's: that package (a fork of
  lukemelas/EfficientNet-PyTorch) numbers the units through all stages
  (`_blocks.n`) and names a unit's convs `_expand_conv`, `_depthwise_conv` and
  `_project_conv`, their BatchNorms `_bn0`, `_bn1` and `_bn2`; the stem is
  `_conv_stem`/`_bn0`, the last conv `_conv_head`/`_bn1` and the classifier `_fc`.
  """
  if path == ("stem",):
    return "_conv_stem", "_bn0"
  if path == ("conv_last",):
    return "_conv_head", "_bn1"
  block, unit, name = path
  stage = int(block.removeprefix("block")) - 1
  n = sum(units for *_, units, _ in EFFICIENTNET_STAGES[:stage]) + int(unit.removeprefix("unit"))
  bn = ("expand", "depthwise", "project").index(name)
  return f"_blocks.{n}._{name}_conv", f"_blocks.{n}._bn{bn}"


# torchvision SqueezeNet 1.1's module of each Flax block but the head: its `features`
# Sequential numbers conv1, its ReLU and every max-pool as well as the Fire modules.
_SQUEEZENET_MODULES = {"stem": "features.0", "fire2": "features.3", "fire3": "features.4",
                       "fire4": "features.6", "fire5": "features.7", "fire6": "features.9",
                       "fire7": "features.10", "fire8": "features.11", "fire9": "features.12"}


def _squeezenet_links(expected, classifier: str) -> dict[tuple[str, ...], Link]:
  """Links for the Flax SqueezeNet 1.1, whose layers are all convs with bias.

  A Fire module's convs keep their torchvision names (`squeeze`, `expand1x1`,
  `expand3x3`); the head's 1x1 conv is `classifier` (`classifier.1`).
  """
  links = {}
  for path in expected:
    _, block, *module, _, leaf = path  # e.g. ("params", "fire2", "squeeze", "conv", "kernel")
    prefix = classifier if block == "head" else ".".join([_SQUEEZENET_MODULES[block], *module])
    links[path] = Link(f"{prefix}.{'weight' if leaf == 'kernel' else leaf}",
                       _OIHW_TO_HWIO if leaf == "kernel" else None)
  return links


# torchvision's dense layers once named their modules "norm.1", "conv.2", ..., and
# its published checkpoints (densenet121-a639ec97.pth) still use these keys; torchvision
# renames them to "norm1", "conv2", ... on load with this pattern, and so do we.
_OLD_DENSE_LAYER_KEY = re.compile(
    r"^(.*denselayer\d+\.(?:norm|relu|conv))\.((?:[12])\.(?:weight|bias|running_mean|running_var))$")


def _conv_bn_links(expected, classifier: str,
                   modules: Callable[[tuple[str, ...]], tuple[str, str]]) -> dict[tuple[str, ...], Link]:
  """Links for models built from `ConvNormAct`s (or `NormActConv`s) and a `ClassifierHead`.

  `modules` maps such a layer's Flax path to its torch (conv, bn) prefixes;
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


# torchvision AlexNet's module of each Flax block but fc8 (the classifier): the convs'
# indices in its `features` and the linear layers' in its `classifier` Sequential.
_ALEXNET_MODULES = {"conv1": "features.0", "conv2": "features.3", "conv3": "features.6",
                    "conv4": "features.8", "conv5": "features.10",
                    "fc6": "classifier.1", "fc7": "classifier.4"}


def _alexnet_links(expected, classifier: str) -> dict[tuple[str, ...], Link]:
  """Links for the Flax AlexNet, each block of which is one torch conv or linear layer."""
  modules = {**_ALEXNET_MODULES, "fc8": classifier}
  links = {}
  for path, shape in expected.items():
    _, block, _, leaf = path  # e.g. ("params", "conv1", "conv", "kernel")
    if leaf == "bias":
      links[path] = Link(f"{modules[block]}.bias")
    else:
      links[path] = Link(f"{modules[block]}.weight",
                         _OIHW_TO_HWIO if len(shape.shape) == 4 else (1, 0))
  return links


def _vgg_links(expected, classifier: str, depths: tuple[int, ...]) -> dict[tuple[str, ...], Link]:
  """Links for the Flax VGG with `depths` convs per block.

  torchvision's `features` Sequential numbers every conv, ReLU and max-pool, so
  conv j of block b is `features.{2j + sum(2d + 1 for the d convs of each earlier
  block)}`; fc6 and fc7 are `classifier.0` and `classifier.3` (each followed by a
  ReLU and a dropout) and the final layer is `classifier` (`classifier.6`).
  """
  first = [sum(2 * d + 1 for d in depths[:b]) for b in range(len(depths))]
  fully_connected = {"fc6": "classifier.0", "fc7": "classifier.3", "head": classifier}
  links = {}
  for path in expected:
    _, block, layer, leaf = path
    if block in fully_connected:
      prefix, perm = fully_connected[block], (1, 0)
    else:
      b, j = int(block.removeprefix("block")) - 1, int(layer.removeprefix("conv"))
      prefix, perm = f"features.{first[b] + 2 * j}", _OIHW_TO_HWIO
    links[path] = Link(f"{prefix}.{'weight' if leaf == 'kernel' else leaf}",
                       perm if leaf == "kernel" else None)
  return links


# torchvision Inception3's module of each Flax InceptionV3 module, in order.
_INCEPTION_V3_MODULES = dict(zip(
    (name for name, _ in INCEPTION_V3_BLOCKS),
    ("Mixed_5b", "Mixed_5c", "Mixed_5d", "Mixed_6a", "Mixed_6b", "Mixed_6c", "Mixed_6d",
     "Mixed_6e", "Mixed_7a", "Mixed_7b", "Mixed_7c"), strict=True))


def _inception_v3_modules(path: tuple[str, ...]) -> tuple[str, str]:
  """torchvision (conv, bn) prefixes of a `ConvNormAct` of the Flax InceptionV3.

  Each is a `BasicConv2d` (`.conv`, `.bn`) under the Flax conv's name, directly
  in `Inception3` for the stem's (`Conv2d_1a_3x3`, ...), else in its module.
  """
  block, name = path
  prefix = name if block == "stem" else f"{_INCEPTION_V3_MODULES[block]}.{name}"
  return f"{prefix}.conv", f"{prefix}.bn"


# arch -> (links(expected variables, classifier) of the Flax variables to torch keys,
# the torch prefix of the classifier, whose weight shape gives the number of classes).
_ARCHS: dict[str, tuple[Callable[[dict, str], dict[tuple[str, ...], Link]], str]] = {
    "alexnet": (_alexnet_links, "classifier.6"),
    "mobilenet_v2": (functools.partial(_conv_bn_links, modules=_mobilenet_v2_modules), "classifier.1"),
    "resnet18": (functools.partial(_conv_bn_links, modules=_resnet_modules), "fc"),
    "resnet50": (functools.partial(_conv_bn_links, modules=_resnet_modules), "fc"),
    "densenet121": (functools.partial(_conv_bn_links, modules=_densenet_modules), "classifier"),
    "vgg16": (functools.partial(_vgg_links, depths=VGG16), "classifier.6"),
    "vgg19": (functools.partial(_vgg_links, depths=VGG19), "classifier.6"),
    "squeezenet1_1": (_squeezenet_links, "classifier.1"),
    "efficientnet_b0": (_efficientnet_links, "classifier.1"),
    "efficientnet_lite0": (functools.partial(_conv_bn_links, modules=_efficientnet_lite_modules),
                           "_fc"),
    "inception_v3": (functools.partial(_conv_bn_links, modules=_inception_v3_modules), "fc"),
}

# The EfficientNet-Lite models were trained in TensorFlow on (pixels - 127) / 128.
EFFICIENTNET_LITE = Preprocess("efficientnet_lite", mean=(127.0,) * 3, std=(128.0,) * 3)
# The input convention of each arch whose weights were not trained on torchvision's.
# torchvision's InceptionV3 weights are TensorFlow's, trained on [-1, 1]: its
# `transform_input=True` turns ImageNet-normalised input, (x/255 - mean) / std, back
# into x/255 * 2 - 1 before the first conv, so the model takes [-1, 1] directly.
_PREPROCESS = {"efficientnet_lite0": EFFICIENTNET_LITE, "inception_v3": MINUS_ONE_TO_ONE}
# The Flax attributes, other than `models.create`'s defaults, that compute as the
# PyTorch modules of an arch (torchvision's and timm's InceptionV3: a BatchNorm
# scale, average pools that count their padding).
_ATTRIBUTES = {"inception_v3": {"bn_scale": True, "pool_count_pad": True}}
# Prefixes of the modules that act in training only, whose keys are read and
# dropped: InceptionV3's auxiliary classifier, on mixed7's output, adds its loss
# during ImageNet training and is not part of the eval-mode network.
_TRAINING_ONLY = {"inception_v3": ("AuxLogits.",)}

# Variants with a new head on an arch's trunk: a checkpoint converts as that arch,
# checking every key, and gives the variant every block but the `head`, which
# `pretrained.transplant` initialises anyway.
_NEW_HEAD_VARIANTS = {"vgg16_gap": "vgg16", "vgg19_gap": "vgg19"}


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
    arch: a key of `_ARCHS` or `_NEW_HEAD_VARIANTS`.
    source: a torchvision `.pth` state dict (read without torch), or the state
      dict itself (numpy arrays or torch tensors).

  Returns:
    `(model, variables, preprocess)`: the model with as many classes as the
    checkpoint's classifier and the attributes of torchvision's layers
    (`_ATTRIBUTES[arch]`; InceptionV3: `bn_scale=True, pool_count_pad=True`),
    `{"params"}` (and `"batch_stats"` if it has BatchNorm) as float32 numpy
    arrays, and the input convention of the weights (torchvision's, or
    `_PREPROCESS[arch]`: [-1, 1] for InceptionV3, what its `transform_input`
    feeds the first conv). A `_NEW_HEAD_VARIANTS` model gets every block but
    its `head`. InceptionV3's auxiliary classifier (`AuxLogits.*`), which acts
    in training only, is accepted and dropped.

  Raises:
    ConversionError: listing every missing, unexpected or mis-shaped key.
  """
  if arch in _NEW_HEAD_VARIANTS:
    trunk, variables, preprocess = from_torchvision(_NEW_HEAD_VARIANTS[arch], source)
    model = models.create(arch, trunk.num_classes)
    shared = set(type(model).block_names) - {"head"}
    return model, {collection: {block: tree for block, tree in blocks.items() if block in shared}
                   for collection, blocks in variables.items()}, preprocess
  if arch not in _ARCHS:
    raise ValueError(f"unknown arch {arch!r}; "
                     f"expected one of {sorted([*_ARCHS, *_NEW_HEAD_VARIANTS])}")
  if isinstance(source, (str, os.PathLike)):
    name, state = os.fspath(source), load_state_dict(source)
  else:
    name, state = "the state dict given", {k: _as_numpy(v) for k, v in source.items()}
  state = {_OLD_DENSE_LAYER_KEY.sub(r"\1\2", key): value for key, value in state.items()}
  links, classifier = _ARCHS[arch]
  model, variables = build(arch, state, name, links, classifier, "torchvision")
  return model, variables, _PREPROCESS.get(arch, TORCHVISION)


def build(arch: str, state: Mapping[str, np.ndarray], name: str,
          links: Callable[[dict, str], dict[tuple[str, ...], Link]], classifier: str,
          source: str) -> tuple[nn.Module, dict]:
  """The Flax `arch` and its variables from a PyTorch state dict, checked as a whole.

  Shared by the converters of PyTorch model zoos (torchvision, timm), which differ
  only in their `links`. The model gets as many classes as the `classifier`
  weight has rows and the attributes `_ATTRIBUTES[arch]`; BatchNorm step
  counters and the modules `_TRAINING_ONLY[arch]` may stay unused.

  Raises:
    ConversionError: naming `name` and the `source` model, listing every
      missing, unexpected or mis-shaped key.
  """
  weight = state.get(f"{classifier}.weight")
  # A linear layer, or SqueezeNet's 1x1 conv (classes, C, 1, 1).
  num_classes = weight.shape[0] if weight is not None and weight.ndim in (2, 4) else 1000
  model = models.create(arch, num_classes, **_ATTRIBUTES.get(arch, {}))
  expected = expected_variables(model)
  variables = check_and_build(
      expected, links(expected, classifier), state, name,
      target=f"{source} {arch} with {num_classes} classes",
      unused_ok=lambda key: (key.endswith(".num_batches_tracked")
                             or key.startswith(_TRAINING_ONLY.get(arch, ()))))
  return model, variables


def fetch(url: str, dest_dir: str | os.PathLike) -> Path:
  """Downloads a torchvision checkpoint into `dest_dir` once; see `tuning.download`."""
  return download(url, Path(dest_dir) / url.rsplit("/", 1)[-1])
