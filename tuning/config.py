"""Experiment configuration: the defaults every config builds on, and validation.

Configs are `ml_collections.ConfigDict`s (one file per experiment in `configs/`,
big_vision style). `defaults()` is also the schema: `validate` rejects any key it
does not know, suggesting the closest one, and any value of the wrong type or range.
"""
from __future__ import annotations

import difflib

import jax
import ml_collections

from tuning import depth, models


def defaults() -> ml_collections.ConfigDict:
  c = ml_collections.ConfigDict()
  c.dataset = "pneumoniamnist"  # a MedMNIST 2D file NAME.npz in the data dir
  c.data_dir = ""  # "" -> $TUNING_DATA_DIR, then ~/.cache/tuning/data
  c.arch = "mobilenet_v2"
  c.weights = "mobilenet_v2-b0353104.pth"  # path or file name in the weights dir; "" = none
  c.weights_dir = ""  # "" -> $TUNING_WEIGHTS_DIR, then ~/.cache/tuning/weights
  c.weights_format = "torchvision"  # or "tflite"
  c.pretrained = ""  # a `tuning convert` output dir; if set, used instead of `weights`
  c.scheme = "all"  # what `tuning train` runs; see tuning/depth.py
  c.schemes = ("scratch", "head", "from:block6", "from:block4", "all")  # what `tuning sweep` runs
  c.train_fraction = 1.0  # stratified subset of the training split
  c.train_fractions = ()  # what `tuning sweep` runs; () = (train_fraction,)
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
  c.progress = True  # progress bars
  return c


_CHECKS = {
    "train_fraction": (lambda v: 0 < v <= 1, "in (0, 1]"),
    "train_fractions": (lambda v: all(isinstance(f, (int, float)) and 0 < f <= 1 for f in v),
                        "a tuple of fractions in (0, 1]"),
    "seeds": (lambda v: all(isinstance(x, int) and not isinstance(x, bool) for x in v),
              "a tuple of integers"),
    "image_size": (lambda v: v >= 32, ">= 32 (the networks downsample 32x)"),
    "batch_size": (lambda v: v >= 1, ">= 1"),
    "epochs": (lambda v: v >= 1, ">= 1"),
    "patience": (lambda v: v >= 1, ">= 1"),
    "lr": (lambda v: v > 0, "> 0"),
    "head_lr_mult": (lambda v: v > 0, "> 0"),
    "scratch_lr": (lambda v: v > 0, "> 0"),
    "momentum": (lambda v: 0 <= v < 1, "in [0, 1)"),
    "lr_decay_per_epoch": (lambda v: 0 < v <= 1, "in (0, 1]"),
}


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
  if "arch" not in bad and config.arch not in models.ARCHITECTURES:
    problems.append(f"config.arch = {config.arch!r}: expected one of {sorted(models.ARCHITECTURES)}")
  elif "arch" not in bad:
    blocks = type(models.create(config.arch, 1)).block_names
    named = [] if "scheme" in bad else [("scheme", config.scheme)]
    if "schemes" not in bad:
      named += [("schemes", s) for s in config.schemes]
    for field, scheme in named:
      try:
        depth.parse_scheme(scheme, blocks)
      except ValueError as e:
        problems.append(f"config.{field}: {e}")
  if "batch_size" not in bad and config.batch_size % jax.device_count():
    problems.append(f"config.batch_size = {config.batch_size}: must be a multiple of the "
                    f"{jax.device_count()} devices the batch is sharded over")
  if problems:
    raise ValueError("invalid config:\n  " + "\n  ".join(problems))
