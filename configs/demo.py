"""Demo depth sweep: torchvision's ImageNet MobileNetV2 on PneumoniaMNIST chest X-rays.

Does fine-tuning beat training from scratch, and how deep should it go? Five runs:
`scratch`, `head` (only the new classifier), `from:block6`, `from:block4` and
`all` (deep tuning), each with early stopping on validation AUC, tested on the
official 624-image test split.

  TUNING_DATA_DIR=../shared/data TUNING_WEIGHTS_DIR=../shared/weights \
    tuning sweep --config configs/demo.py --workdir runs/demo

Sized for a 2-core CPU (see README for the measured time and table): 64 px
inputs (the 28 px images upsampled), a stratified 25 % of the training split.
"""
from tuning.config import defaults


def get_config():
  config = defaults()
  config.dataset = "pneumoniamnist"
  config.arch = "mobilenet_v2"
  config.weights = "mobilenet_v2-b0353104.pth"
  config.weights_format = "torchvision"
  config.schemes = ("scratch", "head", "from:block6", "from:block4", "all")
  config.image_size = 64
  config.train_fraction = 0.25
  config.epochs = 10
  config.patience = 3
  return config
