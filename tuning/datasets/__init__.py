"""One entry point over the data sources, and the split operations they share.

`config.dataset` names a source: `NAME` (a MedMNIST file `NAME.npz` in the data
dir), `folder:PATH` (a directory of images per class, `tuning.datasets.folder`)
or `tfds:NAME` (a prepared tensorflow-datasets builder read by random access,
`tuning.datasets.tfds_source`). Every source gives the same `Dataset`, so
training code never asks where the images came from.
"""
from __future__ import annotations

import os
from typing import Sequence

import numpy as np

from tuning.datasets import medmnist

KINDS = ("medmnist", "folder", "tfds")


def parse(dataset: str) -> tuple[str, str]:
  """`(kind, argument)` of a `config.dataset` string; ValueError names a bad one."""
  prefix, colon, argument = dataset.partition(":")
  if not colon:
    return "medmnist", dataset
  if prefix not in KINDS[1:] or not argument:
    raise ValueError(
        f"dataset {dataset!r}: expected NAME (a MedMNIST file), folder:PATH or tfds:NAME")
  return prefix, argument


def load(
    dataset: str,
    data_dir: str | os.PathLike | None = None,
    *,
    load_size: int = 0,
    split_fractions: Sequence[float] = (0.7, 0.1, 0.2),
    split_seed: int = 0,
    download: bool = True,
) -> medmnist.Dataset:
  """The dataset `dataset` names (see the module docstring).

  `data_dir` is where MedMNIST files live (falling back as in
  `medmnist.data_dir`) and where tfds builders were prepared (tfds's own default
  when empty); folder paths are absolute or relative to the working directory.
  `load_size` resizes folder and tfds images to that square when read (0 keeps
  the stored size, which must then be one for all). Splits a source lacks are
  carved from its training split by `complete_splits(split_fractions, split_seed)`.
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
  return medmnist.load(argument, medmnist.data_dir(data_dir), download=download)


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
  """`split` divided per class in proportion to `fractions` (normalised).

  Every part after the first gets at least one image of each class, so no
  validation or test split lacks a class its AUC needs; the first part gets the
  rest and must keep one too. Rows keep their original order within a part.
  """
  fractions = np.asarray(fractions, float) / np.sum(fractions)
  rng = np.random.default_rng(seed)
  parts = [[] for _ in fractions]
  for c in np.unique(split.labels):
    members = rng.permutation(np.flatnonzero(split.labels == c))
    rest = [max(1, round(f * len(members))) for f in fractions[1:]]
    if len(members) - sum(rest) < 1:
      raise ValueError(
          f"{where}: class {c} has {len(members)} images, too few to split into "
          f"{len(fractions)} parts with one image each")
    counts = [len(members) - sum(rest)] + rest
    for part, chunk in zip(parts, np.split(members, np.cumsum(counts)[:-1])):
      part.append(chunk)
  return [take(split, np.sort(np.concatenate(part))) for part in parts]


def balance(split: medmnist.Split, seed: int) -> medmnist.Split:
  """Every class down-sampled at random to the size of the smallest one.

  Tajbakhsh et al. 2016 down-sample the negatives until the classes balance;
  this is that rule for any number of classes. Rows keep their order.
  """
  rng = np.random.default_rng(seed)
  classes, counts = np.unique(split.labels, return_counts=True)
  keep = [rng.permutation(np.flatnonzero(split.labels == c))[:counts.min()] for c in classes]
  return take(split, np.sort(np.concatenate(keep)))


def take(split: medmnist.Split, index: np.ndarray) -> medmnist.Split:
  """Rows `index` of `split`; lazily read images stay lazy (their `take` is a view)."""
  return medmnist.Split(images=split.images.take(index, axis=0), labels=split.labels[index])
