"""Multi-label classification end to end: (N, L) 0/1 labels from the file to the report.

The data are synthetic MedMNIST-format files in ChestMNIST's layout (ChestMNIST
itself is not available offline): label j brightens band j of the image, so a
network can learn every label.
"""
from __future__ import annotations

import json
import math

import numpy as np
import pytest

from tuning import config as config_lib
from tuning import datasets, input_pipeline, report, stats, train
from tuning.datasets import medmnist
from tuning.preprocess import MINUS_ONE_TO_ONE
from tuning.tasks import classification

NUM_LABELS = 3


def _split(n: int, seed: int, rate: float = 0.4) -> medmnist.Split:
  rng = np.random.default_rng(seed)
  labels = (rng.random((n, NUM_LABELS)) < rate).astype(np.int32)
  images = rng.integers(0, 60, (n, 28, 28)).astype(np.uint8)
  for j in range(NUM_LABELS):
    images[labels[:, j] == 1, :, 9 * j:9 * j + 9] += 150
  return medmnist.Split(images=np.repeat(images[..., None], 3, axis=-1), labels=labels)


def _write_npz(directory, name: str = "toymnist") -> None:
  arrays = {}
  for seed, (split, n) in enumerate((("train", 64), ("val", 32), ("test", 32))):
    data = _split(n, seed)
    arrays[f"{split}_images"] = data.images[..., 0]  # grayscale, as ChestMNIST
    arrays[f"{split}_labels"] = data.labels.astype(np.uint8)
  np.savez(directory / f"{name}.npz", **arrays)


def test_carved_splits_keep_every_stratum_in_every_part():
  images = np.zeros((200, 1, 1, 3), np.uint8)
  images[:, 0, 0, 0] = np.arange(200)  # the row id, to find each part's rows in `split`
  split = medmnist.Split(images=images, labels=_split(200, 0, rate=0.1).labels)
  parts = datasets.complete_splits({"train": split}, (0.7, 0.1, 0.2), seed=0, where="toy")
  strata = medmnist.strata(split.labels)
  rows = {name: part.images[:, 0, 0, 0] for name, part in parts.items()}
  assert sorted(np.concatenate(list(rows.values()))) == list(range(200))
  for name, part in parts.items():
    assert part.multi_label
    np.testing.assert_array_equal(part.labels, split.labels[rows[name]])
    assert set(strata[rows[name]]) == set(strata), name
    assert (part.labels.sum(axis=0) > 0).all(), name  # every label has positives to score


def test_carving_too_small_a_stratum_is_named():
  split = medmnist.Split(images=np.zeros((4, 1, 1, 3), np.uint8),
                         labels=np.array([[1, 0], [0, 0], [0, 0], [0, 0]], np.int32))
  with pytest.raises(ValueError, match="toy: the stratum of rarest positive label 0 has 1 images"):
    datasets.stratified_split(split, (0.7, 0.3), seed=0, where="toy")


def test_balance_refuses_multi_label_naming_the_config_field():
  with pytest.raises(ValueError, match=r"config\.balance.*multi-label \(20, 3\)"):
    datasets.balance(_split(20, 0), seed=0)


def test_the_input_pipeline_carries_label_vectors():
  split = _split(10, 0)
  common = dict(batch_size=4, image_size=8, preprocess=MINUS_ONE_TO_ONE)
  batch = next(iter(input_pipeline.train_batches(split, seed=0, **common)))
  assert batch["label"].shape == (4, NUM_LABELS)
  batches = list(input_pipeline.eval_batches(split, **common))
  labels = np.concatenate([b["label"][b["mask"]] for b in batches])
  np.testing.assert_array_equal(labels, split.labels)
  assert batches[-1]["label"].shape == (4, NUM_LABELS) and not batches[-1]["label"][2:].any()
  features = np.arange(10, dtype=np.float32)[:, None]
  batch = next(iter(input_pipeline.feature_train_batches(features, split.labels, batch_size=4,
                                                         seed=0)))
  np.testing.assert_array_equal(batch["label"], split.labels[batch["image"][:, 0].astype(int)])
  batches = list(input_pipeline.feature_eval_batches(features, split.labels, batch_size=4))
  np.testing.assert_array_equal(np.concatenate([b["label"][b["mask"]] for b in batches]),
                                split.labels)


def _write_run(workdir, scheme: str, noise: float, val_auc: float, num_labels: int) -> dict:
  """A multi-label row and its test predictions; the last label has no positives."""
  rng = np.random.default_rng(0)
  labels = (rng.random((200, num_labels)) < 0.3).astype(np.int32)
  labels[:, -1] = 0
  shared = rng.normal(size=labels.shape)  # the same images are hard for every scheme
  own = np.random.default_rng(len(scheme)).normal(size=labels.shape)
  probs = 1 / (1 + np.exp(-(2.0 * labels - 1.0 + noise * (0.7 * shared + 0.3 * own))))
  metrics = classification.evaluate(labels, probs)
  row = {"dataset": "toymnist", "arch": "a", "weights": "w", "scheme": scheme, "seed": 0,
         "train_fraction": 1.0, "test_auc": metrics["auc"], "test_acc": metrics["acc"],
         "test_sens_at_fpr10": metrics["sens_at_fpr10"], "test_label_aucs": metrics["label_aucs"],
         "val_auc": val_auc, "n_trainable_params": len(scheme), "best_epoch": 1, "wall_s": 1.0,
         "n_train": 10, "image_size": 8, "batch_size": 4, "diverged_at_epoch": None,
         "predictions": train.save_predictions(str(workdir), scheme, labels, probs)}
  train.append_result(str(workdir / report.RESULTS), row)
  return row


@pytest.mark.parametrize("num_labels", [2, 4])  # 2: two columns, yet not a binary task
def test_the_report_tests_multi_label_macro_auc_by_paired_bootstrap(tmp_path, num_labels):
  for scheme, noise, val_auc in (("scratch", 2.0, 0.6), ("middle", 0.82, 0.8), ("deep", 0.8, 0.9)):
    row = _write_run(tmp_path, scheme, noise, val_auc, num_labels)
    assert row["test_label_aucs"][-1] is None and None not in row["test_label_aucs"][:-1]
  rows = [{**r, "_workdir": str(tmp_path)} for r in report.read_results(str(tmp_path))]
  schemes = {s.name: s for s in report.summarize(rows)}
  assert schemes["scratch"].p_vs_best < 1e-3 and schemes["middle"].p_vs_best > report.ALPHA
  for s in schemes.values():  # one seed: bootstrap intervals over test images
    assert s.low < s.test_auc < s.high
  text = open(report.write_report(str(tmp_path)), encoding="utf-8").read()
  assert "Multi-label: test AUC is the macro mean" in text and "`test_label_aucs`" in text
  assert not list(tmp_path.glob("*-roc.png")) and list(tmp_path.glob("*-depth.png"))


def test_bootstraps_resample_label_rows_within_their_rarest_label():
  labels = _split(40, 1).labels
  probs = np.random.default_rng(0).random(labels.shape)
  strata = medmnist.strata(labels)
  for index in stats._resamples(strata, 5, seed=0):  # pylint: disable=protected-access
    np.testing.assert_array_equal(np.bincount(strata[index]), np.bincount(strata))
  # The metric sees each resampled image's own label row with its scores.
  got = stats.bootstrap_ci(labels, probs, classification.roc_auc, samples=20, strata=strata)
  values = [classification.roc_auc(labels[i], probs[i])
            for i in stats._resamples(strata, 20, seed=0)]  # pylint: disable=protected-access
  np.testing.assert_allclose(got, np.percentile(values, [2.5, 97.5]))


def test_train_and_report_a_multi_label_sweep(tmp_path, shared_data_dir):
  """Two depths of a real pretrained MobileNet V1 0.25 (the smallest weights on
  hand) on a tiny multi-label file: rows, predictions and report."""
  _write_npz(tmp_path)
  config = config_lib.defaults()
  config.update(dataset="toymnist", data_dir=str(tmp_path), arch="mobilenet_v1_0.25",
                weights=str(shared_data_dir.parent / "weights" / "mobilenet_v1_0.25_128_quant.tflite"),
                weights_format="tflite", schemes=("head", "from:block5"), image_size=32,
                batch_size=16, epochs=2, progress=False)
  workdir = tmp_path / "run"
  rows = []
  for scheme in config.schemes:
    config.scheme = scheme
    rows.append(train.train_and_evaluate(config, str(workdir)))
  for row in rows:
    assert 0.0 <= row["test_auc"] <= 1.0 and 0.0 <= row["test_acc"] <= 1.0
    assert len(row["test_label_aucs"]) == NUM_LABELS
    assert all(math.isfinite(auc) for auc in row["test_label_aucs"])
    assert row["test_auc"] == pytest.approx(np.mean(row["test_label_aucs"]))
    with np.load(workdir / row["predictions"]) as saved:
      labels, probs = saved["labels"], saved["probs"]
    assert labels.shape == probs.shape == (32, NUM_LABELS)
    assert not np.allclose(probs.sum(axis=1), 1.0)  # sigmoids per label, not a softmax
    assert classification.evaluate(labels, probs)["label_aucs"] == row["test_label_aucs"]
  assert [json.loads(line)["scheme"] for line in open(workdir / report.RESULTS)] == ["head",
                                                                                   "from:block5"]
  text = open(report.write_report(str(workdir)), encoding="utf-8").read()
  assert "| head |" in text and "| from:block5 |" in text and "| best |" in text
  assert "Multi-label" in text

  config.balance = True
  with pytest.raises(ValueError, match=r"config\.balance"):
    train.train_and_evaluate(config, str(tmp_path / "balanced"))
