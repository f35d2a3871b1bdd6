"""Demo depth sweep: torchvision's ImageNet MobileNetV2 on PneumoniaMNIST chest X-rays.

Does fine-tuning beat training from scratch, and how deep should it go? Five runs:
`scratch`, `head` (only the new classifier), `from:block6`, `from:block4` and
`all` (deep tuning), each with early stopping on validation AUC, tested on the
official 624-image test split.

  TUNING_DATA_DIR=../shared/data TUNING_WEIGHTS_DIR=../shared/weights \
    tuning sweep --config configs/demo.py --workdir runs/demo

Sized for a 2-core CPU: 64 px inputs (the 28 px images upsampled), a stratified
25 % of the training split (1,178 images), at most 10 epochs. Measured 2026-11-24
on 2 cores: 400 s for the sweep; test AUC scratch 0.9537, head 0.8969,
from:block6 0.9265, from:block4 0.9658, all 0.9521 (seed 0; README has the table).
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
