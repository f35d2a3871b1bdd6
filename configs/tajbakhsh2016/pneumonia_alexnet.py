"""Tajbakhsh et al. 2016's protocol (REFERENCE.md 1A, Table II) on PneumoniaMNIST with AlexNet.

Layer-wise fine-tuning from the last layer backwards, `FT:only fc8` ... `FT:conv1-fc8`,
against AlexNet trained from scratch, at 100/50/25 % of the training data, three seeds.

  tuning sweep --config configs/tajbakhsh2016/pneumonia_alexnet.py --workdir runs/tajbakhsh

As the paper (Table II and text): SGD, momentum 0.9; lr 0.001 on tuned layers and 0.01
on the new fc8, scratch 0.001 everywhere; biases at 2x (Caffe); lr x 0.95 per epoch;
early stopping on validation AUC; negatives down-sampled to balance the classes; 227 px.

Assumptions (labelled): torchvision's AlexNet (`alexnet-owt-7be5be79.pth`, downloaded on
first use) stands in for the BVLC Caffe AlexNet, which has no reader here (the Caffe
architecture is `--config.arch=alexnet_caffe`); the official MedMNIST validation split
replaces the paper's 80/20 split; 30 epochs with patience 5 (the paper trained to
convergence); no weight decay (not stated in the paper).

Not run here: at 227 px a full run of this grid needs a GPU (2-core CPU: hours per run);
configs/fraction_study.py runs the same question on this machine with MobileNetV2.
"""
from tuning import protocols


def get_config():
  config = protocols.tajbakhsh2016()
  config.dataset = "pneumoniamnist"
  config.train_fractions = (1.0, 0.5, 0.25)
  config.seeds = (0, 1, 2)
  config.balance = True
  return config
