"""Tests for tuning.tasks.detection on small images and candidates made here."""
from __future__ import annotations

import hypothesis
from hypothesis import strategies as st
import numpy as np
import pytest

from tuning.tasks import detection


def _image(height: int = 16, width: int = 16, seed: int = 0) -> np.ndarray:
  """Random pixels: no crop equals another crop or a mirror of itself."""
  return np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8)


def _patches(image, boxes, **kwargs):
  defaults = dict(scales=(1.0,), shifts=(0.0,), flips=False)
  return detection.candidate_patches(image, np.asarray(boxes, np.float64), **{**defaults, **kwargs})


def test_patch_of_a_box_is_its_crop():
  image = _image()
  patches, index = _patches(image, [[4, 5, 8, 9], [0, 0, 4, 4]], size=4)
  np.testing.assert_array_equal(patches[0], image[4:8, 5:9])
  np.testing.assert_array_equal(patches[1], image[0:4, 0:4])
  np.testing.assert_array_equal(index, [0, 1])


def test_scales_grow_the_crop_about_the_box_center():
  image = _image()
  patches, _ = _patches(image, [[4, 4, 8, 8]], size=6, scales=(1.5,))
  np.testing.assert_array_equal(patches[0], image[3:9, 3:9])


def test_shifts_move_by_a_fraction_of_the_box_vertically_then_horizontally():
  image = _image()
  patches, _ = _patches(image, [[4, 4, 8, 8]], size=4, shifts=(-0.25, 0.25))
  expected = [image[3:7, 3:7], image[3:7, 5:9], image[5:9, 3:7], image[5:9, 5:9]]
  np.testing.assert_array_equal(patches, np.stack(expected))


def test_crops_beyond_the_border_are_zero():
  image = np.full((8, 8, 3), 200, np.uint8)
  patches, _ = _patches(image, [[-2, 6, 2, 10]], size=4)
  expected = np.zeros((4, 4, 3), np.uint8)
  expected[2:, :2] = 200
  np.testing.assert_array_equal(patches[0], expected)


def test_large_boxes_are_resized_to_the_input_size():
  image = np.zeros((16, 16, 3), np.uint8)
  image[:, 8:] = 255
  patches, _ = _patches(image, [[0, 0, 16, 16]], size=4)
  assert patches.shape == (1, 4, 4, 3)
  np.testing.assert_array_equal(patches[0, :, 0], 0)
  np.testing.assert_array_equal(patches[0, :, -1], 255)


def test_flips_are_the_eight_dihedral_transforms_identity_first():
  image = _image()
  patches, index = _patches(image, [[4, 4, 8, 8]], size=4, flips=True)
  crop = image[4:8, 4:8]
  # The dihedral group of the square: optional transpose, then optional flips of each axis.
  expected = {p[::a, ::b].tobytes() for p in (crop, crop.transpose(1, 0, 2))
              for a in (1, -1) for b in (1, -1)}
  assert len(patches) == 8 and len(expected) == 8
  assert {p.tobytes() for p in patches} == expected
  np.testing.assert_array_equal(patches[0], crop)
  np.testing.assert_array_equal(index, np.zeros(8))


def test_default_grid_is_the_papers_216_patches_per_candidate():
  patches, index = detection.candidate_patches(
      _image(32, 32), np.array([[8, 8, 16, 16], [10, 12, 20, 24.5]]), size=8)
  assert patches.shape == (2 * 3 * 9 * 8, 8, 8, 3) and patches.dtype == np.uint8
  np.testing.assert_array_equal(np.bincount(index), [216, 216])


def test_bad_boxes_are_named():
  with pytest.raises(ValueError, match=r"boxes \[1\]"):
    _patches(_image(), [[0, 0, 4, 4], [4, 4, 4, 8]], size=4)


def test_aggregate_averages_each_candidates_patches():
  index = np.array([0, 0, 1, 1, 1, 2])
  probs = np.array([0.2, 0.4, 1.0, 0.0, 0.5, 0.9])
  np.testing.assert_allclose(detection.aggregate(probs, index), [0.3, 0.5, 0.9])
  two_class = np.stack([1 - probs, probs], axis=1)
  np.testing.assert_allclose(detection.aggregate(two_class, index),
                             [[0.7, 0.3], [0.5, 0.5], [0.1, 0.9]])
  with pytest.raises(ValueError, match=r"candidates \[1\] have no patches"):
    detection.aggregate(np.array([0.1, 0.2]), np.array([0, 2]))


def test_froc_by_hand():
  # 2 images, 3 lesions; lesion 7 is hit twice, lesion 9 by no candidate.
  scores = np.array([0.9, 0.8, 0.7, 0.6, 0.5, 0.5])
  is_true = np.array([True, False, True, True, False, False])
  lesion = np.array([7, -1, 7, 8, -1, -1])
  curve = detection.froc(scores, is_true, lesion, n_images=2, n_lesions=3)
  np.testing.assert_array_equal(curve.thresholds, [np.inf, 0.9, 0.8, 0.7, 0.6, 0.5])
  np.testing.assert_allclose(curve.sensitivity, [0, 1 / 3, 1 / 3, 1 / 3, 2 / 3, 2 / 3])
  np.testing.assert_allclose(curve.fp_per_image, [0, 0, 0.5, 0.5, 0.5, 1.5])
  assert curve.sensitivity_at(0) == pytest.approx(1 / 3)
  assert curve.sensitivity_at(0.49) == pytest.approx(1 / 3)
  assert curve.sensitivity_at(0.5) == pytest.approx(2 / 3)
  assert curve.sensitivity_at(3) == pytest.approx(2 / 3)
  # CPM: 1/3 at 1/8 and 1/4 FPs per image, 2/3 at the five rates from 1/2 up.
  assert curve.cpm() == pytest.approx((2 * 1 / 3 + 5 * 2 / 3) / 7)


def test_froc_rejects_more_hit_lesions_than_annotated():
  with pytest.raises(ValueError, match="2 distinct lesions but n_lesions is 1"):
    detection.froc(np.array([0.5, 0.6]), np.array([True, True]), np.array([1, 2]), 1, 1)


@hypothesis.settings(deadline=None, max_examples=60)
@hypothesis.given(seed=st.integers(0, 2**32 - 1), n=st.integers(0, 40),
                  n_lesions=st.integers(1, 6), levels=st.integers(1, 6),
                  n_images=st.integers(1, 4))
def test_froc_matches_brute_force_and_is_monotone(seed, n, n_lesions, levels, n_images):
  rng = np.random.default_rng(seed)
  scores = rng.integers(0, levels, n) / levels  # few levels: many ties
  is_true = rng.random(n) < 0.5
  lesion = rng.integers(0, n_lesions, n) * 10 + 3  # arbitrary unique ids
  curve = detection.froc(scores, is_true, lesion, n_images, n_lesions)
  assert np.all(np.diff(curve.thresholds) < 0)
  assert np.all(np.diff(curve.sensitivity) >= 0) and np.all(np.diff(curve.fp_per_image) >= 0)
  assert curve.sensitivity[0] == 0 and curve.fp_per_image[0] == 0
  assert np.all((curve.sensitivity >= 0) & (curve.sensitivity <= 1))
  for t, sens, fps in zip(curve.thresholds, curve.sensitivity, curve.fp_per_image):
    above = scores >= t
    assert sens == pytest.approx(len(set(lesion[above & is_true])) / n_lesions)
    assert fps == pytest.approx(np.count_nonzero(above & ~is_true) / n_images)
  rates = np.sort(rng.random(3) * 4)
  operating = [curve.sensitivity_at(r) for r in rates]
  assert operating == sorted(operating)


def test_blob_images_end_to_end():
  """Bright square blobs are lesions; a 'model' scoring patch brightness finds them all
  before any false positive, and the lesion hit by two candidates counts once."""
  lesion_maps = [np.zeros((32, 32), np.int32) for _ in range(2)]
  lesion_maps[0][4:12, 4:12] = 1
  lesion_maps[0][18:26, 20:28] = 2
  lesion_maps[1][10:18, 10:18] = 1
  boxes = [np.array([[4, 4, 12, 12], [5, 5, 13, 13], [18, 20, 26, 28], [20, 2, 28, 10.]]),
           np.array([[10, 10, 18, 18], [0, 22, 8, 30], [22, 22, 30, 30.]])]
  scores, is_true, lesion = [], [], []
  for number, (lesion_map, image_boxes) in enumerate(zip(lesion_maps, boxes)):
    image = np.where(lesion_map[..., None] > 0, 220, 30).astype(np.uint8).repeat(3, axis=2)
    patches, index = detection.candidate_patches(image, image_boxes, size=8)
    scores.append(detection.aggregate(patches.mean(axis=(1, 2, 3)) / 255, index))
    hit, label = detection.match_candidates(image_boxes, lesion_map)
    is_true.append(hit)
    lesion.append(number * 3 + label)
  is_true = np.concatenate(is_true)
  np.testing.assert_array_equal(is_true, [True, True, True, False, True, False, False])
  curve = detection.froc(np.concatenate(scores), is_true, np.concatenate(lesion),
                         n_images=2, n_lesions=3)
  assert curve.sensitivity_at(0) == 1
  assert curve.fp_per_image[-1] == 1.5  # 3 false candidates over 2 images
  assert curve.cpm() == 1
