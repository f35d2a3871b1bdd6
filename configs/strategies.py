"""Fine-tuning strategies compared: fixed depths, rate schedules, phased runs, automatic depth.

torchvision's ImageNet MobileNetV2 on PneumoniaMNIST chest X-rays, nine schemes:
`scratch`; the fixed depths `head`, `from:block4` (the middle) and `all`; deep
tuning with a strategy, `llrd` (layer-wise rate decay, 0.75 per block) and `l2sp`
(pulled toward the pretrained weights); the phased `lpft` (head for 2 epochs,
then every block) and `gradual` (head, then 3 blocks more per epoch, rates from
lr / 100 at the lowest trained block up to the head, fastai-style); and `auto`
(from the head down 3 blocks at a time, each depth warm started from the one
above, while validation AUC improves). The report's run table and each row's
`phases` and `auto` fields (the depths tried, their validation AUC and epochs,
and the compute against the fixed-depth sweep) hold the evidence.

  TUNING_DATA_DIR=../shared/data TUNING_WEIGHTS_DIR=../shared/weights \
    tuning sweep --config configs/strategies.py --workdir runs/strategies

Sized for a 2-core CPU: 64 px (the 28 px images upsampled), a stratified 10 % of
the training split (470 images), 5 epochs per run (per depth for `auto`) with
patience 2, three seeds: 27 runs, 27 minutes on the 2 cores (2026-11-25, partly
shared with other jobs); `--config.seeds='(0,)'` takes a third of that.

Measured (test AUC on the official 624-image test split: mean over the 3 seeds with
its 95 % t-interval; p: DeLong per seed against the best on validation, combined
over seeds, so it measures test-set sampling, not training randomness; sens: at
10 % FPR; wall s: mean per run):

| scheme | rank (val) | trainable params | val AUC | test AUC (95 % CI) | sens | p vs best | wall s |
|---|---|---|---|---|---|---|---|
| from:block4 | 1 | 2,170,946 | 0.9805 | 0.9224 (0.8906-0.9543) | 0.779 | best | 30 |
| l2sp | 2 | 2,226,434 | 0.9803 | 0.9250 (0.8823-0.9676) | 0.765 | 0.684 | 49 |
| all | 3 | 2,226,434 | 0.9767 | 0.9268 (0.9110-0.9425) | 0.779 | 0.615 | 47 |
| auto | 4 | 1,683,906 | 0.9720 | 0.9208 (0.8974-0.9442) | 0.798 | 0.662 | 87 |
| llrd | 5 | 2,226,434 | 0.9635 | 0.9078 (0.8994-0.9162) | 0.722 | 0.0224 | 48 |
| scratch | 6 | 2,226,434 | 0.9614 | 0.8924 (0.8771-0.9078) | 0.703 | 8.47e-05 | 73 |
| lpft | 7 | 2,226,434 | 0.9562 | 0.9055 (0.8383-0.9726) | 0.756 | 0.0245 | 55 |
| head | 8 | 2,562 | 0.9450 | 0.8951 (0.8665-0.9236) | 0.716 | 2.91e-05 | 15 |
| gradual | 9 | 2,226,434 | 0.9442 | 0.8705 (0.8463-0.8947) | 0.614 | 1.93e-11 | 130 |

The report's verdict: best on validation `from:block4`, +0.030 test AUC over scratch
(p = 8.5e-5); the shallowest not significantly worse is `auto` (from:block6). The
middle depth, deep tuning, L2-SP and `auto` are indistinguishable here (intervals
overlap, p > 0.6); LLRD at 0.75 per block and LP-FT are a little worse, the head
alone and gradual unfreezing clearly so, scratch worst but for gradual.

`auto` chose from:block6 on every seed: it tried head (val AUC 0.9406-0.9488),
from:block6 (0.9719-0.9723) and from:block3 (0.9644-0.9716: no gain, so it stopped),
12 epochs against the 20 of a sweep over its four depths, 71 % less trained-block
compute. LP-FT's seed 0 stopped at its probe (0.9199): unfreezing everything dipped to
0.75 and patience 2 ended it, while seeds 1-2 recovered to 0.97-0.98.

`gradual` (head, then 3 blocks more per epoch, fastai's rates from lr / 100) is last
among the fine-tuned schemes: its deep phases get 1-2 epochs each at low rates. It
used to collapse (seed 0: val AUC 0.9251 at from:block6, 0.7546 at the end, test
0.8602): the stem, unfrozen for the last 2 epochs only, kept ImageNet's BatchNorm
running averages (variances up to 1,585x the X-rays'), and after 30 steps at momentum
0.1 some channels' variance was still 84x too large, so evaluation normalised unlike
training. Warmup plus cosine in each unfreezing phase did not help (0.7925 at the end);
re-estimating the statistics of the blocks a phase unfreezes (`bn_policy.restart_unfrozen`,
now done for every phased scheme under `train_all`) does: 0.9462, test 0.8690.
"""
from tuning.config import defaults


def get_config():
  config = defaults()
  config.dataset = "pneumoniamnist"
  config.arch = "mobilenet_v2"
  config.weights = "mobilenet_v2-b0353104.pth"
  config.weights_format = "torchvision"
  config.schemes = ("scratch", "head", "from:block4", "all", "llrd", "l2sp", "lpft", "gradual",
                    "auto")
  config.seeds = (0, 1, 2)
  config.image_size = 64
  config.train_fraction = 0.1
  config.epochs = 5
  config.patience = 2
  config.lpft_probe_epochs = 2
  config.gradual_step = 3
  config.gradual_epochs = 1
  config.auto_step = 3
  config.progress = False
  return config
