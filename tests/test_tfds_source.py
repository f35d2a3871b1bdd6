"""Tests for tuning.datasets.tfds_source on real ArrayRecord data prepared here.

`tfds.testing.mock_data` cannot serve this adapter without TensorFlow: it reads
images with `tfds.decode.SkipDecoding`, and the mock encodes its random images
with TensorFlow to honour that. Instead, two tiny builders are prepared in the
ArrayRecord format (encoded PNG bytes in, so no TensorFlow either) and read back
through the real `as_data_source` path; the real `patch_camelyon` and
`colorectal_histology` builders are checked against the adapter's feature needs.
"""
from __future__ import annotations

import io
import re

import numpy as np
import pytest
from PIL import Image
import tensorflow_datasets as tfds

from tuning import datasets, input_pipeline
from tuning.datasets import folder, medmnist, tfds_source
from tuning.preprocess import Preprocess

IDENTITY = Preprocess("identity", mean=(0.0,) * 3, std=(1.0,) * 3)


def _png(pixels: np.ndarray) -> bytes:
  buffer = io.BytesIO()
  Image.fromarray(pixels).save(buffer, format="PNG")
  return buffer.getvalue()


class TuningTestHistology(tfds.core.GeneratorBasedBuilder):
  """RGB 16x16, 3 classes, train and test only; red = example id, green = 50 * label."""
  VERSION = tfds.core.Version("1.0.0")

  def _info(self):
    return tfds.core.DatasetInfo(builder=self, features=tfds.features.FeaturesDict({
        "image": tfds.features.Image(shape=(16, 16, 3)),
        "label": tfds.features.ClassLabel(names=["tumour", "stroma", "fat"]),
        "id": tfds.features.Text()}))

  def _split_generators(self, dl_manager):
    del dl_manager
    return {"train": self._generate_examples(range(30)),
            "test": self._generate_examples(range(100, 109))}

  def _generate_examples(self, ids):
    for i in ids:
      pixels = np.zeros((16, 16, 3), np.uint8)
      pixels[..., 0], pixels[..., 1] = i, 50 * (i % 3)
      yield i, {"image": _png(pixels), "label": i % 3, "id": str(i)}


class TuningTestScans(tfds.core.GeneratorBasedBuilder):
  """Grayscale images of two sizes, 2 classes, train only; pixel = example id."""
  VERSION = tfds.core.Version("1.0.0")

  def _info(self):
    return tfds.core.DatasetInfo(builder=self, features=tfds.features.FeaturesDict({
        "image": tfds.features.Image(shape=(None, None, 1)),
        "label": tfds.features.ClassLabel(num_classes=2)}))

  def _split_generators(self, dl_manager):
    del dl_manager
    return {"train": self._generate_examples()}

  def _generate_examples(self):
    for i in range(24):
      yield i, {"image": _png(np.full((10, 10) if i % 4 else (14, 12), i, np.uint8)),
                "label": i % 2}


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
  directory = tmp_path_factory.mktemp("tfds")
  for builder in (TuningTestHistology, TuningTestScans):
    builder(data_dir=directory, file_format="array_record").download_and_prepare()
  return directory


@pytest.fixture
def decodes(monkeypatch) -> list[int]:
  """Counts the images decoded: `tfds_source.Images` decodes through `folder.decode_image`."""
  calls = []
  decode = folder.decode_image
  monkeypatch.setattr(folder, "decode_image", lambda *a: calls.append(1) or decode(*a))
  return calls


def _all(split: medmnist.Split) -> np.ndarray:
  return split.images[np.arange(len(split.labels))]


def test_labels_in_memory_images_decoded_only_when_gathered(data_dir, decodes):
  ds = datasets.load("tfds:tuning_test_histology", data_dir)
  assert (ds.name, ds.num_classes) == ("tuning_test_histology", 3)
  assert ds.path == str(data_dir / "tuning_test_histology" / "1.0.0")
  # The builder has no validation split: it is carved from train, one per class.
  assert [len(s.labels) for s in (ds.train, ds.val, ds.test)] == [27, 3, 9]
  assert np.bincount(ds.val.labels).tolist() == [1, 1, 1]
  smaller = datasets.balance(medmnist.subsample(ds.train, 0.5, seed=0), seed=0)
  assert isinstance(smaller.images, tfds_source.Images) and not decodes
  assert smaller.images.shape == (len(smaller.labels), 16, 16, 3)
  _all(smaller)
  assert len(decodes) == len(smaller.labels)
  ids = {}
  for name, split in (("train", ds.train), ("val", ds.val), ("test", ds.test)):
    images = _all(split)
    assert images.dtype == np.uint8 and images.shape == (len(split.labels), 16, 16, 3)
    ids[name] = images[:, 0, 0, 0].astype(int)
    np.testing.assert_array_equal(ids[name] % 3, split.labels)
    np.testing.assert_array_equal(images[:, 5, 7, 1], 50 * split.labels)
  assert sorted(np.concatenate([ids["train"], ids["val"]])) == list(range(30))
  assert sorted(ids["test"]) == list(range(100, 109))
  again = datasets.load("tfds:tuning_test_histology", data_dir)
  assert again.sha256 == ds.sha256 and len(ds.sha256) == 64
  np.testing.assert_array_equal(again.val.labels, ds.val.labels)


def test_images_index_like_a_uint8_array(data_dir):
  images = datasets.load("tfds:tuning_test_histology", data_dir).test.images
  everything = images[np.arange(len(images))]
  assert len(images) == 9 and images.shape == (9, 16, 16, 3)
  np.testing.assert_array_equal(images[3], everything[3])
  np.testing.assert_array_equal(images[1:4], everything[1:4])
  np.testing.assert_array_equal(images[np.array([[4, 2]])], everything[[[4, 2]]])
  view = images.take(np.array([8, 0, 5]), axis=0)
  assert view.shape == (3, 16, 16, 3)
  np.testing.assert_array_equal(view[np.array([2, 0])], everything[[5, 8]])


def test_input_pipeline_gathers_batches_from_lazy_images(data_dir):
  ds = datasets.load("tfds:tuning_test_histology", data_dir)
  batches = list(input_pipeline.train_batches(
      ds.train, batch_size=4, image_size=32, preprocess=IDENTITY, seed=0, num_epochs=1))
  assert len(batches) == 27 // 4
  for batch in batches:
    assert batch["image"].shape == (4, 32, 32, 3)
    np.testing.assert_array_equal(batch["image"][:, 9, 20, 1], 50 * batch["label"])
  evaluated = list(input_pipeline.eval_batches(ds.test, batch_size=4, image_size=32,
                                               preprocess=IDENTITY))
  np.testing.assert_array_equal(
      np.concatenate([b["image"][b["mask"], 0, 0, 0] for b in evaluated]) % 3, ds.test.labels)


def test_train_only_builder_split_three_ways_and_varying_sizes_need_load_size(data_dir):
  with pytest.raises(ValueError, match="images vary in size .*set config.load_size"):
    datasets.load("tfds:tuning_test_scans", data_dir)
  load = lambda seed: datasets.load("tfds:tuning_test_scans", data_dir, load_size=8,
                                    split_fractions=(0.5, 0.25, 0.25), split_seed=seed)
  ds = load(0)
  ids = []
  for split in (ds.train, ds.val, ds.test):
    assert np.bincount(split.labels).tolist() == [len(split.labels) // 2] * 2
    images = _all(split)
    assert images.shape[1:] == (8, 8, 3)
    assert (images == images[..., :1]).all()  # grayscale repeated into RGB
    ids.append(images[:, 4, 4, 0].astype(int))
    np.testing.assert_array_equal(ids[-1] % 2, split.labels)
  assert [len(i) for i in ids] == [12, 6, 6]
  assert sorted(np.concatenate(ids)) == list(range(24))
  assert not np.array_equal(_all(load(1).val)[:, 4, 4, 0], ids[1])


def test_unprepared_builder_says_how_to_prepare_it(tmp_path):
  with pytest.raises(FileNotFoundError, match="is not prepared.*" + re.escape(
      f"tfds build tuning_test_histology --file_format=array_record --data_dir={tmp_path}")):
    datasets.load("tfds:tuning_test_histology", tmp_path)


@pytest.mark.parametrize("name, image_shape, num_classes", [
    ("patch_camelyon", (96, 96), 2),
    ("colorectal_histology", (150, 150), 8),
])
def test_real_builders_fit_the_adapter(tmp_path, name, image_shape, num_classes):
  """The builders the module docstring documents, by their code (no download)."""
  features = tfds.builder(name, data_dir=tmp_path).info.features
  assert tfds_source.check_features(features, "image", "label", 0, name) == (image_shape, num_classes)
  assert tfds_source.check_features(features, "image", "label", 64, name) == ((64, 64), num_classes)
  with pytest.raises(ValueError, match="needs an Image feature 'pixels'"):
    tfds_source.check_features(features, "pixels", "label", 0, name)
