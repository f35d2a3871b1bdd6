"""One entry point over the data sources, and the split operations they share.

`config.dataset` names a source: `NAME` (a MedMNIST file `NAME.npz` in the data
dir), `folder:PATH` (a directory of images per class, `tuning.datasets.folder`)
or `tfds:NAME` (a prepared tensorflow-datasets builder read by random access,
`tuning.datasets.tfds_source`). Every source gives the same `Dataset`, so
training code never asks where the images came from. `detection:PATH.npz` and
`segmentation:PATH.npz` (`tuning.datasets.detection`, `.segmentation`) are
images a user brings with lesions or boundaries, given as patches to classify
in a `PatchDataset`, which also scores the test images as its task does.
"""
from __future__ import annotations

import dataclasses
import os
import pathlib
from typing import Any, Callable, Sequence

import ml_collections
import numpy as np

from tuning.datasets import medmnist

KINDS = ("medmnist", "folder", "tfds", "detection", "segmentation")


def parse(dataset: str) -> tuple[str, str]:
  """`(kind, argument)` of a `config.dataset` string; ValueError names a bad one."""
  prefix, colon, argument = dataset.partition(":")
  if not colon:
    return "medmnist", dataset
  if prefix not in KINDS[1:] or not argument:
    raise ValueError(
        f"dataset {dataset!r}: expected NAME (a MedMNIST file), detection:PATH.npz, "
        "segmentation:PATH.npz, folder:PATH or tfds:NAME")
  return prefix, argument


def load(
    dataset: str,
    data_dir: str | os.PathLike | None = None,
    *,
    load_size: int = 0,
    split_fractions: Sequence[float] = (0.7, 0.1, 0.2),
    split_seed: int = 0,
    download: bool = True,
    **protocol: Any,
) -> medmnist.Dataset:
  """The dataset `dataset` names (see the module docstring).

  `data_dir` is where MedMNIST files live (falling back as in
  `medmnist.data_dir`) and where tfds builders were prepared (tfds's own default
  when empty); folder paths are absolute or relative to the working directory.
  `load_size` resizes folder and tfds images to that square when read (0 keeps
  the stored size, which must then be one for all). Splits a source lacks are
  carved from its training split by `complete_splits(split_fractions, split_seed)`.
  `protocol`: the patch sources' keyword arguments (`detection.load`,
  `segmentation.load`); `from_config` gives a run's.
  """
  kind, argument = parse(dataset)
  # Imported here: both import this module's split helpers, and tfds costs a
  # second to import that MedMNIST runs need not pay.
  if kind == "folder":
    from tuning.datasets import folder  # pylint: disable=import-outside-toplevel
    return folder.load(argument, load_size=load_size, split_fractions=split_fractions,
                       split_seed=split_seed)
  if kind == "tfds":
    from tuning.datasets import tfds_source  # pylint: disable=import-outside-toplevel
    return tfds_source.load(argument, data_dir or None, load_size=load_size,
                            split_fractions=split_fractions, split_seed=split_seed)
  if kind == "detection":
    from tuning.datasets import detection  # pylint: disable=import-outside-toplevel
    return detection.load(argument, split_fractions=split_fractions, split_seed=split_seed,
                          **protocol)
  if kind == "segmentation":
    from tuning.datasets import segmentation  # pylint: disable=import-outside-toplevel
    return segmentation.load(argument, split_fractions=split_fractions, split_seed=split_seed,
                             **protocol)
  return medmnist.load(argument, medmnist.data_dir(data_dir), download=download)


def from_config(config: ml_collections.ConfigDict) -> medmnist.Dataset:
  """A run's dataset: `load` with the config's settings, and for patch sources its protocol."""
  kind, _ = parse(config.dataset)
  protocol = {
      "detection": dict(patch_size=config.patch_size, scales=config.detection_scales,
                        shifts=config.detection_shifts, flips=config.detection_flips,
                        fp_rates=config.froc_fp_rates),
      "segmentation": dict(patch_size=config.patch_size, smooth=config.boundary_smooth),
  }.get(kind, {})
  return load(config.dataset, config.data_dir, load_size=config.load_size,
              split_fractions=config.split_fractions, split_seed=config.split_seed, **protocol)


def complete_splits(
    splits: dict[str, medmnist.Split],
    split_fractions: Sequence[float],
    seed: int,
    where: str,
) -> dict[str, medmnist.Split]:
  """`splits` with the missing ones of train/val/test carved out of `train`.

  The training split is shared between itself and the missing ones in
  proportion to their `split_fractions` (train, val, test), per class, so a
  source with only `train` gets a stratified three-way split and one with
  `train` and `test` a stratified validation split. `where` names the source
  in errors.
  """
  if "train" not in splits:
    raise ValueError(f"{where}: has no training split (found {sorted(splits) or 'none'})")
  names = ["train"] + [s for s in medmnist.SPLITS if s not in splits]
  if len(names) == 1:
    return dict(splits)
  fractions = [split_fractions[medmnist.SPLITS.index(s)] for s in names]
  parts = stratified_split(splits["train"], fractions, seed, where)
  return {**splits, **dict(zip(names, parts))}


def stratified_split(
    split: medmnist.Split, fractions: Sequence[float], seed: int, where: str
) -> list[medmnist.Split]:
  """`split` divided per stratum in proportion to `fractions` (normalised).

  The strata are the classes, or for multi-label data each image's rarest
  positive label (`medmnist.strata`). Every part after the first gets at least
  one image of each, so no validation or test split lacks a class (or the
  rarest labels' positives) its AUC needs; the first part gets the rest and must
  keep one too. Rows keep their original order within a part.
  """
  fractions = np.asarray(fractions, float) / np.sum(fractions)
  rng = np.random.default_rng(seed)
  parts = [[] for _ in fractions]
  groups = medmnist.strata(split.labels)
  for c in np.unique(groups):
    members = rng.permutation(np.flatnonzero(groups == c))
    rest = [max(1, round(f * len(members))) for f in fractions[1:]]
    if len(members) - sum(rest) < 1:
      what = (f"class {c}" if not split.multi_label else
              f"the stratum of rarest positive label {c}" if c < split.labels.shape[1] else
              "the stratum of images without positive labels")
      raise ValueError(
          f"{where}: {what} has {len(members)} images, too few to split into "
          f"{len(fractions)} parts with one image each")
    counts = [len(members) - sum(rest)] + rest
    for part, chunk in zip(parts, np.split(members, np.cumsum(counts)[:-1])):
      part.append(chunk)
  return [take(split, np.sort(np.concatenate(part))) for part in parts]


def balance(split: medmnist.Split, seed: int) -> medmnist.Split:
  """Every class down-sampled at random to the size of the smallest one.

  Tajbakhsh et al. 2016 down-sample the negatives until the classes balance;
  this is that rule for any number of classes. Rows keep their order.
  Multi-label data is refused: an image counts for several labels at once, so
  no down-sampling of images balances them all.
  """
  if split.multi_label:
    raise ValueError(
        f"config.balance down-samples every class to the smallest, but the labels are "
        f"multi-label {split.labels.shape} (each image any subset of labels), which no "
        "down-sampling of images balances; set config.balance=False")
  rng = np.random.default_rng(seed)
  classes, counts = np.unique(split.labels, return_counts=True)
  keep = [rng.permutation(np.flatnonzero(split.labels == c))[:counts.min()] for c in classes]
  return take(split, np.sort(np.concatenate(keep)))


def take(split: medmnist.Split, index: np.ndarray) -> medmnist.Split:
  """Rows `index` of `split`; lazily read images stay lazy (their `take` is a view)."""
  return medmnist.Split(images=split.images.take(index, axis=0), labels=split.labels[index])


# Patch sources: images a user brings for detection or segmentation
# (tuning/datasets/detection.py, segmentation.py), trained on as patches.

Predict = Callable[[np.ndarray], np.ndarray]


@dataclasses.dataclass(frozen=True, eq=False)
class PatchDataset(medmnist.Dataset):
  """Splits of uint8 patches and their classes, and how the task scores the test images.

  `evaluate(probs, predict)` gets the tested model's class probabilities of the
  test split's patches, in split order, and `predict`, which maps uint8
  `(N, patch_size, patch_size, 3)` patches to `(N, C)` probabilities of the same
  model (for patches the split does not hold: segmentation's dense maps). It
  returns the result row's task metrics and arrays (curves, per-image errors)
  to save beside the test predictions.
  """
  evaluate: Callable[[np.ndarray, Predict], tuple[dict[str, Any], dict[str, np.ndarray]]] = (
      dataclasses.field(kw_only=True))


def image_splits(path: pathlib.Path, names: np.ndarray | None, strata: np.ndarray,
                 split_fractions: Sequence[float], seed: int) -> dict[str, np.ndarray]:
  """Each split's image rows, so that no image gives patches to two splits.

  `names`: the file's `split` array, (N,) strings of `medmnist.SPLITS`, or None;
  the splits it lacks (all, without it) are carved from the training images by
  `complete_splits`, stratified by `strata` (N,) integers.
  """
  if names is None:
    given = {"train": np.arange(len(strata))}
  else:
    if names.dtype.kind == "S":
      names = names.astype(str)
    if names.shape != strata.shape or names.dtype.kind != "U" or not np.isin(
        names, medmnist.SPLITS).all():
      raise ValueError(f"{path}: 'split' has shape {names.shape} and dtype {names.dtype}, "
                       f"expected {strata.shape} strings in {medmnist.SPLITS}")
    given = {s: np.flatnonzero(names == s) for s in medmnist.SPLITS if (names == s).any()}
  # Splits of row numbers: the carving helpers only move rows.
  rows = {s: medmnist.Split(images=index, labels=strata[index]) for s, index in given.items()}
  return {s: part.images for s, part in complete_splits(
      rows, split_fractions, seed, str(path)).items()}
