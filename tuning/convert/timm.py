"""Converts timm checkpoints (the Hugging Face Hub's `model.safetensors`) to the Flax models.

timm's ResNet and DenseNet began as copies of torchvision's and kept its module
names, so their state dicts convert with the torchvision links unchanged.
timm builds MobileNetV2, EfficientNet-B0 and MobileNet V1 with its EfficientNet
builder (`conv_stem, bn1, blocks.i.j.*, conv_head, bn2, classifier`), mapped here
per Flax layer; it computes as torchvision's (symmetric padding, BatchNorm eps
1e-5, squeeze-excitation to a quarter of a unit's input channels). timm's
VGG holds torchvision's weights (`tv_in1k`) with fc6 and fc7 reshaped into
convolutions (`pre_logits.fc1`, 7x7, and `pre_logits.fc2`, 1x1) and the last
layer renamed `head.fc`: it converts with the torchvision links under these
names, the two kernels flattened back. timm's InceptionV3 is torchvision's
`Inception3` without `transform_input` under the same names, and converts as it
(its `tv_in1k` weights are torchvision's, whose convention is [-1, 1]).

timm's `mobilenetv1_100` is TF-slim's MobileNet V1 at width 1.0 (its "dsa"
blocks are depthwise-separable units with ReLU6 after both convs and no
residual, and it has no `conv_head`) with PyTorch's padding, which the Flax
model takes as `same_padding=False`. timm's other MobileNet V1s are not
converted: `mobilenetv1_100h` adds a `conv_head` (1x1 conv to 1024, BatchNorm,
ReLU6) before the pooling, which the Flax model has not, and `mobilenetv1_125`
has width 1.25, which `models.ARCHITECTURES` does not list (its layers would
map as width 1.0's do).

timm's VGG and the Flax VGG agree on inputs of 32 to 255 pixels a side, which
leave block5 at most 7x7: both then average-pool it to 7x7 (timm's `ConvMlp`
does so below 7) and apply fc6 once. From 256 pixels on, timm slides fc6 over
the larger map and averages fc7's outputs over its positions, while the Flax
VGG, as torchvision, which trained these weights, pools to 7x7 first: the
outputs differ.

A timm file does not say how to normalise its inputs; the `config.json` of its
Hub repository does, and is read when it lies beside the weights file.
"""
from __future__ import annotations

import functools
import json
import os
from pathlib import Path

import flax.linen as nn
import numpy as np
import safetensors.numpy

from tuning.convert import torchvision
from tuning.convert.common import ConversionError, Link
from tuning.convert.torch_pickle import load_state_dict
from tuning.models.efficientnet import STAGES as EFFICIENTNET_STAGES
from tuning.models.mobilenet_v1 import STAGES as MOBILENET_V1_STAGES
from tuning.models.mobilenet_v2 import STAGES
from tuning.models.vgg import VGG16, VGG19
from tuning.preprocess import MINUS_ONE_TO_ONE, TORCHVISION, Preprocess

# Hub repositories of the default ImageNet weights of each arch's timm model;
# `hf_hub_id='timm/'` in timm's `default_cfgs` names the repository `timm/<model>.<tag>`.
HUB_IDS = {
    "resnet18": "timm/resnet18.a1_in1k",
    "resnet50": "timm/resnet50.a1_in1k",
    "densenet121": "timm/densenet121.ra_in1k",
    "mobilenet_v2": "timm/mobilenetv2_100.ra_in1k",
    "vgg16": "timm/vgg16.tv_in1k",
    "vgg19": "timm/vgg19.tv_in1k",
    "efficientnet_b0": "timm/efficientnet_b0.ra_in1k",
    "inception_v3": "timm/inception_v3.tv_in1k",
    "mobilenet_v1_1.0": "timm/mobilenetv1_100.ra4_e3600_r224_in1k",
}
# Every file is called `model.safetensors`: keep each in its own folder.
URLS = {arch: f"https://huggingface.co/{hub_id}/resolve/main/model.safetensors"
        for arch, hub_id in HUB_IDS.items()}


def _builder_modules(path: tuple[str, ...], stages) -> tuple[str, str]:
  """timm (conv, bn) prefixes of a `ConvNormAct` of a model of timm's EfficientNet builder.

  Flax `blockN/unitK` is timm's `blocks.{N-1}.K`. A stage without expansion has
  depthwise-separable blocks (`conv_dw, bn1, conv_pw, bn2`; the Flax pointwise
  conv is `project`, or `pointwise` in MobileNet V1), the others inverted
  residuals (`conv_pw, bn1, conv_dw, bn2, conv_pwl, bn3`).
  """
  if len(path) == 1:
    return {"stem": ("conv_stem", "bn1"), "conv_last": ("conv_head", "bn2")}[path[0]]
  block, unit, name = path
  stage = int(block.removeprefix("block")) - 1
  if stages[stage][0] == 1:
    j = int(name != "depthwise")
    conv = ("conv_dw", "conv_pw")[j]
  else:
    j = ("expand", "depthwise", "project").index(name)
    conv = ("conv_pw", "conv_dw", "conv_pwl")[j]
  return f"{_unit(block, unit)}.{conv}", f"{_unit(block, unit)}.bn{j + 1}"


def _unit(block: str, unit: str) -> str:
  """timm's prefix of Flax unit `blockN/unitK`."""
  return f"blocks.{int(block.removeprefix('block')) - 1}.{unit.removeprefix('unit')}"


# timm's names of the squeeze-excitation convs, by their Flax (torchvision) names.
_SE_CONVS = {"fc1": "conv_reduce", "fc2": "conv_expand"}


def _builder_links(expected, classifier: str, stages) -> dict[tuple[str, ...], Link]:
  """Links for a Flax model of timm's EfficientNet builder whose `stages` start with expansions.

  Its `ConvNormAct`s map by `_builder_modules`; its squeeze-excitations (in
  EfficientNet-B0) are 1x1 convs with bias and no BatchNorm, `se.conv_reduce`
  and `se.conv_expand`.
  """
  links = torchvision._conv_bn_links(
      expected, classifier, functools.partial(_builder_modules, stages=stages))
  for path in expected:
    _, *module, layer, leaf = path
    if module[-1:] == ["se"]:
      links[path] = Link(f"{_unit(*module[:2])}.se.{_SE_CONVS[layer]}."
                         f"{'weight' if leaf == 'kernel' else leaf}",
                         torchvision._OIHW_TO_HWIO if leaf == "kernel" else None)
  return links


# torchvision's VGG modules that timm renamed (see `_vgg_links`).
_VGG_FC = {"classifier.0": "pre_logits.fc1", "classifier.3": "pre_logits.fc2"}


def _vgg_links(expected, classifier: str, depths: tuple[int, ...]) -> dict[tuple[str, ...], Link]:
  """torchvision's VGG links with fc6 and fc7 under timm's names."""
  links = {}
  for path, link in torchvision._vgg_links(expected, classifier, depths).items():
    module, leaf = link.key.rsplit(".", 1)
    links[path] = Link(f"{_VGG_FC.get(module, module)}.{leaf}", link.perm)
  return links


# MobileNet V1's stages as (expansion, *STAGES[i]): all depthwise-separable.
_MOBILENET_V1_STAGES = tuple((1, *stage) for stage in MOBILENET_V1_STAGES)

# arch -> (links(expected variables, classifier), the prefix of the classifier).
_ARCHS = {
    "resnet18": torchvision._ARCHS["resnet18"],
    "resnet50": torchvision._ARCHS["resnet50"],
    "densenet121": torchvision._ARCHS["densenet121"],
    "mobilenet_v2": (functools.partial(_builder_links, stages=STAGES), "classifier"),
    "vgg16": (functools.partial(_vgg_links, depths=VGG16), "head.fc"),
    "vgg19": (functools.partial(_vgg_links, depths=VGG19), "head.fc"),
    "efficientnet_b0": (functools.partial(_builder_links, stages=EFFICIENTNET_STAGES),
                        "classifier"),
    "inception_v3": torchvision._ARCHS["inception_v3"],
    "mobilenet_v1_1.0": (functools.partial(_builder_links, stages=_MOBILENET_V1_STAGES),
                         "classifier"),
}
# The Flax attributes, other than `models.create`'s defaults, that compute as timm's
# model: PyTorch's padding for MobileNet V1, whose default is TF-slim's.
_ATTRIBUTES = {"mobilenet_v1_1.0": {"same_padding": False}}
# The input convention of the `URLS` weights not trained on ImageNet's mean and std:
# timm's MobileNet V1 (`ra4`) was trained on [-1, 1] (IMAGENET_INCEPTION_MEAN/STD).
_PREPROCESS = {"mobilenet_v1_1.0": MINUS_ONE_TO_ONE}


def _as_linear(key: str, value: np.ndarray) -> np.ndarray:
  """timm's conv kernels of VGG's fc6 and fc7, (out, in, h, w), as torchvision's linear weights.

  torchvision flattens fc6's input in (channel, row, column) order, as the
  reshape does; timm's own loader reshapes the other way.
  """
  if value.ndim == 4 and key.removesuffix(".weight") in _VGG_FC.values():
    return value.reshape(len(value), -1)
  return value


def _preprocess(path: Path, arch: str) -> Preprocess:
  """The input convention in the timm `config.json` beside `path`, else that of `URLS[arch]`.

  Those take ImageNet's mean and std, but for InceptionV3's (`tv_in1k`,
  torchvision's weights), which take [-1, 1] as `torchvision._PREPROCESS`
  records, and MobileNet V1's, [-1, 1] as well (`_PREPROCESS`).

  Raises:
    ConversionError: if that config describes another timm model.
  """
  default = _PREPROCESS.get(arch) or torchvision._PREPROCESS.get(arch, TORCHVISION)
  config_path = path.with_name("config.json")
  if not config_path.is_file():
    return default
  config = json.loads(config_path.read_text())
  if "architecture" not in config:  # not a timm config
    return default
  timm_name = HUB_IDS[arch].split("/")[1].split(".")[0]  # e.g. timm/mobilenetv2_100.ra_in1k
  if config["architecture"] != timm_name:
    raise ConversionError(f"{config_path} describes timm {config['architecture']}, "
                          f"not {timm_name} (our {arch})")
  pretrained = config.get("pretrained_cfg", config)  # older configs are one flat dict
  mean = tuple(255.0 * m for m in pretrained["mean"])
  std = tuple(255.0 * s for s in pretrained["std"])
  known = [p for p in (TORCHVISION, MINUS_ONE_TO_ONE)
           if np.allclose(p.mean, mean, atol=1e-3) and np.allclose(p.std, std, atol=1e-3)]
  return known[0] if known else Preprocess(f"timm_{timm_name}", mean, std)


def from_timm(arch: str, path: str | os.PathLike) -> tuple[nn.Module, dict, Preprocess]:
  """Builds the Flax `arch` with a timm checkpoint's weights.

  Args:
    arch: a key of `_ARCHS`: our name, e.g. `mobilenet_v2` for timm's `mobilenetv2_100`.
    path: a `.safetensors` file (read with numpy), or a `.pth`/`.bin` state dict
      (read without torch).

  Returns:
    `(model, variables, preprocess)`: the model with as many classes as the
    checkpoint's classifier and the attributes of timm's layers (`_ATTRIBUTES`;
    MobileNet V1: `same_padding=False`), `{"params"}` (and `"batch_stats"` if it has
    BatchNorm) as float32 numpy arrays, and the input convention of the weights.

  Raises:
    ConversionError: listing every missing, unexpected or mis-shaped key, or
      if the `config.json` beside `path` names another model.
  """
  if arch not in _ARCHS:
    raise ValueError(f"unknown arch {arch!r}; expected one of {sorted(_ARCHS)}")
  path = Path(path)
  preprocess = _preprocess(path, arch)
  state = (safetensors.numpy.load_file(path) if path.suffix == ".safetensors"
           else load_state_dict(path))
  state = {key: _as_linear(key, value) for key, value in state.items()}
  links, classifier = _ARCHS[arch]
  model, variables = torchvision.build(arch, state, os.fspath(path), links, classifier, "timm")
  # Padding changes no variable's shape: the variables checked for `build`'s model fit this one.
  return model.clone(**_ATTRIBUTES.get(arch, {})), variables, preprocess
