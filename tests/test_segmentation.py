"""Tests for tuning.tasks.segmentation on synthetic two-interface images made here."""
from __future__ import annotations

import numpy as np
import pytest

from tuning.tasks import segmentation

_HEIGHT, _WIDTH = 24, 20


def _interfaces() -> np.ndarray:
  """`(2, W)` rows of two wavy, roughly horizontal interfaces 6 rows apart."""
  lumen_intima = 8 + np.round(2 * np.sin(np.arange(_WIDTH) / 3))
  return np.stack([lumen_intima, lumen_intima + 6])


def _image_of(labels: np.ndarray) -> np.ndarray:
  """The class drawn as brightness (0, 100, 200), RGB."""
  return (100 * labels).astype(np.uint8)[..., None].repeat(3, axis=2)


def _center_pixel_model(size: int):
  """A 'network' reading the class off the brightness of its patch's center pixel."""
  def model(patches: np.ndarray) -> np.ndarray:
    assert patches.dtype == np.uint8 and patches.shape[1:] == (size, size, 3)
    classes = patches[:, size // 2, size // 2, 0] // 100
    return np.eye(3, dtype=np.float32)[classes]
  return model


def test_label_map_marks_each_interface_once_per_column():
  rows = _interfaces()
  labels = segmentation.label_map_from_boundaries(_HEIGHT, rows)
  assert labels.shape == (_HEIGHT, _WIDTH)
  for k, cls in enumerate(segmentation.INTERFACES):
    np.testing.assert_array_equal(np.argmax(labels == cls, axis=0), rows[k])
    np.testing.assert_array_equal(np.sum(labels == cls, axis=0), 1)


def test_stratified_pixels_keep_interfaces_and_balance_background():
  labels = segmentation.label_map_from_boundaries(_HEIGHT, _interfaces())
  pixels, classes = segmentation.stratified_pixels(labels, seed=0)
  np.testing.assert_array_equal(labels[pixels[:, 0], pixels[:, 1]], classes)
  np.testing.assert_array_equal(np.bincount(classes), [_WIDTH] * 3)
  assert len(np.unique(pixels, axis=0)) == len(pixels)
  again, _ = segmentation.stratified_pixels(labels, seed=0)
  other, _ = segmentation.stratified_pixels(labels, seed=1)
  np.testing.assert_array_equal(again, pixels)
  assert not np.array_equal(other, pixels)


def test_pixel_patches_center_on_the_pixel_with_zeros_beyond_the_border():
  image = np.random.default_rng(0).integers(1, 256, (_HEIGHT, _WIDTH, 3), dtype=np.uint8)
  patches = segmentation.pixel_patches(image, np.array([[10, 7], [0, 0]]), size=5)
  np.testing.assert_array_equal(patches[0], image[8:13, 5:10])
  expected = np.zeros((5, 5, 3), np.uint8)
  expected[2:, 2:] = image[:3, :3]
  np.testing.assert_array_equal(patches[1], expected)
  with pytest.raises(ValueError, match="outside"):
    segmentation.pixel_patches(image, np.array([[_HEIGHT, 0]]), size=5)


@pytest.mark.parametrize("size", [4, 7])
def test_dense_map_equals_the_map_of_each_pixels_patch(size):
  labels = segmentation.label_map_from_boundaries(_HEIGHT, _interfaces())
  image = _image_of(labels)
  # 480 pixels in batches of 64: the last batch is padded.
  probs = segmentation.probability_map(image, _center_pixel_model(size), size, batch_size=64)
  np.testing.assert_array_equal(probs, np.eye(3)[labels])
  # A model that sees the whole patch, border zeros included.
  mean = lambda p: p.reshape(len(p), -1).mean(axis=1, keepdims=True)
  dense = segmentation.probability_map(image, mean, size, batch_size=64)
  pixels = np.stack(np.indices((_HEIGHT, _WIDTH)).reshape(2, -1), axis=1)
  expected = mean(segmentation.pixel_patches(image, pixels, size))
  np.testing.assert_allclose(dense.reshape(-1, 1), expected, rtol=1e-6)


def test_oracle_map_has_zero_error_and_a_shifted_one_the_shift():
  rows = _interfaces()
  oracle = np.eye(3)[segmentation.label_map_from_boundaries(_HEIGHT, rows)]
  found = segmentation.boundaries_from_probability(oracle)
  np.testing.assert_array_equal(found, rows)
  np.testing.assert_array_equal(segmentation.mean_boundary_distance(found, rows, 50.0), [0, 0])
  shifted = segmentation.boundaries_from_probability(np.roll(oracle, 3, axis=0))
  np.testing.assert_allclose(segmentation.mean_boundary_distance(shifted, rows, 50.0),
                             [150.0, 150.0])


def test_boundaries_from_a_model_end_to_end():
  rows = _interfaces()
  image = _image_of(segmentation.label_map_from_boundaries(_HEIGHT, rows))
  probs = segmentation.probability_map(image, _center_pixel_model(5), 5)
  found = segmentation.boundaries_from_probability(probs, smooth=3)
  np.testing.assert_array_equal(found, rows)


def test_smoothing_removes_an_isolated_jump():
  probs = np.zeros((_HEIGHT, _WIDTH, 2))
  probs[10, :, 1] = 1
  probs[20, 5, 1], probs[10, 5, 1] = 1, 0
  raw = segmentation.boundaries_from_probability(probs, classes=(1,))
  np.testing.assert_array_equal(raw[0, 4:7], [10, 20, 10])
  smooth = segmentation.boundaries_from_probability(probs, classes=(1,), smooth=3)
  np.testing.assert_array_equal(smooth, np.full((1, _WIDTH), 10))


def test_distance_per_image_and_interface_with_per_image_pixel_size():
  true = np.zeros((2, 2, 4))
  predicted = true + np.array([[[1, 1, 1, 1], [0, 0, 0, 4]], [[2, 0, 2, 0], [0, 0, 0, 0]]])
  errors = segmentation.mean_boundary_distance(predicted, true, np.array([[10.0], [20.0]]))
  np.testing.assert_allclose(errors, [[10.0, 10.0], [20.0, 0.0]])
  with pytest.raises(ValueError, match="matching"):
    segmentation.mean_boundary_distance(predicted[0], true, 10.0)
