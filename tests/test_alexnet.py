"""AlexNet, both variants: torch parity, LRN, shapes and counts, FT:fc6-fc8 freezing."""
from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from test_train_step import batches, setup
from tuning import config as config_lib
from tuning import models, train
from tuning.convert import from_torchvision
from tuning.models.alexnet import AlexNet, CaffeAlexNet
from tuning.models.layers import local_response_norm
from tuning.preprocess import CAFFE_IMAGENET, TORCHVISION


def _torch_alexnets(torch):
  """torchvision's AlexNet and BVLC Caffe's, written independently of `tuning.models`.

  The first is torchvision's module layout (it cannot be imported here); the
  second follows BVLC's deploy.prototxt, its layers named as there and its pools
  rounding up as Caffe's do, plus the adaptive pool that `CaffeAlexNet` adds for
  small inputs (the identity at 227 px).
  """
  nn = torch.nn

  class AlexNet(nn.Module):
    def __init__(self, num_classes, width=4096):
      super().__init__()
      self.features = nn.Sequential(
          nn.Conv2d(3, 64, 11, 4, 2), nn.ReLU(inplace=True), nn.MaxPool2d(3, 2),
          nn.Conv2d(64, 192, 5, padding=2), nn.ReLU(inplace=True), nn.MaxPool2d(3, 2),
          nn.Conv2d(192, 384, 3, padding=1), nn.ReLU(inplace=True),
          nn.Conv2d(384, 256, 3, padding=1), nn.ReLU(inplace=True),
          nn.Conv2d(256, 256, 3, padding=1), nn.ReLU(inplace=True), nn.MaxPool2d(3, 2))
      self.avgpool = nn.AdaptiveAvgPool2d((6, 6))
      self.classifier = nn.Sequential(
          nn.Dropout(0.5), nn.Linear(256 * 6 * 6, width), nn.ReLU(inplace=True),
          nn.Dropout(0.5), nn.Linear(width, width), nn.ReLU(inplace=True),
          nn.Linear(width, num_classes))

    def forward(self, x):
      return self.classifier(torch.flatten(self.avgpool(self.features(x)), 1))

  class CaffeAlexNet(nn.Module):
    def __init__(self, num_classes, width=4096):
      super().__init__()
      self.conv1 = nn.Conv2d(3, 96, 11, 4)
      self.conv2 = nn.Conv2d(96, 256, 5, padding=2, groups=2)
      self.conv3 = nn.Conv2d(256, 384, 3, padding=1)
      self.conv4 = nn.Conv2d(384, 384, 3, padding=1, groups=2)
      self.conv5 = nn.Conv2d(384, 256, 3, padding=1, groups=2)
      self.fc6 = nn.Linear(256 * 6 * 6, width)
      self.fc7 = nn.Linear(width, width)
      self.fc8 = nn.Linear(width, num_classes)
      self.norm = nn.LocalResponseNorm(5, 1e-4, 0.75, 1.0)
      self.pool = nn.MaxPool2d(3, 2, ceil_mode=True)
      self.avgpool = nn.AdaptiveAvgPool2d((6, 6))

    def forward(self, x):
      relu = torch.relu
      x = self.pool(self.norm(relu(self.conv1(x))))
      x = self.pool(self.norm(relu(self.conv2(x))))
      x = self.avgpool(self.pool(relu(self.conv5(relu(self.conv4(relu(self.conv3(x))))))))
      return self.fc8(relu(self.fc7(relu(self.fc6(torch.flatten(x, 1))))))

  return AlexNet, CaffeAlexNet


def _random(torch, model):
  """`model` in eval mode with He-initialised weights and random biases.

  torch's default initialisation shrinks activations layer by layer to logits
  of about 0.02, under which a mapping mistake could hide; these keep them O(1).
  """
  torch.manual_seed(0)
  with torch.no_grad():
    for name, p in model.named_parameters():
      if name.endswith("weight"):
        torch.nn.init.kaiming_normal_(p, nonlinearity="relu")
      else:
        p.normal_(0, 0.1)
  return model.eval()


def _caffe_variables(state):
  """How BVLC weights map: OIHW -> HWIO (grouped too) and (out, in) -> (in, out)."""
  params = {}
  for block in CaffeAlexNet.block_names:
    weight, bias = state[f"{block}.weight"].numpy(), state[f"{block}.bias"].numpy()
    layer, perm = ("conv", (2, 3, 1, 0)) if weight.ndim == 4 else ("dense", (1, 0))
    params[block] = {layer: {"kernel": weight.transpose(perm), "bias": bias}}
  return {"params": params}


def _nhwc(x):
  return x.permute(0, 2, 3, 1).numpy()


def _predict(model, variables, images):
  return np.asarray(jax.jit(model.apply)(variables, images))


def _check(name, got, want):
  print(f"{name}: max |logit diff| = {np.abs(got - want).max():.2e}, "
        f"max |logit| = {np.abs(want).max():.2f}")
  np.testing.assert_allclose(got, want, rtol=0, atol=1e-4)


@pytest.mark.parametrize("size, alpha, beta, k", [(5, 1e-4, 0.75, 1.0), (4, 1e-2, 0.5, 2.0),
                                                  (3, 1.0, 0.75, 1.0)])
def test_local_response_norm_matches_torch(torch, size, alpha, beta, k):
  x = torch.randn(2, 16, 3, 5, generator=torch.Generator().manual_seed(0)) * 30
  want = torch.nn.functional.local_response_norm(x, size, alpha, beta, k).numpy()
  got = local_response_norm(jnp.asarray(_nhwc(x)), size, alpha, beta, k)
  assert np.abs(want - x.numpy()).max() > 1  # the normalisation does something
  np.testing.assert_allclose(np.asarray(got), want.transpose(0, 2, 3, 1), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("arch, size, n_params", [
    ("alexnet", 224, 61_100_840), ("alexnet_caffe", 227, 60_965_224)])
def test_blocks_shapes_and_parameter_counts(arch, size, n_params):
  """torchvision's count, and BVLC's (about 5M conv and 55M fc parameters, Tajbakhsh §II)."""
  model = models.create(arch, num_classes=1000)
  blocks = ("conv1", "conv2", "conv3", "conv4", "conv5", "fc6", "fc7", "fc8")
  variables = jax.eval_shape(model.init, jax.random.key(0), jnp.zeros((1, size, size, 3)))
  assert type(model).block_names == blocks and set(variables) == {"params"}
  assert list(variables["params"]) == list(blocks)
  assert sum(np.prod(p.shape) for p in jax.tree.leaves(variables["params"])) == n_params
  assert variables["params"]["fc6"]["dense"]["kernel"].shape == (256 * 6 * 6, 4096)
  for side in (size, type(model).min_size):
    assert jax.eval_shape(model.apply, variables, jnp.zeros((2, side, side, 3))).shape == (2, 1000)
  with pytest.raises(ValueError, match=f"at least {type(model).min_size} px"):
    model.apply(variables, jnp.zeros((1, type(model).min_size - 1, size, 3)))


def test_caffe_alexnet_groups_its_convs():
  variables = jax.eval_shape(models.create("alexnet_caffe", 2).init, jax.random.key(0),
                             jnp.zeros((1, 227, 227, 3)))
  kernels = {b: variables["params"][b]["conv"]["kernel"].shape
             for b in ("conv1", "conv2", "conv3", "conv4", "conv5")}
  assert kernels == {"conv1": (11, 11, 3, 96), "conv2": (5, 5, 48, 256),
                     "conv3": (3, 3, 256, 384), "conv4": (3, 3, 192, 384),
                     "conv5": (3, 3, 192, 256)}


def test_torchvision_alexnet_converts_exactly(torch, tmp_path):
  """Through a saved file, at full width (once: fc6 alone is 150 MB)."""
  reference = _random(torch, _torch_alexnets(torch)[0](10))
  torch.save(reference.state_dict(), tmp_path / "alexnet.pth")
  model, variables, preprocess = from_torchvision("alexnet", tmp_path / "alexnet.pth")
  assert model.num_classes == 10 and preprocess == TORCHVISION and set(variables) == {"params"}
  # 224 px: the adaptive pool is the identity; 64 px: it spreads a 1x1 map to 6x6.
  for size in (224, 64):
    x = torch.randn(2, 3, size, size, generator=torch.Generator().manual_seed(size))
    with torch.no_grad():
      want = reference(x).numpy()
    _check(f"alexnet {size} px", _predict(model, variables, _nhwc(x)), want)


@pytest.mark.parametrize("size", [227, 64])
def test_caffe_alexnet_matches_caffe_layout(torch, size):
  """At 227 px Caffe and PyTorch pools agree; at 64 px only ceil mode gives Caffe's maps.

  fc6 and fc7 are 256 wide on both sides, which keeps fc6's (C, H, W) input order.
  """
  reference = _random(torch, _torch_alexnets(torch)[1](10, width=256))
  # Caffe's inputs are BGR minus a mean, in 0..255: large enough for LRN to act.
  scale = 60
  x = scale * torch.randn(2, 3, size, size, generator=torch.Generator().manual_seed(1))
  with torch.no_grad():
    reference.fc8.weight /= scale  # logits O(1) again, so that 1e-4 is a tight bound
    want = reference(x).numpy()
  model = models.create("alexnet_caffe", 10, fc_width=256)
  _check(f"alexnet_caffe {size} px",
         _predict(model, _caffe_variables(reference.state_dict()), _nhwc(x)), want)


def test_fine_tuning_fc6_to_fc8_leaves_the_convs_bit_identical():
  """Tajbakhsh's FT:fc6-fc8 is `from:fc6`: conv1..conv5 stay exactly as loaded."""
  _, state, step, frozen = setup("alexnet_caffe", "from:fc6", size=67, fc_width=64)
  assert frozen == ("conv1", "conv2", "conv3", "conv4", "conv5")
  before = jax.tree.map(np.asarray, state["params"])
  step = jax.jit(step)
  for batch in batches(2, size=67):
    state, metrics = step(state, batch)
  assert np.isfinite(metrics["loss"])
  for block, layers in before.items():
    for (path, old), new in zip(jax.tree_util.tree_leaves_with_path(layers),
                                jax.tree.leaves(state["params"][block])):
      name = f"{block}{jax.tree_util.keystr(path)}"
      if block in frozen:
        assert np.asarray(new).tobytes() == old.tobytes(), f"frozen {name} changed"
      else:
        assert not np.array_equal(new, old), f"trainable {name} did not change"


def test_create_model_replaces_fc8_with_a_fresh_head(torch, tmp_path, monkeypatch):
  """`train.create_model` reinitialises the last block, which for AlexNet is fc8.

  With fc6 and fc7 64 wide (registered so for this test): a full init takes 10 s.
  """
  monkeypatch.setitem(models.ARCHITECTURES, "alexnet", functools.partial(AlexNet, fc_width=64))
  state = _random(torch, _torch_alexnets(torch)[0](10, width=64)).state_dict()
  torch.save(state, tmp_path / "alexnet.pth")
  config = config_lib.defaults()
  config.update(arch="alexnet", weights=str(tmp_path / "alexnet.pth"), scheme="head",
                image_size=64)
  # `unsafe_rbg`: the init compiles 3-4x faster than with threefry on CPU.
  model, variables, preprocess, _ = train.create_model(
      config, 2, jax.random.key(0, impl="unsafe_rbg"))
  assert model.num_classes == 2 and preprocess == TORCHVISION
  assert variables["params"]["fc8"]["dense"]["kernel"].shape == (64, 2)
  _, converted, _ = from_torchvision("alexnet", state)
  for block in AlexNet.block_names[:-1]:
    for got, want in zip(jax.tree.leaves(variables["params"][block]),
                         jax.tree.leaves(converted["params"][block])):
      assert np.array_equal(got, want), block


def test_caffe_preprocess_is_bgr_minus_the_bgr_mean():
  pixel = np.array([[[255, 0, 10]]], np.uint8)  # RGB
  np.testing.assert_array_equal(CAFFE_IMAGENET(pixel), [[[10 - 104, 0 - 117, 255 - 123]]])
