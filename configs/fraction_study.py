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

Measured 2026-11-25 on 2 cores shared with other jobs (36 runs, 4,964 s of run time;
mean test AUC over 3 seeds, 95 % t-interval; scheme picked on validation AUC):

  | fraction | scratch                | head                   | from:block4            | all                    |
  | 0.25     | 0.9272 (0.8796-0.9749) | 0.8933 (0.8802-0.9065) | 0.9505 (0.9064-0.9947) | 0.9517 (0.9373-0.9660) |
  | 0.05     | 0.8913 (0.8421-0.9405) | 0.8902 (0.8502-0.9302) | 0.9371 (0.8707-1.0000) | 0.9240 (0.8606-0.9874) |
  | 0.01     | 0.7206 (0.6235-0.8177) | 0.8645 (0.8408-0.8882) | 0.8026 (0.7568-0.8484) | 0.7141 (0.4565-0.9716) |

Best fine-tuned (on validation) minus scratch: +0.024 at 25 %, +0.046 at 5 %, +0.082 at 1 %:
fine-tuning beats scratch at every fraction and the gap grows as data shrinks, as
Tajbakhsh 2016 found. At 1 % (47 images) deep tuning (`all`) collapses on two seeds and
the head alone is best on test, though validation picked from:block4.
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
