"""Grain pipelines turning a `Split` into fixed-shape model batches.

Batches are assembled from index batches in one vectorised step (gather,
resize, preprocess), which is cheaper than per-example elements for thousands
of tiny images. Resizing happens per batch rather than once up front so that
memory stays bounded when 28px images are upsampled to e.g. 224px.
"""
from __future__ import annotations

import functools

import grain
import numpy as np
from PIL import Image

from tuning.datasets.medmnist import Split
from tuning.preprocess import Preprocess

# Threads, not processes: worker processes need absl flags parsed. The buffer is
# counted in batches, so grain's default of 500 could hold gigabytes at 224px.
_READ_OPTIONS = grain.ReadOptions(num_threads=2, prefetch_buffer_size=4)


def steps_per_epoch(n: int, batch_size: int) -> int:
  """Full batches per epoch; `train_batches` drops the remainder."""
  return n // batch_size


def resize(images: np.ndarray, size: int) -> np.ndarray:
  """Bilinear resize of uint8 `(N, H, W, 3)` to `(N, size, size, 3)`.

  PIL antialiases when shrinking, so downsampled inputs do not alias.
  """
  if images.shape[1:3] == (size, size):
    return images
  out = np.empty((len(images), size, size, 3), np.uint8)
  for i, image in enumerate(images):
    out[i] = Image.fromarray(image).resize((size, size), Image.Resampling.BILINEAR)
  return out


def train_batches(
    split: Split,
    *,
    batch_size: int,
    image_size: int,
    preprocess: Preprocess,
    seed: int,
    num_epochs: int | None = None,
    start_epoch: int = 0,
) -> grain.IterDataset:
  """Shuffled `{"image": f32 (B, S, S, 3), "label": i32 (B,)}` batches.

  Each epoch is a fresh permutation derived from `seed` and drops its last
  partial batch, so every step sees a full batch and epochs never mix.
  `num_epochs=None` repeats forever. `start_epoch` skips whole epochs without
  reading them (random access), so a resumed run sees the batches an
  uninterrupted one would.
  """
  n = len(split.labels)
  if not 0 < batch_size <= n:
    raise ValueError(
        f"train batch_size must be in [1, {n}] (the split size), got {batch_size}")
  return (
      grain.MapDataset.range(n)
      .shuffle(seed=_shuffle_seed(seed))
      .batch(batch_size, drop_remainder=True)
      .repeat(num_epochs)[start_epoch * steps_per_epoch(n, batch_size):]
      .map(functools.partial(
          _examples, split, image_size=image_size, preprocess=preprocess))
      .to_iter_dataset(_READ_OPTIONS))


def eval_batches(
    split: Split,
    *,
    batch_size: int,
    image_size: int,
    preprocess: Preprocess,
) -> grain.IterDataset:
  """Every example once, in order, as `{"image", "label", "mask"}` batches.

  The last batch is padded (zero image, label 0, mask False) so that all
  batches share one shape and the evaluation step compiles once.
  """
  if batch_size <= 0:
    raise ValueError(f"eval batch_size must be positive, got {batch_size}")
  return (
      grain.MapDataset.range(len(split.labels))
      .batch(batch_size)
      .map(functools.partial(
          _padded_examples, split, batch_size=batch_size,
          image_size=image_size, preprocess=preprocess))
      .to_iter_dataset(_READ_OPTIONS))


def _shuffle_seed(seed: int) -> int:
  """Scrambles `seed`, since grain shuffles epoch `e` with `seed + e`.

  Unscrambled, runs with seeds 0 and 1 would see the same epochs shifted by one.
  """
  return int(np.random.SeedSequence(seed).generate_state(1)[0])


def _examples(
    split: Split, index: np.ndarray, *, image_size: int, preprocess: Preprocess
) -> dict[str, np.ndarray]:
  return {
      "image": preprocess(resize(split.images[index], image_size)),
      "label": split.labels[index],
  }


def _padded_examples(
    split: Split, index: np.ndarray, *, batch_size: int, image_size: int,
    preprocess: Preprocess,
) -> dict[str, np.ndarray]:
  batch = _examples(split, index, image_size=image_size, preprocess=preprocess)
  pad = batch_size - len(index)
  return {
      "image": np.pad(batch["image"], ((0, pad), (0, 0), (0, 0), (0, 0))),
      "label": np.pad(batch["label"], (0, pad)),
      "mask": np.arange(batch_size) < len(index),
  }
