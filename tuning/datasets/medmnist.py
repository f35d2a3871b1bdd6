"""MedMNIST v2 `.npz` files: locating, downloading, validating, subsampling.

Each file holds `{train,val,test}_{images,labels}`; images are uint8 `(N, H, W)`
(grayscale) or `(N, H, W, 3)` (RGB) and labels are integers: `(N, 1)` class
indices, or `(N, L)` 0/1 rows in multi-label files (ChestMNIST: 14 findings).
Loading normalises every split to RGB images and int32 labels, `(N,)` or
`(N, L)`, so that the rest of the library deals with one layout per task.
"""
from __future__ import annotations

import dataclasses
import hashlib
import os
import pathlib
import re
import zipfile
from typing import Sequence

import numpy as np

from tuning import download

URL = "https://zenodo.org/records/10519652/files/{name}.npz?download=1"
SPLITS = ("train", "val", "test")


@dataclasses.dataclass(frozen=True, eq=False)
class Split:
  """One split. `images`: uint8 `(N, H, W, 3)`; `labels`: int32 `(N,)` class
  indices, or `(N, L)` 0/1 rows for multi-label data (`multi_label`).

  `images` is an array, or for data too large for memory an object that decodes
  rows when indexed (`tfds_source.Images`: `len`, `shape`, `[index]`, and
  `take(index, axis=0)` returning a view); labels are always in memory.
  `eq=False`: comparing arrays field by field has no single truth value.
  """
  images: np.ndarray
  labels: np.ndarray

  @property
  def multi_label(self) -> bool:
    """Read off the labels' shape, so it cannot disagree with them."""
    return self.labels.ndim == 2


@dataclasses.dataclass(frozen=True, eq=False)
class Dataset:
  """A loaded MedMNIST file; `path` and `sha256` record exactly which one.

  `num_classes` is the model's number of outputs: the classes, or the labels of
  multi-label data.
  """
  name: str
  num_classes: int
  train: Split
  val: Split
  test: Split
  path: str
  sha256: str


def data_dir(configured: str | os.PathLike | None = None) -> pathlib.Path:
  """Where datasets live: `configured`, else `$TUNING_DATA_DIR`, else the cache."""
  if configured:
    return pathlib.Path(configured).expanduser()
  if os.environ.get("TUNING_DATA_DIR"):
    return pathlib.Path(os.environ["TUNING_DATA_DIR"]).expanduser()
  cache = os.environ.get("XDG_CACHE_HOME") or pathlib.Path.home() / ".cache"
  return pathlib.Path(cache).expanduser() / "tuning" / "data"


_data_dir = data_dir  # `load` and `available` take a `data_dir` argument.


def available(
    data_dir: str | os.PathLike,  # pylint: disable=redefined-outer-name
) -> list[str]:
  """Names of the datasets present in `data_dir`, for error messages."""
  directory = pathlib.Path(data_dir)
  if not directory.is_dir():
    return []
  return sorted(p.stem for p in directory.glob("*.npz"))


def load(
    name: str,
    data_dir: str | os.PathLike | None = None,  # pylint: disable=redefined-outer-name
    download: bool = True,
) -> Dataset:
  """Reads and validates `<data_dir>/<name>.npz`, downloading it if missing.

  `data_dir` falls back as in `data_dir()`. Raises `ValueError` naming the file
  and key when the contents do not follow the MedMNIST layout.
  """
  if not re.fullmatch(r"[A-Za-z0-9_]+", name):
    raise ValueError(
        f"dataset name {name!r} must be a MedMNIST file stem such as "
        "'pneumoniamnist' (letters, digits and '_' only)")
  directory = _data_dir(data_dir)
  path = directory / f"{name}.npz"
  if not path.is_file():
    found = f"found in {directory}: {', '.join(available(directory)) or 'nothing'}"
    if not download:
      raise FileNotFoundError(
          f"unknown dataset {name!r}: {path} does not exist and download is off; {found}")
    _download(URL.format(name=name), path, found)
  arrays = read_npz(path, [f"{s}_{kind}" for s in SPLITS for kind in ("images", "labels")],
                    corrupt_hint="; the file is truncated or corrupt, delete it to download it "
                                 "again")
  splits = {s: _split(path, s, arrays) for s in SPLITS}
  for s in SPLITS[1:]:  # the model has one set of outputs for all of them
    if splits[s].labels.shape[1:] != splits["train"].labels.shape[1:]:
      raise ValueError(
          f"{path}: {s + '_labels'!r} has shape {arrays[s + '_labels'].shape} but "
          f"'train_labels' has {arrays['train_labels'].shape}; every split needs the same "
          "kind of labels (class indices, or the same number of multi-label columns)")
  if splits["train"].multi_label:
    num_classes = splits["train"].labels.shape[1]
  else:
    num_classes = int(max(split.labels.max() for split in splits.values())) + 1
  return Dataset(
      name=name, num_classes=num_classes, **splits, path=str(path),
      sha256=sha256(path))


def strata(labels: np.ndarray) -> np.ndarray:
  """`(N,)` groups to stratify by: the class, or for multi-label `(N, L)` rows the
  rarest label each image is positive for (by count in `labels`; L: none).

  Multi-label images cannot be split by class; grouping each under its rarest
  finding keeps the rare findings' positives in every stratified part, where
  grouping by whole label rows would make most groups singletons.
  """
  if labels.ndim == 1:
    return labels
  counts = np.count_nonzero(labels, axis=0)
  rarity = np.where(labels == 1, counts, len(labels) + 1)  # not positive: never the rarest
  return np.where(labels.any(axis=1), np.argmin(rarity, axis=1), labels.shape[1])


def subsample(split: Split, fraction: float, seed: int) -> Split:
  """A stratified random `fraction` of `split`, at least one example per stratum.

  The strata are the classes, or for multi-label data each image's rarest
  positive label (`strata`). Each is permuted once from `seed` and a prefix
  kept, so for one seed smaller fractions give subsets of larger ones
  (learning curves nest).
  """
  if not 0.0 < fraction <= 1.0:
    raise ValueError(f"subsample fraction must be in (0, 1], got {fraction}")
  if fraction == 1.0:
    return split
  rng = np.random.default_rng(seed)
  keep = []
  groups = strata(split.labels)
  for c in np.unique(groups):
    members = rng.permutation(np.flatnonzero(groups == c))
    keep.append(members[:max(1, round(fraction * len(members)))])
  index = np.sort(np.concatenate(keep))
  # `take`, not `[index]`: lazily read images return a view instead of decoding.
  return Split(images=split.images.take(index, axis=0), labels=split.labels[index])


def _download(url: str, path: pathlib.Path, found: str) -> None:
  try:
    download.download(url, path)
  except OSError as e:  # URLError, HTTPError and timeouts are OSErrors.
    raise RuntimeError(
        f"dataset file {path} does not exist and downloading it from {url} "
        f"failed ({e}); {found}. Put the .npz file there, or point TUNING_DATA_DIR or "
        "config.data_dir at a directory that has it") from e


def read_npz(path: pathlib.Path, required: Sequence[str] = (), *, corrupt_hint: str = ""
             ) -> dict[str, np.ndarray]:
  """All arrays of an .npz archive; errors name the file (and every missing key in `required`).

  `corrupt_hint` ends the message for an unreadable file (what the user can do about it).
  """
  if not path.is_file():
    raise FileNotFoundError(f"{path} does not exist")
  try:
    contents = np.load(path)
    if not isinstance(contents, np.lib.npyio.NpzFile):
      raise ValueError("it holds a single .npy array, expected an .npz archive")
    with contents:
      arrays = {key: contents[key] for key in contents.files}
  except (zipfile.BadZipFile, ValueError, EOFError, OSError) as e:
    raise ValueError(f"{path}: cannot read as an .npz archive ({e}){corrupt_hint}") from e
  missing = [key for key in required if key not in arrays]
  if missing:
    raise ValueError(f"{path}: missing key(s) {', '.join(map(repr, missing))}; found keys "
                     f"{sorted(arrays)}")
  return arrays


def rgb_images(path: pathlib.Path, images: np.ndarray, key: str) -> np.ndarray:
  """uint8 `(N, H, W, 3)` from a file's grayscale `(N, H, W)` or RGB `images` under `key`."""
  if images.dtype != np.uint8:
    raise ValueError(f"{path}: {key!r} has dtype {images.dtype}, expected uint8")
  if images.ndim == 3:
    images = np.repeat(images[..., None], 3, axis=-1)
  elif images.ndim != 4 or images.shape[-1] != 3:
    raise ValueError(f"{path}: {key!r} has shape {images.shape}, expected (N, H, W) "
                     "grayscale or (N, H, W, 3) RGB")
  return images


def _split(path: pathlib.Path, split: str, arrays: dict[str, np.ndarray]) -> Split:
  """Validates one split and converts it to RGB images and int32 labels, `(N,)` or
  `(N, L)` multi-label."""
  image_key, label_key = f"{split}_images", f"{split}_labels"
  images, labels = rgb_images(path, arrays[image_key], image_key), arrays[label_key]
  if not np.issubdtype(labels.dtype, np.integer):
    raise ValueError(
        f"{path}: {label_key!r} has dtype {labels.dtype}, expected integers")
  if labels.ndim == 2 and labels.shape[1] == 1:
    labels = labels[:, 0]
  elif labels.ndim == 2 and labels.shape[1] > 1:
    if not np.isin(labels, (0, 1)).all():
      raise ValueError(
          f"{path}: {label_key!r} has shape {labels.shape}, multi-label, with values in "
          f"[{labels.min()}, {labels.max()}]; expected 0/1 per label")
  elif labels.ndim != 1:
    raise ValueError(
        f"{path}: {label_key!r} has shape {labels.shape}, expected (N, 1) or (N,) class "
        "indices, or (N, L) 0/1 multi-label rows")
  if len(images) == 0:
    raise ValueError(f"{path}: split {split!r} is empty ({image_key!r} has 0 images)")
  if len(labels) != len(images):
    raise ValueError(
        f"{path}: {label_key!r} has {len(labels)} labels but {image_key!r} has "
        f"{len(images)} images")
  if labels.min() < 0 or labels.max() > np.iinfo(np.int32).max:
    raise ValueError(
        f"{path}: {label_key!r} has labels in [{labels.min()}, {labels.max()}], "
        "expected class indices in [0, num_classes)")
  return Split(images=images, labels=labels.astype(np.int32))


def sha256(path: pathlib.Path) -> str:
  with open(path, "rb") as f:
    return hashlib.file_digest(f, "sha256").hexdigest()
