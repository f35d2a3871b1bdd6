"""Pretrained weights in: locate the file, convert it, transplant it under a fresh head.

Kept apart from checkpoint resume on purpose: orbax can restore partially and
silently when trees differ (orbax#2972), while an import must check every key
and shape and fail loudly.
"""
from __future__ import annotations

import os
import pathlib
from typing import Sequence

import flax.linen as nn
import jax
import numpy as np

from tuning import convert
from tuning.convert import converted
from tuning.preprocess import Preprocess

# Each has a `convert.from_<format>`.
WEIGHTS_FORMATS = ("torchvision", "tflite", "numpy_pickle", "timm", "keras")


def weights_dir(configured: str | None = None) -> pathlib.Path:
  """`configured`, else $TUNING_WEIGHTS_DIR, else the user cache."""
  if configured:
    return pathlib.Path(configured).expanduser()
  if os.environ.get("TUNING_WEIGHTS_DIR"):
    return pathlib.Path(os.environ["TUNING_WEIGHTS_DIR"]).expanduser()
  cache = os.environ.get("XDG_CACHE_HOME") or pathlib.Path.home() / ".cache"
  return pathlib.Path(cache) / "tuning" / "weights"


def resolve(weights: str, configured_dir: str | None = None, download: bool = True) -> pathlib.Path:
  """A weights file: an existing path, or a file name in the weights dir.

  A missing standard torchvision or Keras ImageNet file is downloaded into the weights dir.
  """
  path = pathlib.Path(weights).expanduser()
  if path.is_file():
    return path
  candidate = weights_dir(configured_dir) / path.name
  if candidate.is_file():
    return candidate
  # torchvision's and Keras's files have unique names (timm's are all model.safetensors).
  urls = (*convert.URLS.values(), *convert.KERAS_URLS.values())
  url = next((u for u in urls if u.rsplit("/", 1)[-1] == path.name), None)
  if url and download:
    try:
      return convert.fetch(url, candidate.parent)
    except OSError as e:  # URLError, HTTPError, timeouts: name the file, not just the socket
      raise FileNotFoundError(
          f"weights file {weights!r} not found at {candidate} and downloading it from {url} "
          f"failed ({e}); put the file there, or set config.weights to a path, or "
          "config.weights_dir / $TUNING_WEIGHTS_DIR to its folder") from e
  raise FileNotFoundError(
      f"weights file {weights!r} not found (looked at {path.absolute()} and {candidate}); set "
      "config.weights to a path, or config.weights_dir / $TUNING_WEIGHTS_DIR to its folder")


def load(arch: str, path: os.PathLike, weights_format: str) -> tuple[nn.Module, dict, Preprocess]:
  if weights_format not in WEIGHTS_FORMATS:
    raise ValueError(f"unknown weights_format {weights_format!r}; expected one of {WEIGHTS_FORMATS}")
  return getattr(convert, f"from_{weights_format}")(arch, path)


def from_config(config) -> tuple[nn.Module, dict, Preprocess] | None:
  """The weights a config starts from, or None.

  `config.pretrained` (a `tuning convert` output directory, converted once) comes
  before `config.weights` (a source file, converted on every run).
  """
  if config.pretrained:
    return converted.load(pathlib.Path(config.pretrained).expanduser(), arch=config.arch)
  if config.weights:
    return load(config.arch, resolve(config.weights, config.weights_dir), config.weights_format)
  return None


def source(config) -> str:
  """What `from_config` loads, as results record it."""
  return config.pretrained or config.weights


def transplant(pretrained: dict, fresh: dict, reinit: Sequence[str] = ("head",)) -> dict:
  """`fresh` variables with every block but `reinit` taken from `pretrained`.

  Both trees must agree exactly outside `reinit`; every difference is listed.
  """
  problems = []
  for collection, blocks in fresh.items():
    loaded = pretrained.get(collection, {})
    for block in sorted(set(blocks) | set(loaded)):
      if block in reinit:
        continue
      if block not in blocks or block not in loaded:
        problems.append(f"{collection}/{block}: only in the {'pretrained' if block in loaded else 'new'} model")
        continue
      want = dict(jax.tree_util.tree_flatten_with_path(blocks[block])[0])
      have = dict(jax.tree_util.tree_flatten_with_path(loaded[block])[0])
      for key in sorted(set(want) | set(have), key=str):
        leaf = jax.tree_util.keystr(key, simple=True, separator="/")
        name = f"{collection}/{block}/{leaf}".rstrip("/")
        if key not in have:
          problems.append(f"{name}: missing from the pretrained weights")
        elif key not in want:
          problems.append(f"{name}: unexpected in the pretrained weights")
        elif np.shape(have[key]) != np.shape(want[key]):
          problems.append(f"{name}: pretrained shape {np.shape(have[key])}, model expects {np.shape(want[key])}")
  if problems:
    raise ValueError("pretrained weights do not fit the model:\n  " + "\n  ".join(problems))
  return {collection: {block: (sub if block in reinit else pretrained[collection][block])
                       for block, sub in blocks.items()}
          for collection, blocks in fresh.items()}
