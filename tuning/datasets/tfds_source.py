"""tensorflow-datasets builders, read by random access without TensorFlow.

`tfds:NAME` reads a builder prepared in the ArrayRecord format through
`builder.as_data_source` (what `tfds.data_source` returns): labels are read once
into memory, images stay on disk and are decoded only for the rows a batch
gathers (`Images`). PatchCamelyon's training split alone is 262,144 images, about
7 GB as uint8 arrays, so decoding it up front is not an option.

Preparing is a one-time step that needs TensorFlow (the builders encode their
images with it) and the download; reading afterwards needs neither:

  pip install tensorflow
  tfds build patch_camelyon --file_format=array_record --data_dir=DIR

| builder | download | prepared | splits | images |
|---|---|---|---|---|
| `patch_camelyon` | 7.48 GiB | 7.06 GiB | train 262,144, validation 32,768, test 32,768 | 96x96 RGB, 2 classes |
| `colorectal_histology` | 246.14 MiB | 179.23 MiB | train 5,000 only | 150x150 RGB, 8 classes |

(Sizes and splits from the tfds catalog, version 2.0.0 of both.) Splits a builder
lacks (colorectal_histology has only `train`) are carved from `train` with the
config's `split_fractions` and `split_seed`, stratified by class; see
`tuning.datasets.complete_splits`. Any builder with an `Image` feature and a
`ClassLabel` feature works the same way.
"""
from __future__ import annotations

import hashlib
import os
from typing import Any, Sequence

from etils import epath
import numpy as np
import tensorflow_datasets as tfds

from tuning import datasets
from tuning.datasets import folder, medmnist

# tfds split names that mean each of our splits, in order of preference.
SPLIT_NAMES = {"train": ("train",), "val": ("validation", "valid", "val"), "test": ("test",)}


class Images:
  """The images of one tfds split, decoded when indexed, as a uint8 array would be.

  `images[index]` decodes the rows `index` (an int, slice or integer array) to
  uint8 RGB `(..., H, W, 3)`; `take(index, axis=0)` is a view of those rows that
  decodes nothing, so subsampling and splitting stay cheap. `source` is a tfds
  data source whose records hold the encoded image under `image_key` (read with
  `tfds.decode.SkipDecoding`); thread-safe as far as it is, which grain's reader
  threads need.
  """

  def __init__(self, source: Any, image_key: str,
               image_shape: tuple[int, int], load_size: int, where: str,
               rows: np.ndarray | None = None):
    self._source, self._key, self._load_size, self._where = source, image_key, load_size, where
    self._image_shape = image_shape
    self._rows = np.arange(len(source)) if rows is None else rows

  @property
  def shape(self) -> tuple[int, int, int, int]:
    return (len(self._rows), *self._image_shape, 3)

  def __len__(self) -> int:
    return len(self._rows)

  def __getitem__(self, index) -> np.ndarray:
    rows = self._rows[index]
    flat = np.ravel(rows)
    records = self._source.__getitems__(flat.tolist())
    out = np.empty((len(flat), *self._image_shape, 3), np.uint8)
    for i, (row, record) in enumerate(zip(flat, records)):
      image = folder.decode_image(record[self._key], self._load_size, f"{self._where} row {row}")
      if image.shape[:2] != self._image_shape:
        raise ValueError(
            f"{self._where} row {row}: image is {image.shape[1]}x{image.shape[0]}, expected "
            f"{self._image_shape[1]}x{self._image_shape[0]}; set config.load_size to resize on load")
      out[i] = image
    return out.reshape(*np.shape(rows), *out.shape[1:])

  def take(self, index: np.ndarray, axis: int = 0) -> Images:
    if axis != 0:
      raise ValueError(f"Images.take selects rows (axis 0), got axis={axis}")
    return Images(self._source, self._key, self._image_shape, self._load_size, self._where,
                  rows=self._rows[index])


def load(
    name: str,
    data_dir: str | os.PathLike | None = None,
    *,
    load_size: int = 0,
    split_fractions: Sequence[float] = (0.7, 0.1, 0.2),
    split_seed: int = 0,
    image_key: str = "image",
    label_key: str = "label",
) -> medmnist.Dataset:
  """The prepared builder `name` (tfds syntax, e.g. `patch_camelyon:2.0.0`).

  `data_dir` is where it was prepared (tfds's default, `$TFDS_DATA_DIR` or
  `~/tensorflow_datasets`, when None). `load_size` resizes images on decode;
  0 keeps the builder's fixed image shape. The sha256 covers every file of the
  prepared version's directory.
  """
  builder = tfds.builder(name, data_dir=data_dir)
  where = f"tfds dataset {name!r} in {builder.data_dir}"
  if not builder.is_prepared():
    raise FileNotFoundError(
        f"{where} is not prepared. Prepare it once (needs TensorFlow and the download, "
        "see tuning/datasets/tfds_source.py): tfds build "
        f"{name} --file_format=array_record --data_dir={builder.data_dir_root}")
  image_shape, num_classes = check_features(
      builder.info.features, image_key, label_key, load_size, where)
  splits = {}
  for split, candidates in SPLIT_NAMES.items():
    found = next((s for s in candidates if s in builder.info.splits), None)
    if found:
      # Images stay encoded until a batch asks for them; labels are read now.
      source = builder.as_data_source(found, decoders={image_key: tfds.decode.SkipDecoding()})
      splits[split] = medmnist.Split(
          images=Images(source, image_key, image_shape, load_size, f"{where}, split {found!r}"),
          labels=_labels(source, label_key))
  splits = datasets.complete_splits(splits, split_fractions, split_seed, where)
  return medmnist.Dataset(
      name=name, num_classes=num_classes, **splits, path=os.fspath(builder.data_dir),
      sha256=_sha256(builder.data_dir))


def check_features(features: tfds.features.FeaturesDict, image_key: str, label_key: str,
                   load_size: int, where: str) -> tuple[tuple[int, int], int]:
  """The decoded image size and the number of classes; ValueError if unusable.

  Needs an `Image` feature and a `ClassLabel` one; images of varying size
  need `load_size`.
  """
  image, label = (features[k] if k in features.keys() else None for k in (image_key, label_key))
  if not isinstance(image, tfds.features.Image) or not isinstance(label, tfds.features.ClassLabel):
    raise ValueError(
        f"{where}: needs an Image feature {image_key!r} and a ClassLabel feature "
        f"{label_key!r}; its features are {features}")
  height, width = image.shape[:2]
  if not load_size and None in (height, width):
    raise ValueError(
        f"{where}: images vary in size ({image.shape}); set config.load_size to resize them on load")
  return ((load_size, load_size) if load_size else (height, width)), label.num_classes


def _labels(source: Any, key: str, chunk: int = 4096) -> np.ndarray:
  """Every record's label, read in chunks (batched reads are faster than one by one)."""
  return np.asarray(
      [record[key] for start in range(0, len(source), chunk)
       for record in source.__getitems__(list(range(start, min(start + chunk, len(source)))))],
      np.int32)


def _sha256(directory: epath.PathLike) -> str:
  """Over the name and contents of every file of a prepared version."""
  digest = hashlib.sha256()
  for path in sorted(epath.Path(directory).iterdir()):
    with path.open("rb") as f:
      digest.update(f"{path.name}\0".encode() + hashlib.file_digest(f, "sha256").digest())
  return digest.hexdigest()
