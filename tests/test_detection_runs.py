"""Detection runs end to end: a user's `detection:` file, made here, to a FROC row and plot."""
from __future__ import annotations

import math

import numpy as np
import pytest

from tuning import config as config_lib
from tuning import datasets, report, train
from tuning.tasks import detection

SIZE = 48
GRID = dict(scales=(1.0, 1.5), shifts=(0.0,), flips=True)  # 16 patches per candidate
SPLIT = ["train"] * 5 + ["val"] * 2 + ["test"] * 2


def _arrays(seed: int = 0) -> dict[str, np.ndarray]:
  """Dark noisy images with two bright disks each (lesions 1 and 2, top-left and bottom-right),
  a box on each disk and two on background; the last image has a third lesion no box reaches."""
  rng = np.random.default_rng(seed)
  n = len(SPLIT)
  images = rng.integers(0, 60, (n, SIZE, SIZE), dtype=np.uint8)
  lesions = np.zeros((n, SIZE, SIZE), np.int32)
  rows, cols = np.mgrid[:SIZE, :SIZE]
  candidates = []
  for i in range(n):
    centers = [rng.integers(8, 16, 2), rng.integers(32, 40, 2)]
    if i == n - 1:
      centers.append(np.array([3, 44]))  # in the top-right corner, beyond every box
    for k, (y, x) in enumerate(centers, start=1):
      disk = (rows - y) ** 2 + (cols - x) ** 2 <= 16
      images[i][disk], lesions[i][disk] = 220, k
      if k <= 2:
        candidates.append((i, y - 6, x - 6, y + 6, x + 6))
    for y, x in (rng.integers(8, 16, 2) + [0, 24], rng.integers(32, 40, 2) - [0, 24]):
      candidates.append((i, y - 6, x - 6, y + 6, x + 6))
  return {"images": images, "lesions": lesions, "candidates": np.array(candidates),
          "split": np.array(SPLIT)}


def _write(path, arrays):
  np.savez(path, **arrays)
  return path


def _config(path):
  config = config_lib.defaults()
  config.update(dataset=f"detection:{path}", arch="mobilenet_v1_0.25",
                weights="mobilenet_v1_0.25_128_quant.tflite", weights_format="tflite",
                scheme="head", schemes=("head",),
                image_size=32, patch_size=16, detection_scales=GRID["scales"],
                detection_shifts=GRID["shifts"], froc_fp_rates=(0.5, 2.0), batch_size=32,
                epochs=2, progress=False)
  return config


@pytest.fixture(scope="module")
def run(tmp_path_factory, shared_data_dir):
  """One tiny real run (MobileNet V1 0.25's head on cached features) and its workdir."""
  data = _write(tmp_path_factory.mktemp("data") / "blobs.npz", _arrays())
  config = _config(data)
  config.weights_dir = str(shared_data_dir.parent / "weights")
  workdir = tmp_path_factory.mktemp("run")
  return train.train_and_evaluate(config, str(workdir)), workdir, data


def test_the_row_holds_froc_metrics_at_the_operating_points(run):
  row, workdir, _ = run
  assert set(row["test_froc_sensitivity"]) == {"0.5", "2"}
  for value in (row["test_cpm"], *row["test_froc_sensitivity"].values(), row["test_auc"]):
    assert math.isfinite(value) and 0 <= value <= 1
  with np.load(workdir / row["predictions"]) as saved:
    assert {"labels", "probs", "froc_fp_per_image", "froc_sensitivity", "froc_thresholds"} <= set(
        saved.files)
    # 2 test images x 4 candidates x 16 patches; the lesion no candidate reached stays missed.
    assert saved["probs"].shape == (2 * 4 * 16, 2)
    assert saved["probs"][:, 1].std() > 0.01, "constant scores would make a degenerate curve"
    assert saved["froc_sensitivity"].max() == pytest.approx(4 / 5)


def test_the_row_is_tasks_detection_on_the_saved_test_predictions(run):
  """Recomputed from the saved patch probabilities with tasks.detection alone."""
  row, workdir, data = run
  with np.load(workdir / row["predictions"]) as saved:
    labels, probs = saved["labels"], saved["probs"]
    fp, sensitivity = saved["froc_fp_per_image"], saved["froc_sensitivity"]
  arrays = _arrays()
  scores, is_true, lesion_ids, n_lesions, offset = [], [], [], 0, 0
  for i in np.flatnonzero(arrays["split"] == "test"):
    image = np.repeat(arrays["images"][i][..., None], 3, axis=-1)
    boxes = arrays["candidates"][arrays["candidates"][:, 0] == i, 1:].astype(float)
    _, index = detection.candidate_patches(image, boxes, size=16, **GRID)
    scores.append(detection.aggregate(probs[offset:offset + len(index), 1], index))
    true, ids = detection.match_candidates(boxes, arrays["lesions"][i])
    np.testing.assert_array_equal(labels[offset:offset + len(index)], true[index])
    is_true.append(true)
    lesion_ids.append(100 * i + ids)
    n_lesions += len(np.unique(arrays["lesions"][i])) - 1
    offset += len(index)
  assert offset == len(probs)
  curve = detection.froc(np.concatenate(scores), np.concatenate(is_true),
                         np.concatenate(lesion_ids), n_images=2, n_lesions=n_lesions)
  assert row["test_cpm"] == curve.cpm()
  assert row["test_froc_sensitivity"] == {"0.5": curve.sensitivity_at(0.5),
                                          "2": curve.sensitivity_at(2.0)}
  np.testing.assert_array_equal(fp, curve.fp_per_image)
  np.testing.assert_array_equal(sensitivity, curve.sensitivity)


def test_the_report_has_a_froc_plot_and_froc_columns(run):
  row, workdir, _ = run
  text = open(report.write_report(str(workdir)), encoding="utf-8").read()
  assert "| scheme | seeds | CPM | sens @ 0.5 FP/image | sens @ 2 FP/image |" in text
  assert f"| head | 1 | {row['test_cpm']:.3f} |" in text
  plots = list(workdir.glob("*-froc-f1.png"))
  assert len(plots) == 1 and f"]({plots[0].name})" in text
  # A ':' (of "detection:PATH") in a relative link would read as a URL scheme.
  assert all(":" not in link.split(")")[0] for link in text.split("](")[1:])


def test_the_training_split_is_every_training_candidates_patches(tmp_path):
  arrays = _arrays()
  dataset = datasets.load(f"detection:{_write(tmp_path / 'd.npz', arrays)}", patch_size=16,
                          fp_rates=(1.0,), split_fractions=(0.7, 0.1, 0.2), split_seed=0, **GRID)
  assert isinstance(dataset, datasets.PatchDataset) and dataset.num_classes == 2
  for split, n_images in ((dataset.train, 5), (dataset.val, 2), (dataset.test, 2)):
    assert split.images.shape == (n_images * 4 * 16, 16, 16, 3)
    np.testing.assert_array_equal(np.bincount(split.labels), [n_images * 2 * 16] * 2)
  # The identity orientation of a candidate's first patch is its box, resized.
  np.testing.assert_array_equal(dataset.train.images[0], detection.candidate_patches(
      np.repeat(arrays["images"][0][..., None], 3, -1), arrays["candidates"][:1, 1:].astype(float),
      size=16, scales=(1.0,), shifts=(0.0,), flips=False)[0][0])


def test_without_a_split_array_images_are_carved_whole(tmp_path):
  arrays = _arrays()
  del arrays["split"]
  dataset = datasets.load(f"detection:{_write(tmp_path / 'd.npz', arrays)}", patch_size=16,
                          fp_rates=(1.0,), split_fractions=(5, 2, 2), split_seed=0, **GRID)
  # Every image holds a lesion: one stratum, 9 images in 5 : 2 : 2, 64 patches each.
  assert [len(s.labels) for s in (dataset.train, dataset.val, dataset.test)] == [320, 128, 128]


def _drop(key):
  return lambda a: {k: v for k, v in a.items() if k != key}


@pytest.mark.parametrize("change, fragments", [
    (_drop("lesions"), ["missing key(s) 'lesions'"]),
    (lambda a: {**a, "images": a["images"].astype(np.float32)}, ["'images'", "float32"]),
    (lambda a: {**a, "lesions": a["lesions"][:, :-1]}, ["'lesions'", "(9, 47, 48)"]),
    (lambda a: {**a, "candidates": a["candidates"][:, :4]}, ["'candidates'", "(M, 5)"]),
    (lambda a: {**a, "candidates": np.r_[a["candidates"], [[9, 0, 0, 4, 4]]]},
     ["'candidates' rows [36]"]),
    (lambda a: {**a, "split": np.array(["train"] * 8 + ["tset"])}, ["'split'"]),
    (lambda a: {**a, "candidates": a["candidates"][(a["candidates"][:, 0] < 5)
                                                   | (a["candidates"][:, 0] > 6)]},
     ["val split", "candidates both on and off lesions"]),
])
def test_bad_files_are_errors_naming_the_file_and_key(tmp_path, change, fragments):
  path = _write(tmp_path / "bad.npz", change(_arrays()))
  with pytest.raises(ValueError) as error:
    datasets.load(f"detection:{path}", patch_size=16, fp_rates=(1.0,),
                  split_fractions=(0.7, 0.1, 0.2), split_seed=0, **GRID)
  for fragment in (str(path), *fragments):
    assert fragment in str(error.value)


def test_config_takes_detection_sources_and_checks_the_operating_points():
  config = _config("/nowhere/blobs.npz")
  config_lib.validate(config)  # the file is read by the run, not by validation
  config.froc_fp_rates, config.detection_scales = (), (1.0, -1.0)
  with pytest.raises(ValueError, match=r"froc_fp_rates = \(\): expected a non-empty") as error:
    config_lib.validate(config)
  assert "config.detection_scales = (1.0, -1.0)" in str(error.value)
  assert datasets.parse("detection:a/b.npz") == ("detection", "a/b.npz")
  with pytest.raises(ValueError, match="detection:PATH.npz"):
    datasets.parse("detection:")
