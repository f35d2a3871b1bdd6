"""The PyTorch peer: the same architectures, schemes, batch, size and thread count as JAX.

torchvision does not import here, so its MobileNetV2, ResNet-18 and VGG16 are
written out, op for op, as one `nn.Sequential` whose children are the
blocks of the matching `tuning.models` architecture, under the same names. A
scheme then freezes the same blocks in both frameworks: frozen blocks get
`requires_grad=False` and eval-mode BatchNorm, the rest train with SGD momentum
at the training config's rates. Weights and inputs are channels_last (NHWC in
memory, like JAX's arrays): on a 2-core EPYC it ran 1.1-1.8x faster than NCHW.
"""
from __future__ import annotations

import collections
from typing import Callable, Iterator

import torch
import torch.nn.functional as F
from torch import nn

from benchmarks import common
from tuning import config as config_lib
from tuning import models



class ConvBNAct(nn.Sequential):
  """torchvision's Conv2dNormActivation: conv without bias, BatchNorm, activation."""

  def __init__(self, cin, cout, kernel=3, stride=1, groups=1, activation=nn.ReLU6):
    layers = [nn.Conv2d(cin, cout, kernel, stride, (kernel - 1) // 2, groups=groups, bias=False),
              nn.BatchNorm2d(cout)]
    super().__init__(*layers, *([activation(inplace=True)] if activation else []))


class InvertedResidual(nn.Module):
  def __init__(self, cin, cout, stride, expansion):
    super().__init__()
    hidden = cin * expansion
    layers = [ConvBNAct(cin, hidden, 1)] if expansion != 1 else []
    layers += [ConvBNAct(hidden, hidden, 3, stride, groups=hidden),
               ConvBNAct(hidden, cout, 1, activation=None)]
    self.conv = nn.Sequential(*layers)
    self.residual = stride == 1 and cin == cout

  def forward(self, x):
    return x + self.conv(x) if self.residual else self.conv(x)


class BasicBlock(nn.Module):
  def __init__(self, cin, cout, stride):
    super().__init__()
    self.conv1 = ConvBNAct(cin, cout, 3, stride, activation=nn.ReLU)
    self.conv2 = ConvBNAct(cout, cout, 3, activation=None)
    self.downsample = (ConvBNAct(cin, cout, 1, stride, activation=None)
                       if stride != 1 or cin != cout else nn.Identity())

  def forward(self, x):
    return F.relu(self.conv2(self.conv1(x)) + self.downsample(x))


class PoolHead(nn.Module):
  """Global average pool, dropout, linear: torchvision's classifier of MobileNetV2 and ResNet."""

  def __init__(self, cin, num_classes, dropout=0.0):
    super().__init__()
    self.dropout = nn.Dropout(dropout)
    self.fc = nn.Linear(cin, num_classes)

  def forward(self, x):
    return self.fc(self.dropout(x.mean((2, 3))))


def _mobilenet_v2(num_classes):
  blocks, cin = [ConvBNAct(3, 32, stride=2)], 32
  for t, c, n, s in ((1, 16, 1, 1), (6, 24, 2, 2), (6, 32, 3, 2), (6, 64, 4, 2),
                     (6, 96, 3, 1), (6, 160, 3, 2), (6, 320, 1, 1)):
    units = []
    for i in range(n):
      units.append(InvertedResidual(cin, c, s if i == 0 else 1, t))
      cin = c
    blocks.append(nn.Sequential(*units))
  return [*blocks, ConvBNAct(cin, 1280, 1), PoolHead(1280, num_classes, 0.2)]


def _resnet18(num_classes):
  stem = nn.Sequential(ConvBNAct(3, 64, 7, 2, activation=nn.ReLU), nn.MaxPool2d(3, 2, 1))
  layers = [nn.Sequential(BasicBlock(64 if i == 0 else width // 2, width, 1 if i == 0 else 2),
                          BasicBlock(width, width, 1))
            for i, width in enumerate((64, 128, 256, 512))]
  return [stem, *layers, PoolHead(512, num_classes)]


def _vgg16(num_classes):
  blocks, cin = [], 3
  for convs, width in zip((2, 2, 3, 3, 3), (64, 128, 256, 512, 512)):
    layers = []
    for _ in range(convs):
      layers += [nn.Conv2d(cin, width, 3, padding=1), nn.ReLU(inplace=True)]
      cin = width
    blocks.append(nn.Sequential(*layers, nn.MaxPool2d(2, 2)))
  fc6 = nn.Sequential(nn.AdaptiveAvgPool2d(7), nn.Flatten(), nn.Linear(512 * 7 * 7, 4096),
                      nn.ReLU(inplace=True), nn.Dropout(0.5))
  fc7 = nn.Sequential(nn.Linear(4096, 4096), nn.ReLU(inplace=True), nn.Dropout(0.5))
  return [*blocks, fc6, fc7, nn.Linear(4096, num_classes)]


ARCHITECTURES = {"mobilenet_v2": _mobilenet_v2, "resnet18": _resnet18, "vgg16": _vgg16}


def create(arch: str, num_classes: int) -> nn.Sequential:
  """The torch model, its children named as `tuning.models.create(arch)`'s blocks."""
  names = type(models.create(arch, num_classes)).block_names
  return nn.Sequential(collections.OrderedDict(
      zip(names, ARCHITECTURES[arch](num_classes), strict=True)))


def freeze(model: nn.Sequential, trainable_from: int) -> list[nn.Parameter]:
  """Freezes the blocks below `trainable_from`; returns the parameters that still train."""
  for index, block in enumerate(model):
    block.requires_grad_(index >= trainable_from)
    block.train(index >= trainable_from)  # frozen BatchNorm uses and keeps its running stats
  return [p for p in model.parameters() if p.requires_grad]


def make_train_step(model: nn.Sequential, trainable_from: int, clip_norm: float | None = None,
                    cached: bool = False):
  """One SGD-momentum step on (images, labels), frozen below `trainable_from`.

  The rates are the training config's: `lr` for tuned blocks, x `head_lr_mult`
  for the head. `clip_norm` clips the trainable gradients' global norm first.
  `cached`: the step takes the frozen blocks' output instead of images and runs
  only the blocks from `trainable_from` on.
  """
  config = config_lib.defaults()
  trainable = freeze(model, trainable_from)
  head = {id(p) for p in model[-1].parameters()}
  groups = [{"params": [p for p in trainable if id(p) not in head], "lr": config.lr},
            {"params": [p for p in trainable if id(p) in head],
             "lr": config.lr * config.head_lr_mult}]
  optimizer = torch.optim.SGD([g for g in groups if g["params"]], momentum=config.momentum)
  trained = model[trainable_from:] if cached else model

  def step(images, labels):
    optimizer.zero_grad(set_to_none=True)
    loss = F.cross_entropy(trained(images), labels)
    loss.backward()
    if clip_norm is not None:
      nn.utils.clip_grad_norm_(trainable, clip_norm)
    optimizer.step()
    return loss
  return step


def matmul_peak_gflops(n: int = 2048) -> float:
  a, b = torch.randn(n, n), torch.randn(n, n)
  return common.matmul_gflops(lambda: a @ b, n)


def rows(arch: str, schemes: list[common.Scheme], *, batch: int, size: int, repeats: int,
         steps: int, num_classes: int, between: Callable[[], None] = common.no_pause
         ) -> Iterator[dict]:
  """One row per scheme, measured on one random batch with `common.cores()` threads;
  `between` is called before each timed run (`common.images_per_second`)."""
  torch.set_num_threads(common.cores())
  torch.manual_seed(0)
  model = create(arch, num_classes).to(memory_format=torch.channels_last)
  images = torch.randn(batch, 3, size, size).contiguous(memory_format=torch.channels_last)
  labels = torch.randint(0, num_classes, (batch,))
  peak = matmul_peak_gflops()
  for scheme in schemes:
    scope = common.reset_peak_rss()
    if scheme.trainable_from is None:
      model.eval()
      def run_steps(k):
        with torch.inference_mode():
          for _ in range(k):
            torch.softmax(model(images), -1)
      trainable = 0
    else:
      step = make_train_step(model, scheme.trainable_from, scheme.clip_norm, scheme.cached)
      inputs = images
      if scheme.cached:  # the frozen (eval-mode) blocks' output, as a feature cache holds it
        with torch.no_grad():
          inputs = model[:scheme.trainable_from](images)
      def run_steps(k, inputs=inputs):
        for _ in range(k):
          step(inputs, labels)
      trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    speed = common.images_per_second(run_steps, batch, repeats, steps, between)
    model.zero_grad(set_to_none=True)  # the next scheme starts without this one's gradients
    yield {
        "framework": "torch", "model": arch, "scheme": scheme.name, "batch": batch, "size": size,
        **speed, "trainable_params": trainable, "matmul_peak_gflops": peak,
        "peak_rss_mb": common.peak_rss_mb(), "peak_rss_scope": scope,
        "threads": torch.get_num_threads(), "devices": 1, "memory_format": "channels_last"}
