"""Tests for tuning.datasets.folder, the `tuning.datasets` dispatcher and its split helpers."""
from __future__ import annotations

import hashlib
import pathlib

import numpy as np
import pytest
from PIL import Image

from tuning import datasets
from tuning.datasets import folder, medmnist


def _image(path: pathlib.Path, value: int, size=(6, 6), mode: str = "RGB") -> pathlib.Path:
  """A constant image of `value` (its id, so tests can tell images apart after loading)."""
  path.parent.mkdir(parents=True, exist_ok=True)
  Image.new(mode, size, value if mode != "RGB" else (value,) * 3).save(path)
  return path


def _ids(split: medmnist.Split) -> list[int]:
  return split.images[:, 0, 0, 0].astype(int).tolist()


def _class_tree(root: pathlib.Path, counts: dict[str, int]) -> pathlib.Path:
  """`root/<class>/<i>.png`; image ids are 80 * class index + i."""
  for c, (name, n) in enumerate(sorted(counts.items())):
    for i in range(n):
      _image(root / name / f"{i}.png", 80 * c + i)
  return root


def test_split_layout_sorted_classes_formats_and_grayscale(tmp_path):
  root = tmp_path / "lesions"
  # Created out of order: labels follow the sorted names (benign 0, malignant 1).
  for split, n in (("train", 3), ("val", 1), ("test", 2)):
    for c, name in ((1, "malignant"), (0, "benign")):
      for i in range(n):
        _image(root / split / name / f"{i}.png", 100 * c + 50 + i)
  _image(root / "train" / "benign" / "gray.PNG", 53, mode="L")
  _image(root / "train" / "malignant" / "bitmap.bmp", 153)
  _image(root / "train" / "malignant" / "photo.JPG", 154)
  (root / "train" / "benign" / "notes.txt").write_text("not an image")
  _image(root / "train" / "benign" / ".hidden.png", 0)
  ds = datasets.load(f"folder:{root}")
  assert (ds.name, ds.num_classes, ds.path) == ("lesions", 2, str(root.resolve()))
  sizes = {"train": 9, "val": 2, "test": 4}
  for name, split in (("train", ds.train), ("val", ds.val), ("test", ds.test)):
    assert split.images.shape == (sizes[name], 6, 6, 3) and split.images.dtype == np.uint8
    assert split.labels.dtype == np.int32
    np.testing.assert_array_equal(split.labels, np.asarray(_ids(split)) // 100)  # JPEG: +-49
  gray = ds.train.images[np.asarray(_ids(ds.train)) == 53][0]
  assert (gray == 53).all()  # one channel repeated into three


def test_load_size_resizes_and_mixed_sizes_need_it(tmp_path):
  root = tmp_path / "scans"
  _image(root / "a" / "0.png", 10, size=(6, 6))
  _image(root / "a" / "1.png", 11, size=(9, 7))
  for i in range(2):
    _image(root / "a" / f"{i + 2}.png", 12 + i)
    _image(root / "b" / f"{i}.png", 90 + i, size=(12, 12))
  _image(root / "b" / "2.png", 92)
  _image(root / "b" / "3.png", 93)
  with pytest.raises(ValueError, match=r"1\.png: is 9x7 but earlier images are 6x6; set config.load_size"):
    folder.load(root)
  ds = folder.load(root, load_size=8)
  for split in (ds.train, ds.val, ds.test):
    assert split.images.shape[1:] == (8, 8, 3)
  assert len(ds.train.labels) + len(ds.val.labels) + len(ds.test.labels) == 8


def test_class_layout_is_split_stratified_seeded_and_disjoint(tmp_path):
  root = _class_tree(tmp_path / "pool", {"a": 10, "b": 20, "c": 30})
  load = lambda seed: folder.load(root, split_fractions=(0.6, 0.2, 0.2), split_seed=seed)
  ds = load(0)
  counts = {name: np.bincount(s.labels, minlength=3).tolist()
            for name, s in (("train", ds.train), ("val", ds.val), ("test", ds.test))}
  assert counts == {"train": [6, 12, 18], "val": [2, 4, 6], "test": [2, 4, 6]}
  ids = [_ids(s) for s in (ds.train, ds.val, ds.test)]
  assert sorted(sum(ids, [])) == sorted(80 * c + i for c, n in enumerate((10, 20, 30)) for i in range(n))
  for split in (ds.train, ds.val, ds.test):
    np.testing.assert_array_equal(split.labels, np.asarray(_ids(split)) // 80)
  assert [_ids(s) for s in (load(0).train, load(0).val)] == ids[:2]
  assert _ids(load(1).val) != ids[1]


def test_sha256_covers_names_and_bytes(tmp_path):
  root = _class_tree(tmp_path / "pool", {"a": 3, "b": 3})
  first = folder.load(root).sha256
  assert folder.load(root).sha256 == first
  _image(root / "a" / "0.png", 7)
  changed = folder.load(root).sha256
  assert changed != first
  (root / "a" / "0.png").rename(root / "a" / "9.png")
  assert folder.load(root).sha256 not in (first, changed)


def test_16_bit_grayscale_is_scaled_not_clipped(tmp_path):
  path = tmp_path / "xray.png"
  Image.fromarray(np.array([[0, 257 * 100], [65535, 32896]], np.uint16)).save(path)
  image = folder.decode_image(path.read_bytes(), 0, str(path))
  np.testing.assert_array_equal(image[..., 0], [[0, 100], [255, 128]])
  assert (image == image[..., :1]).all()


def _mixed_dirs(root):
  _class_tree(root / "train", {"a": 3})
  _image(root / "a" / "0.png", 1)


def _missing_class(root):
  _class_tree(root / "train", {"a": 3, "b": 3})
  _class_tree(root / "test", {"a": 3})


@pytest.mark.parametrize("make, error, fragments", [
    (lambda r: (_class_tree(r, {"a": 3}), (r / "b").mkdir()), ValueError,
     ["class folder", "/b has no images"]),
    (lambda r: (_class_tree(r, {"a": 3}), (r / "a" / "bad.png").write_bytes(b"not a png")),
     ValueError, ["a/bad.png: cannot read as an image"]),
    (_missing_class, ValueError, ["split folder", "/test lacks the class folders ['b']"]),
    (_mixed_dirs, ValueError, ["mixes split folders", "['a']"]),
    (lambda r: _class_tree(r, {"a": 3, "b": 2}), ValueError, ["class 1 has 2 images, too few"]),
    (lambda r: r.mkdir(), ValueError, ["has no class subdirectories"]),
    (lambda r: None, FileNotFoundError, ["does not exist"]),
])
def test_errors_name_the_folder_or_file(tmp_path, make, error, fragments):
  root = tmp_path / "data"
  make(root)
  with pytest.raises(error) as e:
    datasets.load(f"folder:{root}")
  for fragment in fragments:
    assert fragment in str(e.value)
  assert str(root) in str(e.value)


@pytest.mark.parametrize("dataset, parsed", [
    ("pneumoniamnist", ("medmnist", "pneumoniamnist")),
    ("folder:/data/x:y", ("folder", "/data/x:y")),
    ("tfds:patch_camelyon:2.0.0", ("tfds", "patch_camelyon:2.0.0")),
])
def test_parse_accepts_the_three_forms(dataset, parsed):
  assert datasets.parse(dataset) == parsed


@pytest.mark.parametrize("dataset", ["folder:", "tfds:", "hub:model", ":x"])
def test_parse_names_bad_forms(dataset):
  with pytest.raises(ValueError, match="expected NAME .*folder:PATH or tfds:NAME"):
    datasets.parse(dataset)


def test_medmnist_name_goes_to_the_medmnist_loader(shared_data_dir):
  ds = datasets.load("retinamnist", shared_data_dir, download=False)
  path = shared_data_dir / "retinamnist.npz"
  assert (ds.name, ds.path, ds.num_classes) == ("retinamnist", str(path), 5)
  assert ds.sha256 == hashlib.sha256(path.read_bytes()).hexdigest()


def test_train_and_test_only_gets_a_stratified_validation_split():
  labels = np.repeat([0, 1], [24, 8]).astype(np.int32)
  train = medmnist.Split(images=np.arange(32, dtype=np.uint8)[:, None], labels=labels)
  test = medmnist.Split(images=np.zeros((4, 1), np.uint8), labels=np.int32([0, 1, 0, 1]))
  out = datasets.complete_splits({"train": train, "test": test}, (0.7, 0.1, 0.2), 0, "toy")
  assert out["test"] is test
  # val takes 0.1 / (0.7 + 0.1) of each class: 3 of 24 and 1 of 8.
  assert np.bincount(out["val"].labels).tolist() == [3, 1]
  assert sorted(out["train"].images[:, 0].tolist() + out["val"].images[:, 0].tolist()) == list(range(32))


def test_balance_down_samples_every_class_to_the_smallest():
  labels = np.repeat([0, 1, 2], [12, 3, 7]).astype(np.int32)
  split = medmnist.Split(images=np.arange(22, dtype=np.uint8)[:, None], labels=labels)
  out = datasets.balance(split, seed=0)
  assert np.bincount(out.labels).tolist() == [3, 3, 3]
  ids = out.images[:, 0]
  np.testing.assert_array_equal(out.labels, labels[ids])  # rows of the input, with their labels
  assert (np.diff(ids) > 0).all()  # in their original order
  np.testing.assert_array_equal(datasets.balance(split, seed=0).images, out.images)
  assert not np.array_equal(datasets.balance(split, seed=1).images, out.images)
  assert datasets.balance(out, seed=5).images.tolist() == out.images.tolist()  # balanced stays
