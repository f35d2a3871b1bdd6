"""Grain pipelines turning a `Split` into fixed-shape model batches.

Batches are assembled from index batches in one vectorised step (gather,
resize, preprocess), which is cheaper than per-example elements for thousands
of tiny images. Resizing happens per batch rather than once up front so that
memory stays bounded when 28px images are upsampled to e.g. 224px.

`feature_train_batches` and `feature_eval_batches` serve cached frozen-trunk
features (tuning/feature_cache.py) in place of images, batched exactly as the
image pipelines batch the images they were computed from.
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
    augment: grain.transforms.RandomMap | None = None,
) -> grain.IterDataset:
  """Shuffled `{"image": f32 (B, S, S, 3), "label": i32 (B,) or multi-label (B, L)}` batches.

  Each epoch is a fresh permutation derived from `seed` and drops its last
  partial batch, so every step sees a full batch and epochs never mix.
  `num_epochs=None` repeats forever. `start_epoch` skips whole epochs without
  reading them (random access), so a resumed run sees the batches an
  uninterrupted one would. `augment` (`tuning.augment.Augment`) transforms each
  uint8 batch before resizing, with a generator that follows from `seed` and
  the batch's position in the run, so resumed runs see the same augmentations.
  """
  examples = functools.partial(_examples, split, image_size=image_size, preprocess=preprocess)
  if augment is None:
    return (_epochs(len(split.labels), batch_size, seed, num_epochs, start_epoch)
            .map(examples).to_iter_dataset(_READ_OPTIONS))
  # Epochs are skipped after the random map, so that a batch's generator follows
  # from its position in the whole run rather than in the resumed part.
  skip = start_epoch * steps_per_epoch(len(split.labels), batch_size)
  return (_epochs(len(split.labels), batch_size, seed, num_epochs, start_epoch=0)
          .random_map(lambda index, rng: examples(index, augment=augment, rng=rng),
                      seed=_augment_seed(seed))[skip:]
          .to_iter_dataset(_READ_OPTIONS))


def feature_train_batches(
    features: np.ndarray,
    labels: np.ndarray,
    *,
    batch_size: int,
    seed: int,
    num_epochs: int | None = None,
    start_epoch: int = 0,
) -> grain.IterDataset:
  """`train_batches` of cached features: `{"image": features[i], "label": labels[i]}`.

  The same index batches in the same order as `train_batches` with the same
  arguments (and the same `start_epoch` semantics), so a run on features sees
  what a run on images would, step for step, and resumes the same way.
  "image" holds what enters the model's first run block.
  """
  return (_epochs(len(labels), batch_size, seed, num_epochs, start_epoch)
          .map(functools.partial(_rows, features, labels))
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
  examples = functools.partial(_examples, split, image_size=image_size, preprocess=preprocess)
  return (_in_order(len(split.labels), batch_size)
          .map(lambda index: _pad(examples(index), batch_size))
          .to_iter_dataset(_READ_OPTIONS))


def feature_eval_batches(features: np.ndarray, labels: np.ndarray, *, batch_size: int
                         ) -> grain.IterDataset:
  """`eval_batches` of cached features, padded and masked the same way."""
  return (_in_order(len(labels), batch_size)
          .map(lambda index: _pad(_rows(features, labels, index), batch_size))
          .to_iter_dataset(_READ_OPTIONS))


def _epochs(n: int, batch_size: int, seed: int, num_epochs: int | None, start_epoch: int
            ) -> grain.MapDataset:
  """Index batches of `train_batches`: one permutation per epoch, remainders dropped."""
  if not 0 < batch_size <= n:
    raise ValueError(
        f"train batch_size must be in [1, {n}] (the split size), got {batch_size}")
  return (grain.MapDataset.range(n)
          .shuffle(seed=_shuffle_seed(seed))
          .batch(batch_size, drop_remainder=True)
          .repeat(num_epochs)[start_epoch * steps_per_epoch(n, batch_size):])


def _in_order(n: int, batch_size: int) -> grain.MapDataset:
  """Index batches of `eval_batches`: every index once, in order, the last batch short."""
  if batch_size <= 0:
    raise ValueError(f"eval batch_size must be positive, got {batch_size}")
  return grain.MapDataset.range(n).batch(batch_size)


def _shuffle_seed(seed: int) -> int:
  """Scrambles `seed`, since grain shuffles epoch `e` with `seed + e`.

  Unscrambled, runs with seeds 0 and 1 would see the same epochs shifted by one.
  """
  return int(np.random.SeedSequence(seed).generate_state(1)[0])


def _augment_seed(seed: int) -> int:
  """The augmentation generators' seed: from `seed`, apart from the shuffle's."""
  return int(np.random.SeedSequence(seed, spawn_key=(1,)).generate_state(1)[0])


def _examples(
    split: Split, index: np.ndarray, *, image_size: int, preprocess: Preprocess,
    augment: grain.transforms.RandomMap | None = None, rng: np.random.Generator | None = None,
) -> dict[str, np.ndarray]:
  images = split.images[index]
  if augment is not None:
    images = augment.random_map(images, rng)
  return {"image": preprocess(resize(images, image_size)), "label": split.labels[index]}


def _rows(features: np.ndarray, labels: np.ndarray, index: np.ndarray
          ) -> dict[str, np.ndarray]:
  return {"image": np.asarray(features[index]), "label": labels[index]}


def _pad(batch: dict[str, np.ndarray], batch_size: int) -> dict[str, np.ndarray]:
  """Zero-pads a short batch to `batch_size` rows and adds the `mask` of real ones."""
  n = len(batch["label"])
  pad = lambda x: np.pad(x, ((0, batch_size - n),) + ((0, 0),) * (x.ndim - 1))
  return {"image": pad(batch["image"]), "label": pad(batch["label"]),
          "mask": np.arange(batch_size) < n}
