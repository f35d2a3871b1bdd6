"""Experiment configuration: the defaults every config builds on, and validation.

Configs are `ml_collections.ConfigDict`s (one file per experiment in `configs/`,
big_vision style). `defaults()` is also the schema: `validate` rejects any key it
does not know, suggesting the closest one, and any value of the wrong type or range.
"""
from __future__ import annotations

import difflib

import jax
import ml_collections

from tuning import augment, bn_policy, datasets, depth, models, phases, pretrained, schedule


def defaults() -> ml_collections.ConfigDict:
  c = ml_collections.ConfigDict()
  # NAME: a MedMNIST 2D file NAME.npz in the data dir; folder:PATH: images in class
  # folders; tfds:NAME: a tfds builder prepared as array_record; detection:PATH.npz,
  # segmentation:PATH.npz: your images with lesions or boundaries (tuning/datasets/)
  c.dataset = "pneumoniamnist"
  c.data_dir = ""  # "" -> $TUNING_DATA_DIR, then ~/.cache/tuning/data (tfds: its own default)
  c.load_size = 0  # folder/tfds images resized to this square on load; 0 = as stored
  c.split_fractions = (0.7, 0.1, 0.2)  # train/val/test shares for splits a source lacks
  c.split_seed = 0  # fixed across runs, so every run is tested on the same images
  # detection:/segmentation: (tuning/datasets/detection.py, segmentation.py): the side of
  # the stored patches; segmentation windows in image pixels, detection crops resized to it
  c.patch_size = 32
  c.detection_scales = (1.0, 1.2, 1.5)  # candidate box x each, about its center (Tajbakhsh 2016)
  c.detection_shifts = (-0.1, 0.0, 0.1)  # box moved by each pair, fractions of its height/width
  c.detection_flips = True  # each crop in the 8 orientations of the square
  c.froc_fp_rates = (1.0,)  # FROC operating points, false positives per image: sensitivity there
  c.boundary_smooth = 1  # segmentation: odd median-filter width over each traced boundary; 1 = raw
  c.arch = "mobilenet_v2"
  c.weights = "mobilenet_v2-b0353104.pth"  # path or file name in the weights dir; "" = none
  c.weights_dir = ""  # "" -> $TUNING_WEIGHTS_DIR, then ~/.cache/tuning/weights
  c.weights_format = "torchvision"  # or "tflite"
  c.pretrained = ""  # a `tuning convert` output dir; if set, used instead of `weights`
  # what `tuning sweep` runs: ((arch, weights, weights_format), ...), each with the schemes
  # that name its blocks; () = the arch above
  c.archs = ()
  c.scheme = "all"  # what `tuning train` runs; see tuning/depth.py
  c.schemes = ("scratch", "head", "from:block6", "from:block4", "all")  # what `tuning sweep` runs
  c.train_fraction = 1.0  # stratified subset of the training split
  c.train_fractions = ()  # what `tuning sweep` runs; () = (train_fraction,)
  c.balance = False  # down-sample the training classes to the smallest (Tajbakhsh 2016)
  c.augment = ""  # comma list of tuning/augment.py OPS, e.g. "crop,hflip,rot90"; "" = none
  c.augment_copies = 0  # 0: augment each batch on the fly; k: k fixed copies per image
  c.seed = 0
  c.seeds = ()  # what `tuning sweep` runs; () = (seed,)
  c.image_size = 64
  c.batch_size = 32
  c.epochs = 10
  c.patience = 3  # epochs without a better validation AUC before stopping
  c.lr = 0.001  # tuned pretrained layers (Tajbakhsh 2016); the new head gets lr * head_lr_mult
  c.head_lr_mult = 10.0
  c.scratch_lr = 0.05  # every layer of a `scratch` run
  c.momentum = 0.9
  c.lr_decay_per_epoch = 0.95
  c.bias_lr_mult = 1.0  # Caffe's convention, Tajbakhsh 2016: 2.0
  c.weight_decay = 0.0  # decoupled, kernels only, never on frozen parameters
  c.layer_decay = 0.75  # scheme `llrd`: block b of H below the head learns at lr * decay**(H - b)
  c.l2sp_strength = 0.01  # scheme `l2sp`: strength / 2 * ||w - w_pretrained||^2
  # ((regex, value), ...) over names like "block4/unit0/expand/conv/kernel"; every parameter
  # must match exactly one rule. value: None (frozen), a multiplier, or a dict of `mult`,
  # `warmup_epochs`, `decay` (exponential, cosine, constant) and cosine's `end` (fraction of
  # the peak), each phase's rates shaped by it (tuning/schedule.py). () = no rules.
  c.schedule = ()
  # BatchNorm of the trained blocks (tuning/bn_policy.py): train_all, frozen_stats,
  # train_stats_frozen_affine or reestimate; frozen blocks' BatchNorm never trains.
  c.bn_policy = "train_all"
  # ((epochs, scheme or block index, lr_mult), ...): the run as phases (tuning/phases.py),
  # epochs summing to config.epochs; () = the scheme's own plan (one phase for most).
  c.phases = ()
  c.lpft_probe_epochs = 2  # scheme `lpft`: head-only epochs before every block trains
  c.gradual_step = 1  # scheme `gradual`: blocks unfrozen per phase, from the top down
  c.gradual_epochs = 1  # scheme `gradual`: epochs per phase; the last takes the rest
  c.gradual_spread = 100.0  # scheme `gradual`: lowest trained block at lr / spread (fastai)
  # scheme `gradual`: the rates' course in each phase that unfreezes blocks (schedule.Curve)
  c.gradual_warmup_epochs = 0.0
  c.gradual_decay = "exponential"
  c.auto_step = 1  # schemes `auto*`: blocks between the candidate depths, head down
  c.auto_min_gain = 0.0  # scheme `auto`: deeper only if val AUC gains more than this
  c.auto_alpha = 1.0  # scheme `auto`: < 1: and if DeLong's p < this (binary tasks)
  c.auto_budget = 1  # scheme `auto_halving`: epochs of the first round; doubles per round
  # Run the frozen blocks once per image, not once per epoch, where that gives the
  # same inputs to the trained blocks (tuning/feature_cache.py says when); False: never.
  c.cache_features = True
  c.progress = True  # progress bars
  return c


def _number(x) -> bool:
  return isinstance(x, (int, float)) and not isinstance(x, bool)


_CHECKS = {
    "train_fraction": (lambda v: 0 < v <= 1, "in (0, 1]"),
    "train_fractions": (lambda v: all(isinstance(f, (int, float)) and 0 < f <= 1 for f in v),
                        "a tuple of fractions in (0, 1]"),
    "seeds": (lambda v: all(isinstance(x, int) and not isinstance(x, bool) for x in v),
              "a tuple of integers"),
    "image_size": (lambda v: v >= 32, ">= 32 (the networks downsample 32x)"),
    "load_size": (lambda v: v >= 0, ">= 0 (0 keeps the stored size)"),
    "split_fractions": (lambda v: len(v) == 3 and all(
        isinstance(f, (int, float)) and not isinstance(f, bool) and f > 0 for f in v),
                        "three positive train/val/test proportions"),
    "augment_copies": (lambda v: v >= 0, ">= 0"),
    "batch_size": (lambda v: v >= 1, ">= 1"),
    "epochs": (lambda v: v >= 1, ">= 1"),
    "patience": (lambda v: v >= 1, ">= 1"),
    "lr": (lambda v: v > 0, "> 0"),
    "head_lr_mult": (lambda v: v > 0, "> 0"),
    "scratch_lr": (lambda v: v > 0, "> 0"),
    "momentum": (lambda v: 0 <= v < 1, "in [0, 1)"),
    "lr_decay_per_epoch": (lambda v: 0 < v <= 1, "in (0, 1]"),
    "bias_lr_mult": (lambda v: v > 0, "> 0"),
    "weight_decay": (lambda v: v >= 0, ">= 0"),
    "layer_decay": (lambda v: 0 < v <= 1, "in (0, 1]"),
    "l2sp_strength": (lambda v: v >= 0, ">= 0"),
    "phases": (lambda v: all(isinstance(p, tuple) and len(p) == 3 for p in v),
               "a tuple of (epochs, scheme or block index, lr_mult) triples"),
    "lpft_probe_epochs": (lambda v: v >= 1, ">= 1"),
    "gradual_step": (lambda v: v >= 1, ">= 1"),
    "gradual_epochs": (lambda v: v >= 1, ">= 1"),
    "gradual_spread": (lambda v: v >= 1, ">= 1"),
    "gradual_warmup_epochs": (lambda v: v >= 0, ">= 0"),
    "gradual_decay": (lambda v: v in schedule.DECAYS, f"one of {', '.join(schedule.DECAYS)}"),
    "auto_step": (lambda v: v >= 1, ">= 1"),
    "auto_min_gain": (lambda v: v >= 0, ">= 0"),
    "auto_alpha": (lambda v: 0 < v <= 1, "in (0, 1]"),
    "auto_budget": (lambda v: v >= 1, ">= 1"),
    "patch_size": (lambda v: v >= 1, ">= 1"),
    "detection_scales": (lambda v: len(v) > 0 and all(_number(x) and x > 0 for x in v),
                         "a non-empty tuple of positive scale factors"),
    "detection_shifts": (lambda v: len(v) > 0 and all(_number(x) and -1 < x < 1 for x in v),
                         "a non-empty tuple of fractions of the box in (-1, 1)"),
    "froc_fp_rates": (lambda v: len(v) > 0 and all(_number(x) and x >= 0 for x in v),
                      "a non-empty tuple of false-positive rates per image >= 0"),
    "boundary_smooth": (lambda v: v >= 1 and v % 2 == 1, "an odd number of columns >= 1"),
    "bn_policy": (lambda v: v in bn_policy.POLICIES, f"one of {', '.join(bn_policy.POLICIES)}"),
}


# What a run's plan of phases reads (tuning/phases.py), checked only when each is valid.
_PLAN_KEYS = {"phases", "epochs", "lpft_probe_epochs", "gradual_step", "gradual_epochs",
              "gradual_spread", "gradual_warmup_epochs", "gradual_decay", "auto_step", "schedule"}


def _arch_grid_problems(archs, schemes) -> list[str]:
  """What is wrong with `config.archs` and with the schemes it is swept over."""
  problems, blocks = [], []
  for entry in archs:
    if not (isinstance(entry, tuple) and len(entry) == 3 and all(isinstance(x, str) for x in entry)):
      problems.append(f"config.archs entry {entry!r}: expected (arch, weights, weights_format) "
                      "strings, weights '' for none")
    elif entry[0] not in models.ARCHITECTURES:
      problems.append(f"config.archs entry {entry!r}: unknown arch {entry[0]!r}; expected one "
                      f"of {sorted(models.ARCHITECTURES)}")
    elif entry[2] not in pretrained.WEIGHTS_FORMATS:
      problems.append(f"config.archs entry {entry!r}: unknown weights_format {entry[2]!r}; "
                      f"expected one of {', '.join(pretrained.WEIGHTS_FORMATS)}")
    else:
      blocks.append(type(models.create(entry[0], 1)).block_names)
  if problems:
    return problems
  for scheme in schemes:
    if not any(applies(scheme, b) for b in blocks):
      problems.append(f"config.schemes: {scheme!r} applies to none of config.archs "
                      f"({', '.join(entry[0] for entry in archs)})")
  return problems


def applies(scheme: str, block_names: tuple[str, ...]) -> bool:
  """Whether `scheme` names a depth of a model with these blocks."""
  try:
    depth.parse_scheme(scheme, block_names)
  except ValueError:
    return False
  return True


def validate(config: ml_collections.ConfigDict) -> None:
  """Raises ValueError naming every bad field, what it holds and what is expected."""
  reference = defaults()
  problems, bad = [], set()  # `bad`: fields the cross-field checks below must not read
  for key in config:
    if key not in reference:
      close = difflib.get_close_matches(key, list(reference), n=1)
      problems.append(f"unknown config key {key!r}" + (f" (did you mean {close[0]!r}?)" if close else ""))
      continue
    want = type(reference[key])
    value = config[key]
    if want is float and isinstance(value, int) and not isinstance(value, bool):
      value = float(value)
    if not isinstance(value, want) or (want is int and isinstance(value, bool)):
      problems.append(f"config.{key} = {value!r}: expected {want.__name__}")
      bad.add(key)
    elif key in _CHECKS and not _CHECKS[key][0](value):
      problems.append(f"config.{key} = {value!r}: expected {_CHECKS[key][1]}")
      bad.add(key)
  if "schedule" not in bad:
    try:
      schedule.parse_rules(config.schedule)
    except ValueError as e:  # its message starts "schedule rule ..."
      problems.append(f"config.{e}")
      bad.add("schedule")
  if "arch" not in bad and config.arch not in models.ARCHITECTURES:
    problems.append(f"config.arch = {config.arch!r}: expected one of {sorted(models.ARCHITECTURES)}")
  elif "arch" not in bad:
    architecture = type(models.create(config.arch, 1))
    blocks = architecture.block_names
    min_size = getattr(architecture, "min_size", 32)
    if "image_size" not in bad and config.image_size < min_size:
      problems.append(f"config.image_size = {config.image_size}: {config.arch} needs at least "
                      f"{min_size} px")
    named = [] if "scheme" in bad else [("scheme", config.scheme)]
    if "schemes" not in bad and not config.archs:  # else checked per arch below
      named += [("schemes", s) for s in config.schemes]
    failures = {}  # one line per distinct problem, naming each field it came from
    for field, scheme in named:
      try:
        depth.parse_scheme(scheme, blocks)
        if not bad & _PLAN_KEYS:
          phases.plan(config, scheme, blocks)
      except ValueError as e:
        failures.setdefault(str(e), []).append(f"config.{field}")
    problems += [f"{' and '.join(dict.fromkeys(fields))}: {message}"
                 for message, fields in failures.items()]
  if "archs" not in bad and config.archs:
    problems += _arch_grid_problems(config.archs, () if "schemes" in bad else config.schemes)
  if "batch_size" not in bad and config.batch_size % jax.device_count():
    problems.append(f"config.batch_size = {config.batch_size}: must be a multiple of the "
                    f"{jax.device_count()} devices the batch is sharded over")
  if "dataset" not in bad:
    try:
      datasets.parse(config.dataset)
    except ValueError as e:
      problems.append(f"config.dataset: {e}")
  if "augment" not in bad:
    try:
      ops = augment.parse(config.augment)
    except ValueError as e:
      problems.append(f"config.augment: {e}")
    else:
      if not ops and "augment_copies" not in bad and config.augment_copies:
        problems.append(f"config.augment_copies = {config.augment_copies}: needs "
                        "config.augment to name the augmentations to pre-generate")
  if problems:
    raise ValueError("invalid config:\n  " + "\n  ".join(problems))
