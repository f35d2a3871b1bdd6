"""Architectures whose layers are grouped into named, ordered blocks.

Every model is a Flax linen module called as `model.apply(variables, images,
train=..., trainable_from=k)` on NHWC images; `type(model).block_names` lists its
blocks from input to the fresh classifier head (always last: `head`, or
`fc8` for AlexNet), and blocks below index `k` are frozen. `start=i, stop=j`
runs blocks i..j-1 only, on what enters block i (`run_blocks`).
"""
from __future__ import annotations

import functools

import flax.linen as nn

from tuning.models.alexnet import AlexNet, CaffeAlexNet
from tuning.models.densenet import DenseNet
from tuning.models.efficientnet import EfficientNet, EfficientNetLite
from tuning.models.inception_v3 import InceptionV3
from tuning.models.mobilenet_v1 import WIDTHS, MobileNetV1
from tuning.models.mobilenet_v2 import MobileNetV2
from tuning.models.resnet import Bottleneck, ResNet
from tuning.models.squeezenet import SqueezeNet
from tuning.models.vgg import VGG, VGG16, VGG19, VGGGap

ARCHITECTURES = {
    "alexnet": AlexNet,
    "alexnet_caffe": CaffeAlexNet,
    **{f"mobilenet_v1_{alpha}": functools.partial(MobileNetV1, alpha=alpha) for alpha in WIDTHS},
    "mobilenet_v2": MobileNetV2,
    "squeezenet1_1": SqueezeNet,
    "resnet18": functools.partial(ResNet, units=(2, 2, 2, 2)),
    "resnet50": functools.partial(ResNet, units=(3, 4, 6, 3), block=Bottleneck),
    "densenet121": functools.partial(DenseNet, units=(6, 12, 24, 16)),
    "vgg16": functools.partial(VGG, depths=VGG16),
    "vgg19": functools.partial(VGG, depths=VGG19),
    "vgg16_gap": functools.partial(VGGGap, depths=VGG16),
    "vgg19_gap": functools.partial(VGGGap, depths=VGG19),
    "efficientnet_b0": EfficientNet,
    "efficientnet_lite0": EfficientNetLite,
    "inception_v3": InceptionV3,
}


def create(arch: str, num_classes: int, **kwargs) -> nn.Module:
  if arch not in ARCHITECTURES:
    raise ValueError(f"unknown arch {arch!r}; expected one of {sorted(ARCHITECTURES)}")
  return ARCHITECTURES[arch](num_classes=num_classes, **kwargs)
