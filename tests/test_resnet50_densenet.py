"""ResNet-50 and DenseNet-121: torchvision parity, both DenseNet key styles, sizes, freezing."""
from __future__ import annotations

import functools
import re

import chex
import pytest

import test_train_step
from test_convert_torchvision import _assert_logits_match, _random_model
from tuning import models
from tuning.convert import from_torchvision
from tuning.models.densenet import DenseNet


def _torchvision_models(nn):
  """torchvision's ResNet-50 and DenseNet-121, module for module, from torchvision's source."""
  from torch import cat  # pylint: disable=import-outside-toplevel  (torch is optional)

  class Bottleneck(nn.Module):
    def __init__(self, cin, width, stride):
      super().__init__()
      self.conv1 = nn.Conv2d(cin, width, 1, bias=False)
      self.bn1 = nn.BatchNorm2d(width)
      self.conv2 = nn.Conv2d(width, width, 3, stride, 1, bias=False)
      self.bn2 = nn.BatchNorm2d(width)
      self.conv3 = nn.Conv2d(width, 4 * width, 1, bias=False)
      self.bn3 = nn.BatchNorm2d(4 * width)
      self.relu = nn.ReLU(inplace=True)
      self.downsample = None
      if stride != 1 or cin != 4 * width:
        self.downsample = nn.Sequential(nn.Conv2d(cin, 4 * width, 1, stride, bias=False),
                                        nn.BatchNorm2d(4 * width))

    def forward(self, x):
      h = self.relu(self.bn1(self.conv1(x)))
      h = self.relu(self.bn2(self.conv2(h)))
      h = self.bn3(self.conv3(h))
      return self.relu(h + (x if self.downsample is None else self.downsample(x)))

  class ResNet50(nn.Module):
    def __init__(self, num_classes=1000):
      super().__init__()
      self.conv1 = nn.Conv2d(3, 64, 7, 2, 3, bias=False)
      self.bn1 = nn.BatchNorm2d(64)
      self.relu = nn.ReLU(inplace=True)
      self.maxpool = nn.MaxPool2d(3, 2, 1)
      cin = 64
      for i, (width, units) in enumerate(zip((64, 128, 256, 512), (3, 4, 6, 3))):
        blocks = []
        for j in range(units):
          blocks.append(Bottleneck(cin, width, 2 if i > 0 and j == 0 else 1))
          cin = 4 * width
        setattr(self, f"layer{i + 1}", nn.Sequential(*blocks))
      self.fc = nn.Linear(2048, num_classes)

    def forward(self, x):
      x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
      x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
      return self.fc(x.mean((2, 3)))

  class DenseLayer(nn.Module):
    def __init__(self, cin, growth=32, bn_size=4):
      super().__init__()
      self.norm1 = nn.BatchNorm2d(cin)
      self.relu1 = nn.ReLU(inplace=True)
      self.conv1 = nn.Conv2d(cin, bn_size * growth, 1, 1, bias=False)
      self.norm2 = nn.BatchNorm2d(bn_size * growth)
      self.relu2 = nn.ReLU(inplace=True)
      self.conv2 = nn.Conv2d(bn_size * growth, growth, 3, 1, 1, bias=False)

    def forward(self, features):
      h = self.conv1(self.relu1(self.norm1(cat(features, 1))))
      return self.conv2(self.relu2(self.norm2(h)))

  class DenseBlock(nn.ModuleDict):
    def __init__(self, units, cin, growth=32):
      super().__init__()
      for i in range(units):
        self.add_module(f"denselayer{i + 1}", DenseLayer(cin + i * growth))

    def forward(self, x):
      features = [x]
      for layer in self.values():
        features.append(layer(features))
      return cat(features, 1)

  class Transition(nn.Sequential):
    def __init__(self, cin, cout):
      super().__init__()
      self.norm = nn.BatchNorm2d(cin)
      self.relu = nn.ReLU(inplace=True)
      self.conv = nn.Conv2d(cin, cout, 1, 1, bias=False)
      self.pool = nn.AvgPool2d(2, 2)

  class DenseNet121(nn.Module):
    def __init__(self, num_classes=1000):
      super().__init__()
      self.features = nn.Sequential()
      self.features.add_module("conv0", nn.Conv2d(3, 64, 7, 2, 3, bias=False))
      self.features.add_module("norm0", nn.BatchNorm2d(64))
      self.features.add_module("relu0", nn.ReLU(inplace=True))
      self.features.add_module("pool0", nn.MaxPool2d(3, 2, 1))
      channels = 64
      for i, units in enumerate((6, 12, 24, 16)):
        self.features.add_module(f"denseblock{i + 1}", DenseBlock(units, channels))
        channels += 32 * units
        if i != 3:
          self.features.add_module(f"transition{i + 1}", Transition(channels, channels // 2))
          channels //= 2
      self.features.add_module("norm5", nn.BatchNorm2d(channels))
      self.classifier = nn.Linear(channels, num_classes)

    def forward(self, x):
      return self.classifier(nn.functional.relu(self.features(x)).mean((2, 3)))

  return {"resnet50": ResNet50, "densenet121": DenseNet121}


def _old_densenet_keys(state):
  """Keys as in torchvision's published DenseNet files: `denselayer1.norm.1.weight`."""
  return {re.sub(r"(denselayer\d+\.(?:norm|conv))([12])\.", r"\1.\2.", key): value
          for key, value in state.items()}


@pytest.mark.parametrize("arch, num_classes", [("resnet50", 1000), ("densenet121", 10)])
def test_logits_match_torch(tmp_path, torch, arch, num_classes):
  reference = _random_model(torch, arch, num_classes, references=_torchvision_models)
  if arch == "resnet50":
    with torch.no_grad():  # 16 residual sums of He-initialised branches: logits O(500)
      reference.fc.weight /= 100  # O(5) again, so that 1e-4 is a tight bound
  torch.save(reference.state_dict(), tmp_path / "weights.pth")

  model, variables, _ = from_torchvision(arch, tmp_path / "weights.pth")

  assert model.num_classes == num_classes
  # 56 px: odd feature maps reach the stride-2 convs and DenseNet's 2x2 average pools.
  _assert_logits_match(torch, reference, model, variables, 56, 56)


def test_densenet_old_style_keys_load_the_same(tmp_path, torch):
  state = _random_model(torch, "densenet121", 10, references=_torchvision_models).state_dict()
  old = _old_densenet_keys(state)
  assert "features.denseblock1.denselayer1.norm.1.weight" in old
  torch.save(old, tmp_path / "old.pth")
  _, from_old, _ = from_torchvision("densenet121", tmp_path / "old.pth")
  _, from_new, _ = from_torchvision("densenet121", state)
  chex.assert_trees_all_equal(from_old, from_new)


def test_densenet_frozen_blocks_bit_identical_trainable_blocks_change(monkeypatch):
  """stem..block3 frozen; block4 (with `norm5`) and the head train.

  Two dense layers per block keep every kind of layer while compiling in seconds:
  initialising the full DenseNet-121 alone compiles for over 30 s on a loaded CPU.
  """
  monkeypatch.setitem(models.ARCHITECTURES, "densenet121",
                      functools.partial(DenseNet, units=(2, 2, 2, 2)))
  test_train_step.test_frozen_blocks_bit_identical_trainable_blocks_change(
      "densenet121", "from:block4")
