"""Tests for tuning.augment: each operation, seeding, resumed pipelines, pre-generation."""
from __future__ import annotations

import ml_collections
import numpy as np
import pytest

from tuning import augment, depth, feature_cache, input_pipeline
from tuning import config as config_lib
from tuning.datasets import medmnist
from tuning.preprocess import Preprocess

IDENTITY = Preprocess("identity", mean=(0.0,) * 3, std=(1.0,) * 3)


def _images(n: int = 32, size: int = 8, seed: int = 0) -> np.ndarray:
  """Random images: every transform of one is told apart from the others."""
  return np.random.default_rng(seed).integers(0, 256, (n, size, size, 3), np.uint8)


def _apply(ops, images, seed=0, **kw) -> np.ndarray:
  out = augment.Augment(ops, **kw).random_map(images, np.random.default_rng(seed))
  assert out.shape == images.shape and out.dtype == np.uint8
  return out


def test_parse_orders_and_names_unknown_operations():
  assert augment.parse("") == ()
  assert augment.parse(" rot90, hflip,crop,hflip ") == ("crop", "hflip", "rot90")
  with pytest.raises(ValueError, match=r"unknown \['flip'\]; expected a comma list of crop, "):
    augment.parse("flip,rot90")
  with pytest.raises(ValueError, match="unknown"):
    augment.Augment(("flip",))


@pytest.mark.parametrize("op, candidates", [
    ("hflip", lambda x: [x, x[:, ::-1]]),
    ("vflip", lambda x: [x, x[::-1]]),
    ("rot90", lambda x: [np.rot90(x, k) for k in range(4)]),
])
def test_flips_and_rotations_draw_each_outcome_per_image(op, candidates):
  images = _images(64)
  out = _apply((op,), images)
  drawn = []
  for image, result in zip(images, out):
    matches = [k for k, c in enumerate(candidates(image)) if np.array_equal(c, result)]
    assert len(matches) == 1
    drawn.append(matches[0])
  assert set(drawn) == set(range(len(candidates(images[0]))))
  np.testing.assert_array_equal(_apply((op,), images), out)  # same generator, same draw
  assert not np.array_equal(_apply((op,), images, seed=1), out)


def test_rot90_refuses_non_square_images():
  with pytest.raises(ValueError, match="rot90 needs square images, got 8x6"):
    _apply(("rot90",), np.zeros((2, 6, 8, 3), np.uint8))


def test_crop_is_a_shifted_window_of_the_reflected_image():
  images = _images(32, size=16)
  out = _apply(("crop",), images, crop_pad=0.125)  # 2 px at 16 px
  padded = np.pad(images, ((0, 0), (2, 2), (2, 2), (0, 0)), mode="reflect")
  offsets = []
  for p, result in zip(padded, out):
    found = [(y, x) for y in range(5) for x in range(5) if np.array_equal(p[y:y + 16, x:x + 16], result)]
    assert len(found) == 1
    offsets.append(found[0])
  assert len(set(offsets)) > 5


def test_jitter_resamples_within_range_and_is_the_identity_at_zero():
  images = _images(16, size=12)
  np.testing.assert_array_equal(_apply(("jitter",), images, max_scale=0.0, max_shift=0.0), images)
  out = _apply(("jitter",), images, max_scale=0.2, max_shift=0.2)
  assert not any(np.array_equal(a, b) for a, b in zip(images, out))
  assert (out.min(axis=(1, 2)) >= images.min(axis=(1, 2))).all()  # bilinear never overshoots
  assert (out.max(axis=(1, 2)) <= images.max(axis=(1, 2))).all()
  flat = np.full((4, 12, 12, 3), 77, np.uint8)
  np.testing.assert_array_equal(_apply(("jitter",), flat, max_scale=0.3, max_shift=0.3), flat)
  ramp = np.broadcast_to(np.arange(0, 240, 20, dtype=np.uint8)[None, None, :, None], (4, 12, 12, 3))
  for row in _apply(("jitter",), np.ascontiguousarray(ramp), max_scale=0.2, max_shift=0.2)[:, 6, :, 0]:
    assert (np.diff(row.astype(int)) >= 0).all()  # scaling and shifting keep a ramp a ramp


def _split(n: int = 24) -> medmnist.Split:
  return medmnist.Split(images=_images(n), labels=np.arange(n, dtype=np.int32))


def test_resumed_pipeline_sees_the_same_augmented_batches():
  split = _split()
  kw = dict(batch_size=6, image_size=8, preprocess=IDENTITY, seed=3,
            augment=augment.Augment(augment.parse("crop,jitter,hflip,rot90")))
  full = list(input_pipeline.train_batches(split, num_epochs=3, **kw))
  resumed = list(input_pipeline.train_batches(split, num_epochs=3, start_epoch=2, **kw))
  assert len(full) == 12 and len(resumed) == 4
  for got, want in zip(resumed, full[8:]):
    np.testing.assert_array_equal(got["label"], want["label"])
    np.testing.assert_array_equal(got["image"], want["image"])
  # Augmented, differently at each visit of an image.
  plain = {int(l): i for b in input_pipeline.train_batches(
      split, batch_size=6, image_size=8, preprocess=IDENTITY, seed=3, num_epochs=1)
           for l, i in zip(b["label"], b["image"])}
  visits = {}
  for batch in full:
    for label, image in zip(batch["label"], batch["image"]):
      visits.setdefault(int(label), []).append(image)
  assert all(not np.array_equal(plain[l], v[0]) for l, v in visits.items())
  assert all(not np.array_equal(v[0], v[1]) for v in visits.values())


def test_pregenerate_makes_k_fixed_copies_per_image():
  split = _split(10)
  hflip = augment.Augment(("hflip",))
  out = augment.pregenerate(split, hflip, k=4, seed=0)
  assert out.images.shape == (40, 8, 8, 3)
  np.testing.assert_array_equal(out.labels, np.repeat(split.labels, 4))
  for i, copy in enumerate(out.images):
    source = split.images[i // 4]
    assert np.array_equal(copy, source) or np.array_equal(copy, source[:, ::-1])
  np.testing.assert_array_equal(augment.pregenerate(split, hflip, k=4, seed=0).images, out.images)
  assert not np.array_equal(augment.pregenerate(split, hflip, k=4, seed=1).images, out.images)


def _config(**overrides) -> ml_collections.ConfigDict:
  return ml_collections.ConfigDict({**config_lib.defaults().to_dict(), **overrides})


@pytest.mark.parametrize("spec, copies, size, on_the_fly", [
    ("", 0, 10, False),
    ("hflip,rot90", 0, 10, True),
    ("hflip,rot90", 3, 30, False),
])
def test_from_config_and_the_feature_cache_decision(spec, copies, size, on_the_fly):
  config = _config(augment=spec, augment_copies=copies)
  split, transform = augment.from_config(_split(10), config)
  assert len(split.labels) == size
  assert (transform is not None) == on_the_fly == augment.on_the_fly(config)
  head = depth.Scheme("head", trainable_from=3, pretrained=True)
  assert feature_cache.applies(config, head) == (not on_the_fly)


@pytest.mark.parametrize("overrides, fragment", [
    (dict(augment="flip"), "config.augment: augment 'flip': unknown ['flip']"),
    (dict(augment_copies=2), "config.augment_copies = 2: needs config.augment"),
    (dict(augment_copies=-1), "config.augment_copies = -1: expected >= 0"),
    (dict(dataset="hub:x"), "config.dataset: dataset 'hub:x': expected NAME"),
    (dict(split_fractions=(0.8, 0.2)), "config.split_fractions = (0.8, 0.2): expected three"),
    (dict(load_size=-1), "config.load_size = -1: expected >= 0"),
])
def test_validate_names_bad_data_and_augment_settings(overrides, fragment):
  with pytest.raises(ValueError) as e:
    config_lib.validate(_config(**overrides))
  assert fragment in str(e.value)


def test_validate_accepts_the_new_forms():
  config_lib.validate(_config(dataset="folder:/data/x", augment="crop,hflip", augment_copies=2,
                              load_size=96, split_fractions=(8, 1, 1), balance=True))
  config_lib.validate(_config(dataset="tfds:patch_camelyon"))


def test_pregenerate_keeps_each_copy_s_label_vector():
  """Multi-label rows are repeated whole, not flattened into single labels."""
  labels = np.array([[1, 0, 1], [0, 1, 0]], np.uint8)
  split = medmnist.Split(images=_images(2), labels=labels)
  out = augment.pregenerate(split, augment.Augment(("hflip",)), k=3, seed=0)
  np.testing.assert_array_equal(out.labels, labels[[0, 0, 0, 1, 1, 1]])
