"""A directory of image files, one subdirectory per class; no TensorFlow needed.

Two layouts:
- `ROOT/{train,val,test}/<class>/*`: the splits as given (`train` required;
  missing ones are carved from it, see `tuning.datasets.complete_splits`);
- `ROOT/<class>/*`: one pool, split per class with the config's
  `split_fractions` and `split_seed` (both in every result row's config).
Classes are the subdirectory names sorted, so label `i` is the `i`-th name.
Images (`.png .jpg .jpeg .bmp .tif .tiff`, any case) are read into memory as RGB,
resized to `load_size` x `load_size` when it is set, so a split stays one uint8
array; the sha256 covers every file's relative path and bytes.
"""
from __future__ import annotations

import hashlib
import io
import os
import pathlib
from typing import Sequence

import numpy as np
from PIL import Image

from tuning import datasets
from tuning.datasets import medmnist

EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff")
SPLIT_DIRS = ("train", "val", "test")


def load(
    root: str | os.PathLike,
    *,
    load_size: int = 0,
    split_fractions: Sequence[float] = (0.7, 0.1, 0.2),
    split_seed: int = 0,
) -> medmnist.Dataset:
  """Reads the images under `root` (see the module docstring for the layouts).

  Raises FileNotFoundError for a missing root and ValueError naming the folder
  or file for an empty class, a class missing from a split, an unreadable image
  or, without `load_size`, images of different sizes.
  """
  root = pathlib.Path(root).expanduser().resolve()
  if not root.is_dir():
    raise FileNotFoundError(f"image folder {root} does not exist")
  top = _subdirs(root)
  if not top:
    raise ValueError(f"image folder {root} has no class subdirectories")
  if set(top) & set(SPLIT_DIRS):
    extra = sorted(set(top) - set(SPLIT_DIRS))
    if extra:
      raise ValueError(
          f"image folder {root} mixes split folders (train/val/test) with other "
          f"folders {extra}; use either ROOT/<split>/<class>/ or ROOT/<class>/")
    split_dirs = {s: root / s for s in SPLIT_DIRS if s in top}
  else:
    split_dirs = {"train": root}
  classes = sorted({c for d in split_dirs.values() for c in _subdirs(d)})
  for split, directory in split_dirs.items():
    missing = sorted(set(classes) - set(_subdirs(directory)))
    if missing:
      raise ValueError(
          f"split folder {directory} lacks the class folders {missing} that other "
          "splits have; every split needs every class")
  digest = hashlib.sha256()
  shape = [load_size, load_size] if load_size else None  # set by the first image otherwise
  splits = {}
  for split, directory in split_dirs.items():
    images, labels = [], []
    for label, name in enumerate(classes):
      for path in _image_files(directory / name):
        data = path.read_bytes()
        digest.update(f"{path.relative_to(root).as_posix()}\0{len(data)}\0".encode())
        digest.update(data)
        image = decode_image(data, load_size, str(path))
        shape = shape or list(image.shape[:2])
        if list(image.shape[:2]) != shape:
          raise ValueError(
              f"{path}: is {image.shape[1]}x{image.shape[0]} but earlier images are "
              f"{shape[1]}x{shape[0]}; set config.load_size to resize every image on load")
        images.append(image)
        labels.append(label)
    splits[split] = medmnist.Split(images=np.stack(images), labels=np.asarray(labels, np.int32))
  splits = datasets.complete_splits(splits, split_fractions, split_seed, f"image folder {root}")
  return medmnist.Dataset(
      name=root.name, num_classes=len(classes), **splits, path=str(root),
      sha256=digest.hexdigest())


def decode_image(data: bytes, load_size: int, where: str) -> np.ndarray:
  """An encoded image as uint8 RGB `(H, W, 3)`, resized to `load_size` if set.

  Grayscale and palette images become RGB; 16-bit grayscale (common for X-rays)
  is scaled to 8 bits rather than clipped. `where` names the image in errors.
  """
  try:
    image = Image.open(io.BytesIO(data))
    image.load()
  except (OSError, Image.DecompressionBombError) as e:  # UnidentifiedImageError is an OSError
    raise ValueError(f"{where}: cannot read as an image ({e})") from e
  if image.mode.startswith("I;16"):
    wide = np.asarray(image).astype(np.uint32)
    image = Image.fromarray(((wide * 255 + 32767) // 65535).astype(np.uint8))
  elif image.mode in ("I", "F"):
    raise ValueError(
        f"{where}: has {image.mode!r} (32-bit) pixels, which have no fixed 8-bit scale; "
        "convert it to 8- or 16-bit")
  image = image.convert("RGB")
  if load_size and image.size != (load_size, load_size):
    image = image.resize((load_size, load_size), Image.Resampling.BILINEAR)
  return np.asarray(image)


def _subdirs(directory: pathlib.Path) -> list[str]:
  return sorted(p.name for p in directory.iterdir() if p.is_dir() and not p.name.startswith("."))


def _image_files(directory: pathlib.Path) -> list[pathlib.Path]:
  files = sorted(p for p in directory.iterdir()
                 if p.is_file() and p.suffix.lower() in EXTENSIONS and not p.name.startswith("."))
  if not files:
    raise ValueError(
        f"class folder {directory} has no images ({' '.join(EXTENSIONS)}); remove it or add images")
  return files
