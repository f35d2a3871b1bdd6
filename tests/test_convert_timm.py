"""timm checkpoints convert exactly: random-weight parity in timm's layout, key checks, config.

timm cannot be installed here: the references are torch modules in timm's
module and key layout. timm's ResNet and DenseNet are torchvision's module for
module, so their references are the torchvision ones of the other tests.
"""
from __future__ import annotations

import functools
import json

import chex
import numpy as np
import pytest

import imagenet_samples
import test_resnet50_densenet
from test_convert_torchvision import (_assert_logits_match, _logits_of_both, _random_model,
                                      _torchvision_models)
from test_vgg import _CFGS, _NARROW, _torch_vgg, narrow  # noqa: F401 (fixture)
from tuning.convert import ConversionError, from_timm, from_torchvision
from tuning.preprocess import MINUS_ONE_TO_ONE, TORCHVISION, Preprocess

safetensors_torch = pytest.importorskip(
    "safetensors.torch", reason="safetensors' torch API (needs torch) writes the reference files")


def _timm_models(nn):
  """timm's `mobilenetv2_100`, `efficientnet_b0`, `mobilenetv1_100(h)` and VGG, module for module.

  Written independently of `tuning.convert.timm`, so a key or layout mistake on
  either side breaks parity.
  """

  def padding(kernel, stride):  # timm's `get_padding`
    return ((stride - 1) + (kernel - 1)) // 2

  class BatchNormAct2d(nn.BatchNorm2d):  # timm's: a BatchNorm's keys, then the activation
    def __init__(self, channels, act=None):
      super().__init__(channels)
      self.act = act() if act else nn.Identity()

    def forward(self, x):
      return self.act(super().forward(x))

  class SqueezeExcite(nn.Module):
    def __init__(self, channels, reduced, act):
      super().__init__()
      self.conv_reduce = nn.Conv2d(channels, reduced, 1)
      self.act1 = act()
      self.conv_expand = nn.Conv2d(reduced, channels, 1)

    def forward(self, x):
      s = self.conv_expand(self.act1(self.conv_reduce(x.mean((2, 3), keepdim=True))))
      return x * s.sigmoid()

  class DepthwiseSeparableConv(nn.Module):  # timm's "ds" block, or "dsa" if `pw_act`
    def __init__(self, cin, cout, kernel, stride, act, se_ratio, pw_act):
      super().__init__()
      self.conv_dw = nn.Conv2d(cin, cin, kernel, stride, padding(kernel, stride), groups=cin,
                               bias=False)
      self.bn1 = BatchNormAct2d(cin, act)
      self.se = SqueezeExcite(cin, round(cin * se_ratio), act) if se_ratio else nn.Identity()
      self.conv_pw = nn.Conv2d(cin, cout, 1, bias=False)
      self.bn2 = BatchNormAct2d(cout, act if pw_act else None)
      self.has_skip = stride == 1 and cin == cout and not pw_act  # "dsa" is `noskip`

    def forward(self, x):
      h = self.bn2(self.conv_pw(self.se(self.bn1(self.conv_dw(x)))))
      return x + h if self.has_skip else h

  class InvertedResidual(nn.Module):  # timm's "ir" block
    def __init__(self, cin, cout, kernel, stride, act, se_ratio, expansion):
      super().__init__()
      mid = cin * expansion
      self.conv_pw = nn.Conv2d(cin, mid, 1, bias=False)
      self.bn1 = BatchNormAct2d(mid, act)
      self.conv_dw = nn.Conv2d(mid, mid, kernel, stride, padding(kernel, stride), groups=mid,
                               bias=False)
      self.bn2 = BatchNormAct2d(mid, act)
      # timm's builder divides the SE ratio by the expansion: a quarter of `cin`.
      self.se = (SqueezeExcite(mid, round(mid * se_ratio / expansion), act) if se_ratio
                 else nn.Identity())
      self.conv_pwl = nn.Conv2d(mid, cout, 1, bias=False)
      self.bn3 = BatchNormAct2d(cout)
      self.has_skip = stride == 1 and cin == cout

    def forward(self, x):
      h = self.bn2(self.conv_dw(self.bn1(self.conv_pw(x))))
      h = self.bn3(self.conv_pwl(self.se(h)))
      return x + h if self.has_skip else h

  class EfficientNet(nn.Module):  # timm's class of every model of its EfficientNet builder
    def __init__(self, arch_def, act, num_classes, num_features=1280, pw_act=False):
      super().__init__()
      self.conv_stem = nn.Conv2d(3, 32, 3, 2, padding(3, 2), bias=False)
      self.bn1 = BatchNormAct2d(32, act)
      stages, cin = [], 32
      for expansion, kernel, cout, repeats, stride, se_ratio in arch_def:
        blocks = []
        for i in range(repeats):
          args = (cin, cout, kernel, stride if i == 0 else 1, act, se_ratio)
          blocks.append(DepthwiseSeparableConv(*args, pw_act) if expansion == 1
                        else InvertedResidual(*args, expansion))
          cin = cout
        stages.append(nn.Sequential(*blocks))
      self.blocks = nn.Sequential(*stages)
      # `num_features=0`: no head conv (timm's Identity modules, which have no keys).
      if num_features:
        self.conv_head = nn.Conv2d(cin, num_features, 1, bias=False)
        self.bn2 = BatchNormAct2d(num_features, act)
      else:
        self.conv_head = self.bn2 = nn.Identity()
      self.classifier = nn.Linear(num_features or cin, num_classes)

    def forward(self, x):
      x = self.bn2(self.conv_head(self.blocks(self.bn1(self.conv_stem(x)))))
      return self.classifier(x.mean((2, 3)))

  # timm's arch_def strings as (expansion, kernel, channels, repeats, stride, SE ratio):
  # mobilenetv2_100: ds_r1_k3_s1_c16, ir_r2_k3_s2_e6_c24, ..., ir_r1_k3_s1_e6_c320.
  mobilenet_v2 = ((1, 3, 16, 1, 1, 0), (6, 3, 24, 2, 2, 0), (6, 3, 32, 3, 2, 0),
                  (6, 3, 64, 4, 2, 0), (6, 3, 96, 3, 1, 0), (6, 3, 160, 3, 2, 0),
                  (6, 3, 320, 1, 1, 0))
  # efficientnet_b0: ds_r1_k3_s1_e1_c16_se0.25, ir_r2_k3_s2_e6_c24_se0.25, ...
  efficientnet_b0 = ((1, 3, 16, 1, 1, 0.25), (6, 3, 24, 2, 2, 0.25), (6, 5, 40, 2, 2, 0.25),
                     (6, 3, 80, 3, 2, 0.25), (6, 5, 112, 3, 1, 0.25), (6, 5, 192, 4, 2, 0.25),
                     (6, 3, 320, 1, 1, 0.25))
  # mobilenetv1_100: dsa_r1_k3_s1_c64, dsa_r2_k3_s2_c128, ..., dsa_r2_k3_s2_c1024, with no
  # head conv; mobilenetv1_100h (`head_conv=True`) has one, to 1024 channels.
  mobilenet_v1 = ((1, 3, 64, 1, 1, 0), (1, 3, 128, 2, 2, 0), (1, 3, 256, 2, 2, 0),
                  (1, 3, 512, 6, 2, 0), (1, 3, 1024, 2, 2, 0))

  class ConvMlp(nn.Module):  # timm's VGG `pre_logits`: fc6 and fc7 as convolutions
    def __init__(self, width):
      super().__init__()
      self.fc1 = nn.Conv2d(512, width, 7)
      self.act1 = nn.ReLU(True)
      self.fc2 = nn.Conv2d(width, width, 1)
      self.act2 = nn.ReLU(True)

    def forward(self, x):
      if x.shape[-2] < 7 or x.shape[-1] < 7:
        x = nn.functional.adaptive_avg_pool2d(x, (max(7, x.shape[-2]), max(7, x.shape[-1])))
      return self.act2(self.fc2(self.act1(self.fc1(x))))

  class ClassifierHead(nn.Module):
    def __init__(self, width, num_classes):
      super().__init__()
      self.fc = nn.Linear(width, num_classes)

    def forward(self, x):
      return self.fc(x.mean((2, 3)))

  class VGG(nn.Module):
    def __init__(self, cfg, num_classes):
      super().__init__()
      layers, cin = [], 3
      for v in cfg:
        if v == "M":
          layers.append(nn.MaxPool2d(2, 2))
        else:
          layers += [nn.Conv2d(cin, v, 3, padding=1), nn.ReLU(True)]
          cin = v
      self.features = nn.Sequential(*layers)
      self.pre_logits = ConvMlp(_NARROW)
      self.head = ClassifierHead(_NARROW, num_classes)

    def forward(self, x):
      return self.head(self.pre_logits(self.features(x)))

  return {"mobilenet_v2": functools.partial(EfficientNet, mobilenet_v2, nn.ReLU6),
          "efficientnet_b0": functools.partial(EfficientNet, efficientnet_b0, nn.SiLU),
          "mobilenet_v1_1.0": functools.partial(EfficientNet, mobilenet_v1, nn.ReLU6,
                                                num_features=0, pw_act=True),
          "mobilenetv1_100h": functools.partial(EfficientNet, mobilenet_v1, nn.ReLU6,
                                                num_features=1024, pw_act=True),
          "vgg": VGG}


def _save(state, path):
  safetensors_torch.save_file({k: v.contiguous() for k, v in state.items()}, path)
  return path


@pytest.fixture(scope="module")
def resnet18_file(torch, tmp_path_factory):
  """A random ResNet-18 of 10 classes saved as timm's files are."""
  state = _random_model(torch, "resnet18", 10).state_dict()
  return _save(state, tmp_path_factory.mktemp("resnet18") / "model.safetensors")


@pytest.mark.parametrize("arch, preprocess", [("mobilenet_v2", TORCHVISION),
                                                ("efficientnet_b0", TORCHVISION),
                                                ("mobilenet_v1_1.0", MINUS_ONE_TO_ONE)],
                         ids=lambda v: getattr(v, "name", v))
def test_efficientnet_builder_logits_match_timm_layout(tmp_path, torch, arch, preprocess):
  """MobileNet V1 takes PyTorch's padding (`same_padding=False`), not TF-slim's."""
  reference = _random_model(torch, arch, 1000, references=_timm_models)
  model, variables, got_preprocess = from_timm(
      arch, _save(reference.state_dict(), tmp_path / "model.safetensors"))
  assert model.num_classes == 1000 and got_preprocess == preprocess
  # 56 px: odd feature maps reach the stride-2 convs, and even ones, where SAME
  # padding would differ.
  _assert_logits_match(torch, reference, model, variables, 56, 56)


# timm's ResNet and DenseNet are torchvision's modules under torchvision's names, so
# their files must give exactly torchvision's variables, whose logits match these very
# reference modules (test_convert_torchvision, test_resnet50_densenet): compiling
# ResNet-50 and DenseNet-121 again here would only re-test that.
@pytest.mark.parametrize("arch, references", [
    ("resnet18", _torchvision_models),
    ("resnet50", test_resnet50_densenet._torchvision_models),
    ("densenet121", test_resnet50_densenet._torchvision_models),
])
def test_torchvision_layout_files_give_torchvision_variables(tmp_path, torch, arch, references):
  state = _random_model(torch, arch, 10, references=references).state_dict()
  model, variables, preprocess = from_timm(arch, _save(state, tmp_path / "model.safetensors"))
  assert model.num_classes == 10 and preprocess == TORCHVISION
  chex.assert_trees_all_equal(variables, from_torchvision(arch, state)[1])


def test_pth_and_bin_files_give_the_variables_of_safetensors(tmp_path, torch, resnet18_file):
  """timm's `.pth` releases and the Hub's `pytorch_model.bin` are torch pickles."""
  torch.save(safetensors_torch.load_file(resnet18_file), tmp_path / "pytorch_model.bin")
  chex.assert_trees_all_equal(from_timm("resnet18", tmp_path / "pytorch_model.bin")[1],
                              from_timm("resnet18", resnet18_file)[1])


def _timm_vgg(torch, arch):
  """A random timm VGG with `_NARROW` fc6/fc7, and the torchvision VGG it was made from.

  timm made its `tv_in1k` files from torchvision's with these renames and reshapes.
  """
  torchvision_vgg = _torch_vgg(torch, arch, 10)
  state = torchvision_vgg.state_dict()
  renames = {"classifier.0": "pre_logits.fc1", "classifier.3": "pre_logits.fc2",
             "classifier.6": "head.fc"}
  shapes = {"classifier.0.weight": (_NARROW, 512, 7, 7),
            "classifier.3.weight": (_NARROW, _NARROW, 1, 1)}
  timm_state = {}
  for key, value in state.items():
    module, leaf = key.rsplit(".", 1)
    timm_state[f"{renames.get(module, module)}.{leaf}"] = value.reshape(
        shapes.get(key, value.shape))
  reference = _timm_models(torch.nn)["vgg"](_CFGS[arch], 10)
  reference.load_state_dict(timm_state)
  return reference.eval(), torchvision_vgg


# 32 px leaves block5 1x1, which timm pools to 7x7 like torchvision; 255x64 leaves 7x2,
# the largest map whose rows timm does not slide fc6 over; at 256 px (8 rows) it does.
# VGG19 differs only in its conv indices, so one size does.
@pytest.mark.parametrize("arch, exact, inexact", [("vgg16", ((255, 64),), (256, 64)),
                                                  ("vgg19", ((32, 32),), None)])
def test_vgg_logits_match_timm_below_256_px(tmp_path, torch, narrow, arch, exact, inexact):
  reference, torchvision_vgg = _timm_vgg(torch, arch)
  model, variables, preprocess = from_timm(
      arch, _save(reference.state_dict(), tmp_path / "model.safetensors"))
  assert model.num_classes == 10 and preprocess == TORCHVISION
  # The same variables as torchvision's file, which timm's holds reshaped.
  chex.assert_trees_all_equal(variables, from_torchvision(arch, torchvision_vgg.state_dict())[1])
  for height, width in exact:
    got, want = _logits_of_both(torch, reference, model, variables, height, width)
    np.testing.assert_allclose(got, want, rtol=0, atol=1e-4)
  if inexact:
    got, want = _logits_of_both(torch, reference, model, variables, *inexact)
    assert np.abs(got - want).max() > 1e-3


def test_every_key_problem_is_reported_at_once(tmp_path, resnet18_file):
  state = safetensors_torch.load_file(resnet18_file)
  del state["layer1.0.bn1.running_var"]
  state["head.fc.weight"] = state["fc.weight"].clone()
  state["layer2.0.conv1.weight"] = state["layer2.0.conv1.weight"][:, :, :1, :1]
  with pytest.raises(ConversionError) as error:
    from_timm("resnet18", _save(state, tmp_path / "model.safetensors"))
  message = str(error.value)
  assert "3 problem(s)" in message
  assert "missing layer1.0.bn1.running_var (64,)" in message
  assert "unexpected head.fc.weight (10, 512)" in message
  assert ("layer2.0.conv1.weight has shape (128, 64, 1, 1), expected (128, 64, 3, 3)"
          in message)


def test_mobilenet_v1_with_a_head_conv_is_refused_listing_its_keys(tmp_path, torch):
  """timm's `mobilenetv1_100h` is `mobilenetv1_100` plus a head conv, which the Flax model lacks."""
  state = _random_model(torch, "mobilenetv1_100h", 10, references=_timm_models).state_dict()
  with pytest.raises(ConversionError) as error:
    from_timm("mobilenet_v1_1.0", _save(state, tmp_path / "model.safetensors"))
  message = str(error.value)
  assert "5 problem(s)" in message
  assert "unexpected conv_head.weight (1024, 1024, 1, 1)" in message
  for leaf in ("weight", "bias", "running_mean", "running_var"):
    assert f"unexpected bn2.{leaf} (1024,)" in message


def test_files_of_another_architecture_or_layout_are_refused(resnet18_file):
  with pytest.raises(ConversionError, match=r"missing layer1\.0\.conv3\.weight"):
    from_timm("resnet50", resnet18_file)
  # torchvision's MobileNetV2 is the same network under torchvision's names.
  with pytest.raises(ConversionError) as error:
    from_timm("mobilenet_v2", imagenet_samples.weights_dir() / "mobilenet_v2-b0353104.pth")
  assert "missing conv_stem.weight (32, 3, 3, 3)" in str(error.value)
  assert "unexpected features.0.0.weight (32, 3, 3, 3)" in str(error.value)


@pytest.mark.parametrize("config, want", [
    # The Hub's config.json, and the flat layout of older ones.
    ({"architecture": "resnet18", "pretrained_cfg": {"mean": [0.5] * 3, "std": [0.5] * 3}},
     MINUS_ONE_TO_ONE),
    ({"architecture": "resnet18", "mean": [0.485, 0.456, 0.406], "std": [0.229, 0.224, 0.225]},
     TORCHVISION),
    ({"architecture": "resnet18", "pretrained_cfg": {"mean": [0.0] * 3, "std": [1 / 255] * 3}},
     Preprocess("timm_resnet18", (0.0,) * 3, (1.0,) * 3)),
])
def test_config_beside_the_file_gives_the_input_convention(tmp_path, resnet18_file, config,
                                                          want):
  (tmp_path / "model.safetensors").write_bytes(resnet18_file.read_bytes())
  (tmp_path / "config.json").write_text(json.dumps(config))
  _, _, preprocess = from_timm("resnet18", tmp_path / "model.safetensors")
  assert preprocess.name == want.name and preprocess.bgr == want.bgr
  np.testing.assert_allclose(preprocess.mean, want.mean, atol=1e-3)
  np.testing.assert_allclose(preprocess.std, want.std, atol=1e-3)


def test_config_of_another_model_is_refused(tmp_path, resnet18_file):
  (tmp_path / "model.safetensors").write_bytes(resnet18_file.read_bytes())
  (tmp_path / "config.json").write_text(json.dumps({"architecture": "resnet50"}))
  with pytest.raises(ConversionError, match="describes timm resnet50, not resnet18"):
    from_timm("resnet18", tmp_path / "model.safetensors")
