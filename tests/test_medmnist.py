"""Tests for tuning.datasets.medmnist on the real files and on broken ones."""
from __future__ import annotations

import hashlib
import io
import pathlib
import urllib.error
import urllib.request

import hypothesis
from hypothesis import strategies as st
import numpy as np
import pytest

from tuning.datasets import medmnist


def _arrays(n: int = 6, rgb: bool = False) -> dict[str, np.ndarray]:
  """A small valid MedMNIST layout: labels 0..2 in every split."""
  shape = (n, 28, 28, 3) if rgb else (n, 28, 28)
  arrays = {}
  for split in medmnist.SPLITS:
    arrays[f"{split}_images"] = np.zeros(shape, np.uint8)
    arrays[f"{split}_labels"] = (np.arange(n) % 3).astype(np.uint8)[:, None]
  return arrays


def _write(directory: pathlib.Path, name: str = "toy", **arrays) -> pathlib.Path:
  path = directory / f"{name}.npz"
  np.savez(path, **arrays)
  return path


@pytest.mark.parametrize("name, num_classes, sizes, gray", [
    ("pneumoniamnist", 2, (4708, 524, 624), True),
    ("retinamnist", 5, (1080, 120, 400), False),
])
def test_load_real_files(shared_data_dir, name, num_classes, sizes, gray):
  ds = medmnist.load(name, shared_data_dir, download=False)
  assert ds.name == name
  assert ds.num_classes == num_classes
  for split, size in zip((ds.train, ds.val, ds.test), sizes):
    assert split.images.shape == (size, 28, 28, 3)
    assert split.images.dtype == np.uint8
    assert split.labels.shape == (size,)
    assert split.labels.dtype == np.int32
    assert set(np.unique(split.labels)) == set(range(num_classes))
    channels_equal = (np.array_equal(split.images[..., 0], split.images[..., 1])
                      and np.array_equal(split.images[..., 0], split.images[..., 2]))
    assert channels_equal == gray
  path = shared_data_dir / f"{name}.npz"
  assert ds.path == str(path)
  assert ds.sha256 == hashlib.sha256(path.read_bytes()).hexdigest()


def test_load_synthetic_rgb(tmp_path):
  arrays = _arrays(rgb=True)
  arrays["test_labels"][:] = 4
  ds = medmnist.load("toy", _write(tmp_path, **arrays).parent, download=False)
  assert ds.num_classes == 5
  assert ds.train.images.shape == (6, 28, 28, 3)


@pytest.mark.parametrize("change, fragments", [
    (lambda a: a.pop("val_labels"), ["'val_labels'", "missing key"]),
    (lambda a: a.update(train_images=a["train_images"].astype(np.float32)),
     ["'train_images'", "uint8"]),
    (lambda a: a.update(test_images=np.zeros((6, 28, 28, 4), np.uint8)),
     ["'test_images'", "(6, 28, 28, 4)"]),
    (lambda a: a.update(val_images=np.zeros((6, 28), np.uint8)),
     ["'val_images'", "(6, 28)"]),
    (lambda a: a.update(train_labels=a["train_labels"].astype(np.float32)),
     ["'train_labels'", "integers"]),
    (lambda a: a.update(train_labels=np.full((6, 3), 2, np.uint8)),
     ["'train_labels'", "multi-label", "expected 0/1"]),
    (lambda a: a.update(train_labels=np.zeros((6, 3), np.uint8)),  # the others are (6, 1)
     ["'val_labels'", "(6, 1)", "'train_labels'", "(6, 3)", "same kind"]),
    (lambda a: a.update(**{f"{s}_labels": np.zeros((6, 3 if s == "test" else 4), np.uint8)
                           for s in medmnist.SPLITS}),
     ["'test_labels'", "(6, 3)", "(6, 4)"]),
    (lambda a: a.update(val_labels=np.zeros((6, 1, 1), np.uint8)),
     ["'val_labels'", "(6, 1, 1)", "(N, L) 0/1 multi-label"]),
    (lambda a: a.update(val_labels=a["val_labels"][:5]),
     ["'val_labels'", "5 labels", "6 images"]),
    (lambda a: a.update(test_labels=np.full((6, 1), -1, np.int64)),
     ["'test_labels'", "[0, num_classes)"]),
    (lambda a: a.update(test_images=np.zeros((0, 28, 28), np.uint8),
                        test_labels=np.zeros((0, 1), np.uint8)),
     ["'test'", "empty"]),
])
def test_invalid_contents_name_file_and_key(tmp_path, change, fragments):
  arrays = _arrays()
  change(arrays)
  path = _write(tmp_path, **arrays)
  with pytest.raises(ValueError) as info:
    medmnist.load("toy", tmp_path, download=False)
  for fragment in [str(path), *fragments]:
    assert fragment in str(info.value)


def test_load_multi_label_file(tmp_path):
  """ChestMNIST's layout: (N, 14) 0/1 findings per image."""
  arrays = _arrays()
  for split in medmnist.SPLITS:
    arrays[f"{split}_labels"] = (np.arange(6 * 14).reshape(6, 14) % 3 == 0).astype(np.uint8)
  ds = medmnist.load("toy", _write(tmp_path, **arrays).parent, download=False)
  assert ds.num_classes == 14  # the model's outputs: one per label
  for split in (ds.train, ds.val, ds.test):
    assert split.multi_label
    assert split.labels.shape == (6, 14) and split.labels.dtype == np.int32
    np.testing.assert_array_equal(split.labels, arrays["train_labels"])
  assert not medmnist.load("toy", _write(tmp_path, **_arrays()).parent, download=False).train.multi_label


def test_truncated_file(tmp_path, shared_data_dir):
  data = (shared_data_dir / "pneumoniamnist.npz").read_bytes()
  path = tmp_path / "pneumoniamnist.npz"
  path.write_bytes(data[:len(data) // 2])
  with pytest.raises(ValueError, match="truncated or corrupt") as info:
    medmnist.load("pneumoniamnist", tmp_path, download=False)
  assert str(path) in str(info.value)


def test_npy_instead_of_npz(tmp_path):
  path = tmp_path / "toy.npz"
  with open(path, "wb") as f:
    np.save(f, np.zeros(3))
  with pytest.raises(ValueError, match="expected an .npz archive") as info:
    medmnist.load("toy", tmp_path, download=False)
  assert str(path) in str(info.value)


def test_missing_file_without_download_lists_available(tmp_path):
  _write(tmp_path, "other", **_arrays())
  with pytest.raises(FileNotFoundError) as info:
    medmnist.load("toy", tmp_path, download=False)
  message = str(info.value)
  assert "unknown dataset 'toy'" in message
  assert str(tmp_path / "toy.npz") in message
  assert "found in" in message and "other" in message


def test_rejects_path_like_names(tmp_path):
  with pytest.raises(ValueError, match="dataset name"):
    medmnist.load("../toy", tmp_path, download=False)


def test_failed_download_names_path_url_and_fix(tmp_path, monkeypatch):
  def fail(url, timeout):
    del timeout
    raise urllib.error.URLError(f"no route to {url}")
  monkeypatch.setattr(urllib.request, "urlopen", fail)
  with pytest.raises(RuntimeError) as info:
    medmnist.load("toy", tmp_path / "sub")
  message = str(info.value)
  assert str(tmp_path / "sub" / "toy.npz") in message
  assert medmnist.URL.format(name="toy") in message
  assert "TUNING_DATA_DIR" in message and "config.data_dir" in message
  assert not list((tmp_path / "sub").iterdir())


def test_download_writes_file_then_loads(tmp_path, serve_url):
  buffer = io.BytesIO()
  np.savez(buffer, **_arrays())
  payload = buffer.getvalue()
  requested = serve_url(payload)
  ds = medmnist.load("toy", tmp_path)
  assert requested == ["https://zenodo.org/records/10519652/files/toy.npz?download=1"]
  assert [p.name for p in tmp_path.iterdir()] == ["toy.npz"]
  assert ds.sha256 == hashlib.sha256(payload).hexdigest()
  assert ds.num_classes == 3


def test_data_dir_precedence(tmp_path, monkeypatch):
  monkeypatch.setenv("TUNING_DATA_DIR", str(tmp_path / "env"))
  monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
  assert medmnist.data_dir(str(tmp_path / "arg")) == tmp_path / "arg"
  assert medmnist.data_dir() == tmp_path / "env"
  monkeypatch.setenv("TUNING_DATA_DIR", "")
  assert medmnist.data_dir("") == tmp_path / "xdg" / "tuning" / "data"
  monkeypatch.delenv("TUNING_DATA_DIR")
  monkeypatch.delenv("XDG_CACHE_HOME")
  monkeypatch.setenv("HOME", str(tmp_path / "home"))
  assert medmnist.data_dir(None) == tmp_path / "home" / ".cache" / "tuning" / "data"


def test_load_uses_env_dir(shared_data_dir, monkeypatch):
  monkeypatch.setenv("TUNING_DATA_DIR", str(shared_data_dir))
  assert medmnist.load("retinamnist", download=False).num_classes == 5


def test_available(tmp_path, shared_data_dir):
  assert medmnist.available(tmp_path / "absent") == []
  assert {"pneumoniamnist", "retinamnist"} <= set(medmnist.available(shared_data_dir))


def _toy_split() -> medmnist.Split:
  """Imbalanced classes (40, 7, 2, 1); pixel (0, 0, 0) holds the example id."""
  labels = np.repeat(np.arange(4), [40, 7, 2, 1]).astype(np.int32)
  images = np.zeros((len(labels), 1, 1, 3), np.uint8)
  images[:, 0, 0, 0] = np.arange(len(labels))
  return medmnist.Split(images=images, labels=labels)


def _ids(split: medmnist.Split) -> set[int]:
  return set(split.images[:, 0, 0, 0].tolist())


@hypothesis.settings(deadline=None, max_examples=50)
@hypothesis.given(
    fraction=st.floats(0.001, 1.0), seed=st.integers(0, 2**32 - 1))
def test_subsample_stratified_at_least_one_per_class(fraction, seed):
  split = _toy_split()
  sub = medmnist.subsample(split, fraction, seed)
  for c, n in enumerate([40, 7, 2, 1]):
    assert np.count_nonzero(sub.labels == c) == max(1, round(fraction * n))
  ids = np.array(sorted(_ids(sub)))
  np.testing.assert_array_equal(sub.labels, split.labels[ids])


@hypothesis.settings(deadline=None, max_examples=50)
@hypothesis.given(
    fractions=st.lists(st.floats(0.001, 1.0), min_size=2, max_size=2),
    seed=st.integers(0, 2**32 - 1))
def test_subsample_nested(fractions, seed):
  small, large = sorted(fractions)
  split = _toy_split()
  assert _ids(medmnist.subsample(split, small, seed)) <= _ids(
      medmnist.subsample(split, large, seed))


def test_subsample_deterministic_per_seed():
  split = _toy_split()
  a, b = (medmnist.subsample(split, 0.5, seed=7) for _ in range(2))
  np.testing.assert_array_equal(a.images, b.images)
  others = [_ids(medmnist.subsample(split, 0.5, seed=s)) for s in range(8, 12)]
  assert any(ids != _ids(a) for ids in others)


def test_subsample_full_fraction_is_identity():
  split = _toy_split()
  assert medmnist.subsample(split, 1.0, seed=0) is split


@pytest.mark.parametrize("fraction", [0.0, -0.5, 1.5, float("nan")])
def test_subsample_rejects_fraction_out_of_range(fraction):
  with pytest.raises(ValueError, match=r"fraction must be in \(0, 1\]"):
    medmnist.subsample(_toy_split(), fraction, seed=0)


def _multi_label_split() -> medmnist.Split:
  """60 images, 3 labels with 30, 12 and 4 positives, co-occurring; 28 images have none.

  Pixel (0, 0, 0) holds the example id.
  """
  labels = np.zeros((60, 3), np.int32)
  labels[:30, 0] = 1
  labels[20:32, 1] = 1  # 10 of them also label 0
  labels[28:32, 2] = 1  # all also labels 0 or 1
  images = np.zeros((60, 1, 1, 3), np.uint8)
  images[:, 0, 0, 0] = np.arange(60)
  return medmnist.Split(images=images, labels=labels)


def test_multi_label_strata_are_each_images_rarest_positive_label():
  strata = medmnist.strata(_multi_label_split().labels)
  want = np.r_[np.zeros(20), np.ones(8), np.full(4, 2), np.full(28, 3)]  # 3: no positive label
  np.testing.assert_array_equal(strata, want)
  labels = np.array([[1, 1, 0], [0, 1, 1], [1, 0, 1]])  # counts tie (2 each): the first one
  np.testing.assert_array_equal(medmnist.strata(labels), [0, 1, 0])


@hypothesis.settings(deadline=None, max_examples=50)
@hypothesis.given(
    fractions=st.lists(st.floats(0.001, 1.0), min_size=2, max_size=2),
    seed=st.integers(0, 2**32 - 1))
def test_multi_label_subsample_is_stratified_nested_and_keeps_every_label(fractions, seed):
  small, large = sorted(fractions)
  split = _multi_label_split()
  sub = medmnist.subsample(split, small, seed)
  kept = medmnist.strata(split.labels)[sorted(_ids(sub))]
  for c, n in enumerate([20, 8, 4, 28]):
    assert np.count_nonzero(kept == c) == max(1, round(small * n))
  assert sub.multi_label and (sub.labels.sum(axis=0) > 0).all()  # even the rarest label
  np.testing.assert_array_equal(sub.labels, split.labels[sorted(_ids(sub))])
  assert _ids(sub) <= _ids(medmnist.subsample(split, large, seed))
