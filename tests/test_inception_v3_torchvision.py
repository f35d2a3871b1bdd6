"""InceptionV3 from torchvision and timm files: random-weight parity, input convention, key checks.

torchvision cannot be installed here: the reference is torchvision's `Inception3`
written module for module from its source, independently of `tuning.models`,
so a layout, padding or pooling mistake on either side breaks parity. Its
BatchNorms get random scales and running statistics (`_random_model`), so
their scale and epsilon are tested too. Inputs are the sample photos.
"""
from __future__ import annotations

import copy

import chex
import numpy as np
import pytest

import imagenet_samples
from test_convert_torchvision import _predict, _random_model
from tuning import models
from tuning.convert import ConversionError, converted, from_timm, from_torchvision
from tuning.preprocess import MINUS_ONE_TO_ONE, TORCHVISION

_NUM_CLASSES = 10


def _torchvision_models(nn):
  """torchvision's `Inception3` (with its auxiliary classifier and `transform_input`)."""
  from torch import cat  # pylint: disable=import-outside-toplevel  (torch is optional)
  avg_pool2d, max_pool2d = nn.functional.avg_pool2d, nn.functional.max_pool2d

  class BasicConv2d(nn.Module):
    def __init__(self, cin, cout, **kwargs):
      super().__init__()
      self.conv = nn.Conv2d(cin, cout, bias=False, **kwargs)
      self.bn = nn.BatchNorm2d(cout, eps=0.001)

    def forward(self, x):
      return nn.functional.relu(self.bn(self.conv(x)))

  class InceptionA(nn.Module):
    def __init__(self, cin, pool_features):
      super().__init__()
      self.branch1x1 = BasicConv2d(cin, 64, kernel_size=1)
      self.branch5x5_1 = BasicConv2d(cin, 48, kernel_size=1)
      self.branch5x5_2 = BasicConv2d(48, 64, kernel_size=5, padding=2)
      self.branch3x3dbl_1 = BasicConv2d(cin, 64, kernel_size=1)
      self.branch3x3dbl_2 = BasicConv2d(64, 96, kernel_size=3, padding=1)
      self.branch3x3dbl_3 = BasicConv2d(96, 96, kernel_size=3, padding=1)
      self.branch_pool = BasicConv2d(cin, pool_features, kernel_size=1)

    def forward(self, x):
      return cat([self.branch1x1(x), self.branch5x5_2(self.branch5x5_1(x)),
                  self.branch3x3dbl_3(self.branch3x3dbl_2(self.branch3x3dbl_1(x))),
                  self.branch_pool(avg_pool2d(x, kernel_size=3, stride=1, padding=1))], 1)

  class InceptionB(nn.Module):
    def __init__(self, cin):
      super().__init__()
      self.branch3x3 = BasicConv2d(cin, 384, kernel_size=3, stride=2)
      self.branch3x3dbl_1 = BasicConv2d(cin, 64, kernel_size=1)
      self.branch3x3dbl_2 = BasicConv2d(64, 96, kernel_size=3, padding=1)
      self.branch3x3dbl_3 = BasicConv2d(96, 96, kernel_size=3, stride=2)

    def forward(self, x):
      return cat([self.branch3x3(x),
                  self.branch3x3dbl_3(self.branch3x3dbl_2(self.branch3x3dbl_1(x))),
                  max_pool2d(x, kernel_size=3, stride=2)], 1)

  class InceptionC(nn.Module):
    def __init__(self, cin, c7):
      super().__init__()
      self.branch1x1 = BasicConv2d(cin, 192, kernel_size=1)
      self.branch7x7_1 = BasicConv2d(cin, c7, kernel_size=1)
      self.branch7x7_2 = BasicConv2d(c7, c7, kernel_size=(1, 7), padding=(0, 3))
      self.branch7x7_3 = BasicConv2d(c7, 192, kernel_size=(7, 1), padding=(3, 0))
      self.branch7x7dbl_1 = BasicConv2d(cin, c7, kernel_size=1)
      self.branch7x7dbl_2 = BasicConv2d(c7, c7, kernel_size=(7, 1), padding=(3, 0))
      self.branch7x7dbl_3 = BasicConv2d(c7, c7, kernel_size=(1, 7), padding=(0, 3))
      self.branch7x7dbl_4 = BasicConv2d(c7, c7, kernel_size=(7, 1), padding=(3, 0))
      self.branch7x7dbl_5 = BasicConv2d(c7, 192, kernel_size=(1, 7), padding=(0, 3))
      self.branch_pool = BasicConv2d(cin, 192, kernel_size=1)

    def forward(self, x):
      dbl = self.branch7x7dbl_1(x)
      for conv in (self.branch7x7dbl_2, self.branch7x7dbl_3, self.branch7x7dbl_4,
                   self.branch7x7dbl_5):
        dbl = conv(dbl)
      return cat([self.branch1x1(x), self.branch7x7_3(self.branch7x7_2(self.branch7x7_1(x))),
                  dbl, self.branch_pool(avg_pool2d(x, kernel_size=3, stride=1, padding=1))], 1)

  class InceptionD(nn.Module):
    def __init__(self, cin):
      super().__init__()
      self.branch3x3_1 = BasicConv2d(cin, 192, kernel_size=1)
      self.branch3x3_2 = BasicConv2d(192, 320, kernel_size=3, stride=2)
      self.branch7x7x3_1 = BasicConv2d(cin, 192, kernel_size=1)
      self.branch7x7x3_2 = BasicConv2d(192, 192, kernel_size=(1, 7), padding=(0, 3))
      self.branch7x7x3_3 = BasicConv2d(192, 192, kernel_size=(7, 1), padding=(3, 0))
      self.branch7x7x3_4 = BasicConv2d(192, 192, kernel_size=3, stride=2)

    def forward(self, x):
      b7 = self.branch7x7x3_1(x)
      for conv in (self.branch7x7x3_2, self.branch7x7x3_3, self.branch7x7x3_4):
        b7 = conv(b7)
      return cat([self.branch3x3_2(self.branch3x3_1(x)), b7,
                  max_pool2d(x, kernel_size=3, stride=2)], 1)

  class InceptionE(nn.Module):
    def __init__(self, cin):
      super().__init__()
      self.branch1x1 = BasicConv2d(cin, 320, kernel_size=1)
      self.branch3x3_1 = BasicConv2d(cin, 384, kernel_size=1)
      self.branch3x3_2a = BasicConv2d(384, 384, kernel_size=(1, 3), padding=(0, 1))
      self.branch3x3_2b = BasicConv2d(384, 384, kernel_size=(3, 1), padding=(1, 0))
      self.branch3x3dbl_1 = BasicConv2d(cin, 448, kernel_size=1)
      self.branch3x3dbl_2 = BasicConv2d(448, 384, kernel_size=3, padding=1)
      self.branch3x3dbl_3a = BasicConv2d(384, 384, kernel_size=(1, 3), padding=(0, 1))
      self.branch3x3dbl_3b = BasicConv2d(384, 384, kernel_size=(3, 1), padding=(1, 0))
      self.branch_pool = BasicConv2d(cin, 192, kernel_size=1)

    def forward(self, x):
      b3 = self.branch3x3_1(x)
      dbl = self.branch3x3dbl_2(self.branch3x3dbl_1(x))
      return cat([self.branch1x1(x), self.branch3x3_2a(b3), self.branch3x3_2b(b3),
                  self.branch3x3dbl_3a(dbl), self.branch3x3dbl_3b(dbl),
                  self.branch_pool(avg_pool2d(x, kernel_size=3, stride=1, padding=1))], 1)

  class InceptionAux(nn.Module):  # training only: its keys are in the files, unused in eval
    def __init__(self, cin, num_classes):
      super().__init__()
      self.conv0 = BasicConv2d(cin, 128, kernel_size=1)
      self.conv1 = BasicConv2d(128, 768, kernel_size=5)
      self.fc = nn.Linear(768, num_classes)

  class Inception3(nn.Module):
    def __init__(self, num_classes=1000, transform_input=True):
      super().__init__()
      self.transform_input = transform_input
      self.Conv2d_1a_3x3 = BasicConv2d(3, 32, kernel_size=3, stride=2)
      self.Conv2d_2a_3x3 = BasicConv2d(32, 32, kernel_size=3)
      self.Conv2d_2b_3x3 = BasicConv2d(32, 64, kernel_size=3, padding=1)
      self.maxpool1 = nn.MaxPool2d(kernel_size=3, stride=2)
      self.Conv2d_3b_1x1 = BasicConv2d(64, 80, kernel_size=1)
      self.Conv2d_4a_3x3 = BasicConv2d(80, 192, kernel_size=3)
      self.maxpool2 = nn.MaxPool2d(kernel_size=3, stride=2)
      self.Mixed_5b = InceptionA(192, pool_features=32)
      self.Mixed_5c = InceptionA(256, pool_features=64)
      self.Mixed_5d = InceptionA(288, pool_features=64)
      self.Mixed_6a = InceptionB(288)
      self.Mixed_6b = InceptionC(768, c7=128)
      self.Mixed_6c = InceptionC(768, c7=160)
      self.Mixed_6d = InceptionC(768, c7=160)
      self.Mixed_6e = InceptionC(768, c7=192)
      self.AuxLogits = InceptionAux(768, num_classes)
      self.Mixed_7a = InceptionD(768)
      self.Mixed_7b = InceptionE(1280)
      self.Mixed_7c = InceptionE(2048)
      self.avgpool = nn.AdaptiveAvgPool2d((1, 1))
      self.dropout = nn.Dropout(0.5)
      self.fc = nn.Linear(2048, num_classes)

    def forward(self, x):
      if self.transform_input:  # ImageNet-normalised input back to the [-1, 1] of TF's weights
        x = cat([x[:, 0:1] * (0.229 / 0.5) + (0.485 - 0.5) / 0.5,
                 x[:, 1:2] * (0.224 / 0.5) + (0.456 - 0.5) / 0.5,
                 x[:, 2:3] * (0.225 / 0.5) + (0.406 - 0.5) / 0.5], 1)
      x = self.maxpool1(self.Conv2d_2b_3x3(self.Conv2d_2a_3x3(self.Conv2d_1a_3x3(x))))
      x = self.maxpool2(self.Conv2d_4a_3x3(self.Conv2d_3b_1x1(x)))
      for name in ("5b", "5c", "5d", "6a", "6b", "6c", "6d", "6e", "7a", "7b", "7c"):
        x = getattr(self, f"Mixed_{name}")(x)
      return self.fc(self.dropout(self.avgpool(x).flatten(1)))

  return {"inception_v3": Inception3}


@pytest.fixture(scope="module")
def reference(torch):
  """A random torchvision InceptionV3 of `_NUM_CLASSES`, with `transform_input` as its weights.

  Its convs are He-initialised, which keeps the signal's scale through the
  ReLUs: with torch's default init it fades over the 94 convs until the
  BatchNorms' random biases alone set the logits, and feeding the wrong
  preprocessing changes them by under 1e-6 (0.1 with this init).
  """
  model = _random_model(torch, "inception_v3", _NUM_CLASSES, references=_torchvision_models)
  with torch.no_grad():
    for module in model.modules():
      if isinstance(module, torch.nn.Conv2d):
        torch.nn.init.kaiming_normal_(module.weight, nonlinearity="relu")
  return model


@pytest.fixture(scope="module")
def converted_pth(torch, reference, tmp_path_factory):
  path = tmp_path_factory.mktemp("inception_v3") / "inception_v3.pth"
  torch.save(reference.state_dict(), path)
  return from_torchvision("inception_v3", path)


def _max_diff(got, want, what):
  diff = np.abs(got - want).max()
  print(f"{what}: max |logit diff| = {diff:.2e}, max |logit| = {np.abs(want).max():.1f}")
  return diff


def test_logits_match_torchvision_fed_what_its_weights_expect(torch, reference, converted_pth):
  """Ours on [-1, 1] pixels = torchvision's on ImageNet-normalised ones (`transform_input`).

  75 px, the smallest input: mixed9 and mixed10 see 1x1 maps, where an average
  pool that counts its padding divides by 9 and one that does not by 1.
  """
  model, variables, preprocess = converted_pth
  assert model.num_classes == _NUM_CLASSES and preprocess == MINUS_ONE_TO_ONE
  raw = imagenet_samples.images(75)
  with torch.no_grad():
    want = reference(torch.from_numpy(TORCHVISION(raw)).permute(0, 3, 1, 2)).numpy()
  got = np.asarray(_predict(model, variables, preprocess(raw)))
  assert _max_diff(got, want, "torchvision 75x75") <= 1e-4


def test_timm_file_gives_torchvision_variables_and_matches_timm_non_square(
    torch, tmp_path, reference, converted_pth):
  """timm's InceptionV3 is torchvision's without `transform_input`: it takes [-1, 1] itself.

  Its file may lack the auxiliary classifier; 75x107 leaves mixed9 and mixed10
  1x2 maps, whose pools count padding on three sides.
  """
  safetensors_torch = pytest.importorskip(
      "safetensors.torch", reason="safetensors' torch API (needs torch) writes the timm file")
  state = {key: value.contiguous() for key, value in reference.state_dict().items()
           if not key.startswith("AuxLogits.")}
  safetensors_torch.save_file(state, tmp_path / "model.safetensors")
  model, variables, preprocess = from_timm("inception_v3", tmp_path / "model.safetensors")
  # No config.json beside the file: the convention of timm's tv_in1k weights.
  assert model == converted_pth[0] and preprocess == MINUS_ONE_TO_ONE
  chex.assert_trees_all_equal(variables, converted_pth[1])
  timm_reference = copy.deepcopy(reference)
  timm_reference.transform_input = False
  x = preprocess(imagenet_samples.images(107)[:, 16:91])  # the central 75 rows
  with torch.no_grad():
    want = timm_reference(torch.from_numpy(x).permute(0, 3, 1, 2)).numpy()
  got = np.asarray(_predict(model, variables, x))
  assert _max_diff(got, want, "timm 75x107") <= 1e-4


def test_converted_weights_record_the_torchvision_attributes(converted_pth):
  """`tuning convert` rebuilds the model from the attributes its card records."""
  model = converted_pth[0]
  attributes = converted._model_attributes("inception_v3", model)
  assert attributes == {"bn_scale": True, "pool_count_pad": True}
  assert models.create("inception_v3", _NUM_CLASSES, **attributes) == model


def test_every_key_problem_is_reported_at_once(reference):
  state = reference.state_dict()
  del state["Mixed_6b.branch7x7_2.bn.weight"]  # a BatchNorm scale, which Keras's layout lacks
  state["Mixed_7c.branch3x3_2a.conv.weight"] = state["Mixed_7c.branch3x3_2b.conv.weight"]
  state["Mixed_5b.branch_pool.conv.bias"] = state["Mixed_5b.branch_pool.bn.bias"]
  with pytest.raises(ConversionError) as error:
    from_torchvision("inception_v3", state)
  message = str(error.value)
  assert "3 problem(s)" in message
  assert "missing Mixed_6b.branch7x7_2.bn.weight (128,)" in message
  assert ("Mixed_7c.branch3x3_2a.conv.weight has shape (384, 384, 3, 1), "
          "expected (384, 384, 1, 3)") in message
  assert "unexpected Mixed_5b.branch_pool.conv.bias (32,)" in message
  assert "AuxLogits" not in message  # training-only: accepted and dropped
