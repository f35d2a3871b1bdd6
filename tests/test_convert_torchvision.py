"""torchvision checkpoints convert exactly: random-weight parity, key checks, the real file."""
from __future__ import annotations

import chex
import jax
import numpy as np
import pytest

import imagenet_samples
from tuning.convert import ConversionError, from_torchvision
from tuning.preprocess import TORCHVISION


def _torchvision_models(nn):
  """torchvision's MobileNetV2 and ResNet-18, module for module (torchvision cannot be imported).

  Written from torchvision's source, independently of `tuning.models`, so a
  layout or padding mistake on either side breaks parity.
  """

  class ConvBNReLU6(nn.Sequential):  # torchvision's Conv2dNormActivation
    def __init__(self, cin, cout, kernel=3, stride=1, groups=1):
      super().__init__(nn.Conv2d(cin, cout, kernel, stride, (kernel - 1) // 2, groups=groups,
                                 bias=False), nn.BatchNorm2d(cout), nn.ReLU6(inplace=True))

  class InvertedResidual(nn.Module):
    def __init__(self, cin, cout, stride, expansion):
      super().__init__()
      hidden = cin * expansion
      layers = [ConvBNReLU6(cin, hidden, 1)] if expansion != 1 else []
      layers += [ConvBNReLU6(hidden, hidden, 3, stride, groups=hidden),
                 nn.Conv2d(hidden, cout, 1, bias=False), nn.BatchNorm2d(cout)]
      self.conv = nn.Sequential(*layers)
      self.residual = stride == 1 and cin == cout

    def forward(self, x):
      return x + self.conv(x) if self.residual else self.conv(x)

  class MobileNetV2(nn.Module):
    def __init__(self, num_classes=1000):
      super().__init__()
      features, cin = [ConvBNReLU6(3, 32, stride=2)], 32
      for t, c, n, s in ((1, 16, 1, 1), (6, 24, 2, 2), (6, 32, 3, 2), (6, 64, 4, 2),
                         (6, 96, 3, 1), (6, 160, 3, 2), (6, 320, 1, 1)):
        for i in range(n):
          features.append(InvertedResidual(cin, c, s if i == 0 else 1, t))
          cin = c
      features.append(ConvBNReLU6(cin, 1280, 1))
      self.features = nn.Sequential(*features)
      self.classifier = nn.Sequential(nn.Dropout(0.2), nn.Linear(1280, num_classes))

    def forward(self, x):
      return self.classifier(self.features(x).mean((2, 3)))

  class BasicBlock(nn.Module):
    def __init__(self, cin, cout, stride):
      super().__init__()
      self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
      self.bn1 = nn.BatchNorm2d(cout)
      self.relu = nn.ReLU(inplace=True)
      self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
      self.bn2 = nn.BatchNorm2d(cout)
      self.downsample = None
      if stride != 1 or cin != cout:
        self.downsample = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False),
                                        nn.BatchNorm2d(cout))

    def forward(self, x):
      h = self.bn2(self.conv2(self.relu(self.bn1(self.conv1(x)))))
      return self.relu(h + (x if self.downsample is None else self.downsample(x)))

  class ResNet18(nn.Module):
    def __init__(self, num_classes=1000):
      super().__init__()
      self.conv1 = nn.Conv2d(3, 64, 7, 2, 3, bias=False)
      self.bn1 = nn.BatchNorm2d(64)
      self.relu = nn.ReLU(inplace=True)
      self.maxpool = nn.MaxPool2d(3, 2, 1)
      for i, width in enumerate((64, 128, 256, 512)):
        cin = 64 if i == 0 else width // 2
        stride = 1 if i == 0 else 2
        setattr(self, f"layer{i + 1}", nn.Sequential(BasicBlock(cin, width, stride),
                                                     BasicBlock(width, width, 1)))
      self.fc = nn.Linear(512, num_classes)

    def forward(self, x):
      x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
      x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
      return self.fc(x.mean((2, 3)))

  return {"mobilenet_v2": MobileNetV2, "resnet18": ResNet18}


def _predict(model, variables, images):
  # Compiled: op-by-op dispatch compiles each op and takes ~10 s for MobileNetV2.
  return jax.jit(model.apply, static_argnames="train")(variables, images, train=False)


def _logits_of_both(torch, reference, model, variables, height, width):
  """(ours, the reference's) logits on the same two random NCHW / NHWC images."""
  x = torch.randn(2, 3, height, width, generator=torch.Generator().manual_seed(1))
  with torch.no_grad():
    want = reference(x).numpy()
  got = np.asarray(_predict(model, variables, x.permute(0, 2, 3, 1).numpy()))
  image_effect = np.abs(want[0] - want[1]).max()
  print(f"{type(model).__name__} {height}x{width}: max |logit diff| = "
        f"{np.abs(got - want).max():.2e}, max |logit| = {np.abs(want).max():.1f}, "
        f"image effect {image_effect:.2e}")
  # Else a parity check at 1e-4 would compare little more than the biases.
  assert image_effect > 1e-3, f"the reference's logits hardly depend on the image ({image_effect})"
  return got, want


def _assert_logits_match(torch, reference, model, variables, height, width):
  np.testing.assert_allclose(*_logits_of_both(torch, reference, model, variables, height, width),
                             rtol=0, atol=1e-4)


def _random_model(torch, arch, num_classes, references=_torchvision_models):
  """A reference model in eval mode whose BatchNorms all matter (random affine and stats).

  `references(torch.nn)` gives the reference model classes by arch. Conv kernels
  are He's (fan-in; a depthwise kernel's is k*k): through dozens of convs at
  torch's default scale, a sixth of that variance, the image's share of the
  logits falls to 1e-7.
  """
  torch.manual_seed(0)
  model = references(torch.nn)[arch](num_classes)
  with torch.no_grad():
    for m in model.modules():
      if isinstance(m, torch.nn.Conv2d):
        m.weight.normal_(0, (2 / m.weight[0].numel()) ** 0.5)
      if isinstance(m, torch.nn.BatchNorm2d):
        m.weight.uniform_(0.5, 1.5)
        m.bias.normal_(0, 0.2)
        m.running_mean.normal_(0, 0.2)
        m.running_var.uniform_(0.5, 2.0)
  return model.eval()


@pytest.mark.parametrize("arch, num_classes", [("mobilenet_v2", 1000), ("resnet18", 10)])
def test_logits_match_torch(tmp_path, torch, arch, num_classes):
  reference = _random_model(torch, arch, num_classes)
  torch.save(reference.state_dict(), tmp_path / "weights.pth")

  model, variables, preprocess = from_torchvision(arch, tmp_path / "weights.pth")

  assert model.num_classes == num_classes and preprocess == TORCHVISION
  assert set(variables) == {"params", "batch_stats"}
  _assert_logits_match(torch, reference, model, variables, 64, 64)


def test_in_memory_state_dict_gives_the_same_variables(tmp_path, torch):
  state = _random_model(torch, "resnet18", 10).state_dict()
  torch.save(state, tmp_path / "weights.pth")
  _, from_file, _ = from_torchvision("resnet18", tmp_path / "weights.pth")
  _, from_memory, _ = from_torchvision("resnet18", state)
  chex.assert_trees_all_equal(from_file, from_memory)


def test_every_key_problem_is_reported_at_once(torch):
  state = _random_model(torch, "resnet18", 10).state_dict()
  del state["layer1.0.bn1.running_var"]
  state["layer5.0.conv1.weight"] = torch.zeros(3)
  state["layer2.0.conv1.weight"] = torch.zeros(128, 64, 5, 5)
  with pytest.raises(ConversionError) as error:
    from_torchvision("resnet18", state)
  message = str(error.value)
  assert "3 problem(s)" in message
  assert "missing layer1.0.bn1.running_var (64,)" in message
  assert "unexpected layer5.0.conv1.weight (3,)" in message
  assert ("layer2.0.conv1.weight has shape (128, 64, 5, 5), expected (128, 64, 3, 3)"
          in message)


def test_real_mobilenet_v2_recognises_images():
  """torchvision's own ImageNet file, read without torch, classifies natural images."""
  model, variables, preprocess = from_torchvision(
      "mobilenet_v2", imagenet_samples.weights_dir() / "mobilenet_v2-b0353104.pth")
  labels = imagenet_samples.labels()[1:]  # torchvision has no background class
  logits = np.asarray(_predict(model, variables, preprocess(imagenet_samples.images())))
  top5 = {name: [labels[i] for i in np.argsort(-row)[:5]]
          for name, row in zip(imagenet_samples.IMAGE_NAMES, logits)}
  print(top5)
  assert any("cat" in label for label in top5["cat.bmp"]), top5["cat.bmp"]
  assert "macaw" in top5["parrot.jpg"][0], top5["parrot.jpg"]
