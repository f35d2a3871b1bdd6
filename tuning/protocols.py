"""The papers' training protocols as config settings, shared by the configs of each study.

Tajbakhsh et al. 2016 (REFERENCE.md 1A, Table II) apply one protocol to all four
of their applications; `configs/tajbakhsh2016/*.py` start from it and add their
data and task settings.
"""
from __future__ import annotations

import ml_collections

from tuning.config import defaults

# Layer-wise fine-tuning from the last layer backwards, against training from scratch.
TAJBAKHSH2016_SCHEMES = ("scratch", "FT:only fc8", "FT:fc7-fc8", "FT:fc6-fc8", "FT:conv5-fc8",
                         "FT:conv4-fc8", "FT:conv3-fc8", "FT:conv2-fc8", "FT:conv1-fc8")


def tajbakhsh2016() -> ml_collections.ConfigDict:
  """`defaults()` with Tajbakhsh 2016's network, schemes and SGD settings.

  As the paper: SGD, momentum 0.9; lr 0.001 on tuned layers and 10x on the new fc8,
  scratch 0.001 everywhere; biases at 2x (Caffe); lr x 0.95 per epoch; 227 px.
  Assumptions (labelled in each config): torchvision's AlexNet stands in for BVLC's;
  30 epochs with patience 5 (the paper trained to convergence).
  """
  config = defaults()
  config.arch = "alexnet"
  config.weights = "alexnet-owt-7be5be79.pth"
  config.weights_format = "torchvision"
  config.schemes = TAJBAKHSH2016_SCHEMES
  config.image_size = 227
  config.batch_size = 32
  config.epochs = 30
  config.patience = 5
  config.lr = 0.001
  config.head_lr_mult = 10.0
  config.scratch_lr = 0.001
  config.momentum = 0.9
  config.lr_decay_per_epoch = 0.95
  config.bias_lr_mult = 2.0
  return config
