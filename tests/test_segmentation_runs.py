"""Segmentation runs end to end: a user's `segmentation:` file, made here, to a boundary error."""
from __future__ import annotations

import math

import numpy as np
import pytest

from tuning import config as config_lib
from tuning import datasets, report, train
from tuning.tasks import segmentation

HEIGHT, WIDTH, PATCH = 24, 24, 9
SPLIT = ["train"] * 4 + ["val"] * 2 + ["test"] * 2
PIXEL_UM = np.linspace(10.0, 17.0, len(SPLIT))  # one vertical pixel size per image


def _arrays(seed: int = 0) -> dict[str, np.ndarray]:
  """Three noisy horizontal bands (dark, mid, bright) under two wavy interfaces: each
  interface is the first row of the band below it."""
  rng = np.random.default_rng(seed)
  columns = np.arange(WIDTH)
  images, boundaries = [], []
  for i in range(len(SPLIT)):
    upper = 8 + np.round(2 * np.sin(columns / 3 + i))
    rows = np.stack([upper, upper + 7])
    band = (np.arange(HEIGHT)[:, None] >= rows[:, None]).sum(axis=0)  # 0, 1, 2 per pixel
    images.append((40 + 90 * band + rng.integers(0, 20, band.shape)).astype(np.uint8))
    boundaries.append(rows)
  return {"images": np.stack(images), "boundaries": np.stack(boundaries),
          "pixel_size_um": PIXEL_UM, "split": np.array(SPLIT)}


def _oracle(offset: int = 0):
  """A 'network' that reads the classes off the bands: an interface pixel is the first of
  its band. `offset` > 0 reads the pixel `offset` rows below the center instead, so it
  traces every interface `offset` rows too high."""
  def predict(patches: np.ndarray) -> np.ndarray:
    assert patches.dtype == np.uint8 and patches.shape[1:] == (PATCH, PATCH, 3)
    band = np.digitize(patches[..., 0], [85, 175])
    center, above = band[:, PATCH // 2 + offset, PATCH // 2], band[:, PATCH // 2 + offset - 1,
                                                                     PATCH // 2]
    classes = np.where((center == 1) & (above == 0), 1, 0) + np.where(
        (center == 2) & (above == 1), 2, 0)
    return np.eye(3, dtype=np.float32)[classes]
  return predict


def _write(path, arrays):
  np.savez(path, **arrays)
  return path


def _load(path, smooth=1):
  return datasets.load(f"segmentation:{path}", patch_size=PATCH, smooth=smooth,
                       split_fractions=(0.7, 0.1, 0.2), split_seed=0)


@pytest.fixture(scope="module")
def run(tmp_path_factory, shared_data_dir):
  """One tiny real run: MobileNet V1 0.25's head on cached features, so the dense test
  maps need the whole model (an eval step from block 0)."""
  data = _write(tmp_path_factory.mktemp("data") / "layers.npz", _arrays())
  config = config_lib.defaults()
  config.update(dataset=f"segmentation:{data}", arch="mobilenet_v1_0.25",
                weights="mobilenet_v1_0.25_128_quant.tflite", weights_format="tflite",
                weights_dir=str(shared_data_dir.parent / "weights"), scheme="head",
                schemes=("head",), image_size=32, patch_size=PATCH, batch_size=32, epochs=2,
                progress=False)
  workdir = tmp_path_factory.mktemp("run")
  return train.train_and_evaluate(config, str(workdir)), workdir


def test_the_row_holds_the_boundary_error_of_the_whole_test_images(run):
  row, workdir = run
  assert row["feature_cache"] and row["boundary_error_unit"] == "um"
  assert math.isfinite(row["test_boundary_error"]) and math.isfinite(row["test_auc"])
  assert len(row["test_boundary_error_per_interface"]) == 2
  with np.load(workdir / row["predictions"]) as saved:
    errors, traced, probs = saved["boundary_errors"], saved["boundary_rows"], saved["probs"]
  assert probs.shape[1] == 3 and traced.shape == (2, 2, WIDTH)
  test = np.flatnonzero(np.array(SPLIT) == "test")
  np.testing.assert_allclose(errors, segmentation.mean_boundary_distance(
      traced, _arrays()["boundaries"][test], PIXEL_UM[test, None]))
  assert row["test_boundary_error"] == pytest.approx(errors.mean())
  np.testing.assert_allclose(row["test_boundary_error_per_interface"], errors.mean(axis=0))


def test_the_report_has_a_boundary_error_column(run):
  row, workdir = run
  text = open(report.write_report(str(workdir)), encoding="utf-8").read()
  assert ("| scheme | seeds | boundary error (µm, lower is better) | interface 1 | interface 2 |"
          in text)
  assert f"| head | 1 | {row['test_boundary_error']:.2f} |" in text
  assert not list(workdir.glob("*froc*"))


def test_evaluate_is_tasks_segmentation_on_the_models_dense_maps(tmp_path):
  arrays = _arrays()
  dataset = _load(_write(tmp_path / "s.npz", arrays), smooth=3)
  test = np.flatnonzero(arrays["split"] == "test")
  metrics, saved = dataset.evaluate(None, _oracle())
  assert metrics["test_boundary_error"] == 0.0 and not saved["boundary_errors"].any()
  shifted = _oracle(offset=1)
  metrics, saved = dataset.evaluate(None, shifted)
  # One row too high in every column: an error of one pixel, in each image's micrometres.
  np.testing.assert_allclose(saved["boundary_errors"], PIXEL_UM[test, None].repeat(2, axis=1))
  direct = np.stack([segmentation.boundaries_from_probability(segmentation.probability_map(
      np.repeat(arrays["images"][i][..., None], 3, -1), shifted, PATCH), (1, 2), 3) for i in test])
  np.testing.assert_array_equal(saved["boundary_rows"], direct)
  assert metrics["test_boundary_error"] == pytest.approx(PIXEL_UM[test].mean())


def test_without_pixel_sizes_errors_are_in_pixels(tmp_path):
  arrays = _arrays()
  del arrays["pixel_size_um"]
  metrics, saved = _load(_write(tmp_path / "s.npz", arrays)).evaluate(None, _oracle(offset=1))
  assert metrics["boundary_error_unit"] == "px" and metrics["test_boundary_error"] == 1.0
  np.testing.assert_array_equal(saved["boundary_errors"], 1.0)


def test_splits_are_class_balanced_patches_centered_on_their_pixels(tmp_path):
  arrays = _arrays()
  dataset = _load(_write(tmp_path / "s.npz", arrays))
  assert dataset.num_classes == 3
  for split, n_images in ((dataset.train, 4), (dataset.val, 2), (dataset.test, 2)):
    assert split.images.shape == (n_images * 3 * WIDTH, PATCH, PATCH, 3)
    np.testing.assert_array_equal(np.bincount(split.labels), [n_images * WIDTH] * 3)
  # The oracle classifies the stored patches as they are labelled.
  np.testing.assert_array_equal(np.argmax(_oracle()(dataset.train.images), axis=1),
                                dataset.train.labels)


@pytest.mark.parametrize("change, fragments", [
    (lambda a: {k: v for k, v in a.items() if k != "boundaries"}, ["missing key(s) 'boundaries'"]),
    (lambda a: {**a, "boundaries": a["boundaries"][..., :-1]}, ["'boundaries'", "(8, K, 24)"]),
    (lambda a: {**a, "boundaries": a["boundaries"] + HEIGHT}, ["'boundaries'", "24 rows"]),
    (lambda a: {**a, "pixel_size_um": -PIXEL_UM}, ["'pixel_size_um'", "positive micrometres"]),
    (lambda a: {**a, "images": a["images"][..., None].repeat(2, -1)}, ["'images'", "RGB"]),
])
def test_bad_files_are_errors_naming_the_file_and_key(tmp_path, change, fragments):
  path = _write(tmp_path / "bad.npz", change(_arrays()))
  with pytest.raises(ValueError) as error:
    _load(path)
  for fragment in (str(path), *fragments):
    assert fragment in str(error.value)


def test_config_checks_the_boundary_smoothing():
  config = config_lib.defaults()
  config.dataset, config.boundary_smooth = "segmentation:/nowhere/layers.npz", 2
  with pytest.raises(ValueError, match=r"config.boundary_smooth = 2: expected an odd number"):
    config_lib.validate(config)
  config.boundary_smooth = 3
  config_lib.validate(config)
