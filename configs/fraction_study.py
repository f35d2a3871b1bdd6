"""Tajbakhsh 2016's data-size study on real chest X-rays: does fine-tuning hold up as data shrinks?

Four schemes (`scratch`, `head`, `from:block4`, `all`) of torchvision's ImageNet
MobileNetV2 (the real weights we have; the paper's Caffe AlexNet is not
available offline) on PneumoniaMNIST, at 25 %, 5 % and 1 % of the training
split (stratified and nested: the 1 % subset is inside the 5 % one), three seeds
each, official validation split for early stopping, official test split.

  TUNING_DATA_DIR=../shared/data TUNING_WEIGHTS_DIR=../shared/weights \
    tuning sweep --config configs/fraction_study.py --workdir runs/fraction_study

Assumptions (not the paper's protocol): 64 px inputs (the 28 px images
upsampled), at most 10 epochs with patience 3, scratch at its own lr 0.05.
On a cluster, split the 36 runs: `--shard i/n` per job, then `tuning report`.
"""
from tuning.config import defaults


def get_config():
  config = defaults()
  config.dataset = "pneumoniamnist"
  config.arch = "mobilenet_v2"
  config.weights = "mobilenet_v2-b0353104.pth"
  config.schemes = ("scratch", "head", "from:block4", "all")
  config.train_fractions = (0.25, 0.05, 0.01)
  config.seeds = (0, 1, 2)
  config.image_size = 64
  config.batch_size = 16  # 1 % is 47 images: a 32 batch would leave one step per epoch
  config.epochs = 10
  config.patience = 3
  config.progress = False
  return config
