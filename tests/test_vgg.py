"""VGG: torchvision parity of the model and its conversion, adaptive pooling, blocks, freezing."""
from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

import test_train_step
from test_convert_torchvision import _assert_logits_match
from tuning import models
from tuning.convert import from_torchvision
from tuning.models.layers import adaptive_avg_pool
from tuning.models.vgg import VGG, VGG16, VGG19
from tuning.preprocess import TORCHVISION

# torchvision's `cfgs`: conv widths, "M" for a max-pool.
_CFGS = {
    "vgg16": [64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M",
              512, 512, 512, "M"],
    "vgg19": [64, 64, "M", 128, 128, "M", 256, 256, 256, 256, "M", 512, 512, 512, 512, "M",
              512, 512, 512, 512, "M"],
}
# fc6/fc7 width of the light models the tests convert; torchvision's is 4096.
_NARROW = 64


def _torch_vgg(torch, arch, num_classes):
  """torchvision's VGG (no BatchNorm) module for module, but with fc6/fc7 `_NARROW` wide.

  Its weights keep activations near unit scale and its biases are non-zero, so
  every weight matters.
  """
  nn = torch.nn

  class VGG(nn.Module):

    def __init__(self):
      super().__init__()
      layers, cin = [], 3
      for v in _CFGS[arch]:
        if v == "M":
          layers.append(nn.MaxPool2d(kernel_size=2, stride=2))
        else:
          layers += [nn.Conv2d(cin, v, kernel_size=3, padding=1), nn.ReLU(inplace=True)]
          cin = v
      self.features = nn.Sequential(*layers)
      self.avgpool = nn.AdaptiveAvgPool2d((7, 7))
      self.classifier = nn.Sequential(
          nn.Linear(512 * 7 * 7, _NARROW), nn.ReLU(True), nn.Dropout(0.5),
          nn.Linear(_NARROW, _NARROW), nn.ReLU(True), nn.Dropout(0.5),
          nn.Linear(_NARROW, num_classes))

    def forward(self, x):
      return self.classifier(torch.flatten(self.avgpool(self.features(x)), 1))

  torch.manual_seed(0)
  model = VGG()
  with torch.no_grad():
    for m in model.modules():
      if isinstance(m, (nn.Conv2d, nn.Linear)):
        nn.init.kaiming_normal_(m.weight, nonlinearity="relu")
        m.bias.normal_(0, 0.1)
  return model.eval()


@pytest.fixture
def narrow(monkeypatch):
  """`vgg16`/`vgg19` with fc6/fc7 of width 64, so the converter builds light models."""
  for arch, depths in (("vgg16", VGG16), ("vgg19", VGG19)):
    monkeypatch.setitem(models.ARCHITECTURES, arch,
                        functools.partial(VGG, depths=depths, fc_width=_NARROW))


# 32 px leaves 1x1 maps that torchvision's pooling copies to 7x7; 96x64 leaves 3x2,
# whose 7x7 windows overlap unevenly and tell height from width. VGG19 differs only
# in its conv indices, so one size does.
@pytest.mark.parametrize("arch, sizes", [("vgg16", ((32, 32), (96, 64))),
                                         ("vgg19", ((96, 64),))])
def test_converted_checkpoint_matches_torch(tmp_path, torch, narrow, arch, sizes):
  reference = _torch_vgg(torch, arch, 10)
  torch.save(reference.state_dict(), tmp_path / "weights.pth")
  model, variables, preprocess = from_torchvision(arch, tmp_path / "weights.pth")
  assert model.num_classes == 10 and preprocess == TORCHVISION
  assert set(variables) == {"params"}
  for height, width in sizes:
    _assert_logits_match(torch, reference, model, variables, height, width)


def test_gap_variant_takes_the_conv_blocks_of_a_vgg_checkpoint(torch, narrow):
  reference = _torch_vgg(torch, "vgg16", 10)
  model, variables, _ = from_torchvision("vgg16_gap", reference.state_dict())
  assert set(variables["params"]) == {f"block{i}" for i in range(1, 6)}
  # A new 3-class head on the converted blocks, as training puts there.
  rng = np.random.default_rng(0)
  head = {"kernel": rng.normal(0, 0.05, size=(512, 3)).astype(np.float32),
          "bias": rng.normal(size=3).astype(np.float32)}
  variables = {"params": {**variables["params"], "head": {"classifier": head}}}
  gap_reference = lambda x: (reference.features(x).mean((2, 3)) @ torch.from_numpy(head["kernel"])
                             + torch.from_numpy(head["bias"]))
  _assert_logits_match(torch, gap_reference, model.clone(num_classes=3), variables, 64, 64)


# Each example compiles for its shapes, so few examples; sizes below, at and above the output's.
@settings(max_examples=20, deadline=None)
@given(st.integers(1, 20), st.integers(1, 20), st.integers(1, 9), st.integers(1, 9))
def test_adaptive_avg_pool_equals_torch(torch, height, width, out_height, out_width):
  x = np.random.default_rng(0).normal(size=(2, 3, height, width)).astype(np.float32)
  want = torch.nn.functional.adaptive_avg_pool2d(torch.from_numpy(x), (out_height, out_width))
  got = jax.jit(adaptive_avg_pool, static_argnums=1)(jnp.asarray(x.transpose(0, 2, 3, 1)),
                                                    (out_height, out_width))
  np.testing.assert_allclose(np.asarray(got).transpose(0, 3, 1, 2), want.numpy(), rtol=0,
                             atol=1e-6)


def test_frozen_blocks_bit_identical_trainable_blocks_change(narrow):
  """block1..4 frozen; block5, fc6 and fc7 (with dropout) and the head train."""
  test_train_step.test_frozen_blocks_bit_identical_trainable_blocks_change("vgg16", "from:block5")
