"""Tests for tuning.input_pipeline."""
from __future__ import annotations

import chex
import numpy as np
import pytest

from tuning import input_pipeline
from tuning.datasets import medmnist
from tuning.preprocess import MINUS_ONE_TO_ONE, Preprocess

IDENTITY = Preprocess("identity", mean=(0.0,) * 3, std=(1.0,) * 3)


def _indexed_split(n: int, size: int = 4) -> medmnist.Split:
  """Labels are example ids and every pixel of image i equals i, to track order."""
  ids = np.arange(n)
  images = np.broadcast_to(ids[:, None, None, None], (n, size, size, 3))
  return medmnist.Split(images=images.astype(np.uint8), labels=ids.astype(np.int32))


def _label_epochs(ds, steps: int) -> list[list[int]]:
  labels = [batch["label"] for batch in ds]
  return [np.concatenate(labels[i:i + steps]).tolist()
          for i in range(0, len(labels), steps)]


@pytest.fixture(scope="module")
def retina(shared_data_dir) -> medmnist.Dataset:
  return medmnist.load("retinamnist", shared_data_dir, download=False)


def test_train_batches_shapes_dtypes_and_preprocess(retina):
  ds = input_pipeline.train_batches(
      retina.train, batch_size=32, image_size=64, preprocess=MINUS_ONE_TO_ONE,
      seed=0, num_epochs=1)
  batches = list(ds)
  assert len(batches) == input_pipeline.steps_per_epoch(1080, 32) == 33
  for batch in batches:
    chex.assert_shape(batch["image"], (32, 64, 64, 3))
    chex.assert_type(batch["image"], np.float32)
    chex.assert_shape(batch["label"], (32,))
    chex.assert_type(batch["label"], np.int32)
    assert -1.0 <= batch["image"].min() and batch["image"].max() <= 1.0
  assert min(b["image"].min() for b in batches) < -0.9
  assert max(b["image"].max() for b in batches) > 0.9


def test_train_images_match_their_labels():
  split = _indexed_split(12)
  for batch in input_pipeline.train_batches(
      split, batch_size=4, image_size=4, preprocess=IDENTITY, seed=1, num_epochs=2):
    np.testing.assert_array_equal(
        batch["image"], np.broadcast_to(
            batch["label"][:, None, None, None].astype(np.float32), (4, 4, 4, 3)))


def test_train_order_reproducible_and_new_each_epoch():
  split = _indexed_split(24)
  make = lambda seed: input_pipeline.train_batches(
      split, batch_size=6, image_size=4, preprocess=IDENTITY, seed=seed,
      num_epochs=3)
  epochs = _label_epochs(make(5), steps=4)
  assert epochs == _label_epochs(make(5), steps=4)
  assert len(epochs) == 3
  for epoch in epochs:
    assert sorted(epoch) == list(range(24))  # Each example exactly once.
  assert len({tuple(e) for e in epochs}) == 3
  # Neighbouring seeds must not replay each other's epochs shifted by one.
  other = _label_epochs(make(6), steps=4)
  assert not {tuple(e) for e in epochs} & {tuple(e) for e in other}


def test_train_drops_remainder_per_epoch():
  split = _indexed_split(10)
  ds = input_pipeline.train_batches(
      split, batch_size=4, image_size=4, preprocess=IDENTITY, seed=0, num_epochs=3)
  batches = list(ds)
  assert len(batches) == 3 * input_pipeline.steps_per_epoch(10, 4) == 6
  for first, second in zip(batches[::2], batches[1::2]):
    # No example repeats within an epoch.
    assert len(set(first["label"]) | set(second["label"])) == 8


def test_train_repeats_forever_by_default():
  ds = input_pipeline.train_batches(
      _indexed_split(8), batch_size=4, image_size=4, preprocess=IDENTITY, seed=0)
  iterator = iter(ds)
  assert len([next(iterator) for _ in range(11)]) == 11


def test_train_rejects_batch_larger_than_split():
  with pytest.raises(ValueError, match=r"batch_size must be in \[1, 8\]"):
    input_pipeline.train_batches(
        _indexed_split(8), batch_size=9, image_size=4, preprocess=IDENTITY, seed=0)


@pytest.mark.parametrize("n, batch_size", [(10, 4), (8, 4), (3, 5)])
def test_eval_batches_pad_and_mask_cover_each_example_once(n, batch_size):
  split = _indexed_split(n)
  batches = list(input_pipeline.eval_batches(
      split, batch_size=batch_size, image_size=8, preprocess=IDENTITY))
  assert len(batches) == -(-n // batch_size)
  for batch in batches:
    chex.assert_shape(batch["image"], (batch_size, 8, 8, 3))
    chex.assert_type(batch["image"], np.float32)
    chex.assert_type(batch["label"], np.int32)
    assert batch["mask"].dtype == np.bool_ and batch["mask"].shape == (batch_size,)
    padding = ~batch["mask"]
    assert not batch["image"][padding].any() and not batch["label"][padding].any()
  labels = np.concatenate([b["label"][b["mask"]] for b in batches])
  np.testing.assert_array_equal(labels, np.arange(n))  # In order, each once.
  images = np.concatenate([b["image"][b["mask"]] for b in batches])
  np.testing.assert_array_equal(images[:, 3, 5, 1], np.arange(n))


@pytest.mark.parametrize("size", [1, 7, 28, 64, 224])
def test_resize_keeps_constant_images_constant(size):
  images = np.stack([np.full((28, 28, 3), v, np.uint8) for v in (0, 37, 255)])
  out = input_pipeline.resize(images, size)
  chex.assert_shape(out, (3, size, size, 3))
  assert out.dtype == np.uint8
  for image, value in zip(out, (0, 37, 255)):
    assert np.all(image == value)


def test_resize_same_size_is_a_no_op():
  images = np.random.default_rng(0).integers(0, 256, (2, 28, 28, 3), np.uint8)
  assert input_pipeline.resize(images, 28) is images


def test_resize_is_bilinear():
  """A horizontal ramp stays a monotone ramp with the same range, per row."""
  ramp = np.broadcast_to(np.linspace(0, 255, 28).astype(np.uint8)[None, :, None],
                         (28, 28, 3))
  out = input_pipeline.resize(np.ascontiguousarray(ramp)[None], 56)[0].astype(int)
  assert np.all(np.diff(out[0, :, 0]) >= 0)
  assert np.all(out == out[:1])
  assert len(np.unique(out)) > 28  # Interpolated values, not nearest-neighbour.


def test_steps_per_epoch():
  assert input_pipeline.steps_per_epoch(4708, 32) == 147
  assert input_pipeline.steps_per_epoch(32, 32) == 1
  assert input_pipeline.steps_per_epoch(31, 32) == 0


def test_start_epoch_continues_the_same_sequence():
  """A resumed run must see exactly the batches an uninterrupted one would."""
  split = _indexed_split(40)
  kw = dict(batch_size=8, image_size=4, preprocess=IDENTITY, seed=3)
  full = [b["label"] for b in input_pipeline.train_batches(split, num_epochs=3, **kw)]
  resumed = [b["label"] for b in input_pipeline.train_batches(split, num_epochs=3, start_epoch=2, **kw)]
  assert len(resumed) == 5
  for got, want in zip(resumed, full[10:]):
    np.testing.assert_array_equal(got, want)
