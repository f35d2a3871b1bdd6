"""The report a researcher reads: intervals, significance, verdict, plots, merged shards.

Rows and test predictions are synthetic (no training), with known structure:
`deep` is clearly better than `scratch`, `middle` is indistinguishable from `deep`.
"""
from __future__ import annotations

import math

import numpy as np
import pytest

from tuning import config as config_lib
from tuning import report, stats, sweep, train
from tuning.tasks import classification

N_TEST = 300
TRAINABLE = {"scratch": 1000, "head": 10, "middle": 400, "deep": 1000}
NOISE = {"scratch": 2.0, "head": 3.0, "middle": 0.81, "deep": 0.8}
VAL_AUC = {"scratch": 0.8, "head": 0.7, "middle": 0.85, "deep": 0.9}


def _write_run(workdir, scheme, seed, fraction=1.0):
  rng = np.random.default_rng(1000 * seed + 1)
  labels = (np.arange(N_TEST) % 2).astype(np.int64)
  shared = rng.normal(size=N_TEST)  # the same test images are hard for every scheme
  own = np.random.default_rng([seed, list(NOISE).index(scheme)]).normal(size=N_TEST)
  logit = 2.0 * labels - 1.0 + NOISE[scheme] * (0.7 * shared + 0.3 * own)
  probs = np.stack([1 / (1 + np.exp(logit)), 1 / (1 + np.exp(-logit))], axis=1)
  name = f"{scheme}-{seed}-{fraction}"
  relative = train.save_predictions(str(workdir), name, labels, probs)
  metrics = classification.evaluate(labels, probs)
  row = {"dataset": "pneumoniamnist", "arch": "mobilenet_v2", "weights": "w.pth",
         "scheme": scheme, "seed": seed, "train_fraction": fraction,
         "test_auc": metrics["auc"], "test_acc": metrics["acc"],
         "test_sens_at_fpr10": metrics["sens_at_fpr10"],
         "val_auc": VAL_AUC[scheme],  # validation picks `deep`
         "n_trainable_params": TRAINABLE[scheme], "best_epoch": 3, "wall_s": 10.0,
         "n_train": 100, "image_size": 32, "batch_size": 16, "diverged_at_epoch": None,
         "predictions": relative}
  train.append_result(str(workdir / report.RESULTS), row)
  return row, labels, probs


@pytest.fixture
def sweep_dir(tmp_path):
  saved = {}
  for seed in (0, 1, 2):
    for scheme in NOISE:
      saved[scheme, seed] = _write_run(tmp_path, scheme, seed)
  return tmp_path, saved


def test_intervals_are_over_seeds_and_p_values_are_delong_combined(sweep_dir):
  workdir, saved = sweep_dir
  rows = [row for row, *_ in saved.values()]
  for row in rows:
    row["_workdir"] = str(workdir)
  schemes = {s.name: s for s in report.summarize(rows)}
  assert [s for s in schemes] == ["scratch", "head", "middle", "deep"]  # depth order
  mean, low, high = stats.mean_ci([saved["scratch", seed][0]["test_auc"] for seed in (0, 1, 2)])
  assert (schemes["scratch"].test_auc, schemes["scratch"].low, schemes["scratch"].high) == (
      pytest.approx(mean), pytest.approx(low), pytest.approx(high))
  zs = [stats.delong(saved["scratch", s][1] == 1, saved["scratch", s][2][:, 1],
                     saved["deep", s][2][:, 1]).z for s in (0, 1, 2)]
  assert schemes["scratch"].p_vs_best == pytest.approx(stats.stouffer(zs))
  assert schemes["scratch"].p_vs_best < 1e-3 and schemes["middle"].p_vs_best > report.ALPHA
  assert schemes["deep"].p_vs_best is None  # the best itself


def test_the_verdict_names_best_scratch_gap_and_shallowest_as_good(sweep_dir):
  workdir, _ = sweep_dir
  text = open(report.write_report(str(workdir)), encoding="utf-8").read()
  assert "Best on validation AUC: `deep`" in text
  assert "Against scratch" in text
  assert "Shallowest fine-tuning not significantly worse (p >= 0.05): `middle`" in text
  assert "| deep | 1 | 1,000 | 3 |" in text and "| best |" in text
  assert "| middle | 2 |" in text and "| scratch | 3 |" in text and "| head | 4 |" in text  # by val AUC
  for plot in ("depth", "roc", "cost"):
    path = workdir / f"pneumoniamnist-mobilenet_v2-w.pth-{plot}.png"
    assert path.stat().st_size > 5000, plot
    assert f"]({path.name})" in text


def test_one_seed_gets_a_bootstrap_interval_over_test_images(tmp_path):
  row, labels, probs = _write_run(tmp_path, "deep", 0)
  row["_workdir"] = str(tmp_path)
  (scheme,) = report.summarize([row])
  assert (scheme.low, scheme.high) == pytest.approx(
      stats.bootstrap_ci(labels, probs, classification.roc_auc, samples=300))
  assert scheme.low < scheme.test_auc < scheme.high
  assert "One seed" in report.verdict([scheme])


def test_the_trend_table_has_one_row_per_fraction(tmp_path):
  for fraction in (1.0, 0.25):
    for scheme in ("scratch", "deep"):
      _write_run(tmp_path, scheme, 0, fraction)
  text = open(report.write_report(str(tmp_path)), encoding="utf-8").read()
  assert "as the training set shrinks" in text
  assert text.index("| 1 | ") < text.index("| 0.25 | ")


def test_report_merges_the_results_of_shards(tmp_path):
  first, second = tmp_path / "shard0", tmp_path / "shard1"
  first.mkdir(), second.mkdir()
  _write_run(first, "scratch", 0)
  _write_run(second, "deep", 0)
  text = open(report.write_report(str(first), [str(second)]), encoding="utf-8").read()
  assert "| scratch | 2 | 1,000 | 1 |" in text and "| deep | 1 | 1,000 | 1 |" in text
  assert "p = " in text and "p = —" not in text  # predictions found in each shard's own dir


def test_grid_nests_fraction_seed_scheme_and_shards_cover_it_once():
  config = config_lib.defaults()
  config.train_fractions, config.seeds, config.schemes = (1.0, 0.5), (0, 1, 2), ("scratch", "all")
  runs = sweep.grid(config)
  keys = [(r.train_fraction, r.seed, r.scheme) for r in runs]
  assert keys[:3] == [(1.0, 0, "scratch"), (1.0, 0, "all"), (1.0, 1, "scratch")]
  assert len(set(keys)) == len(keys) == 12
  shards = [sweep.shard(runs, f"{i}/5") for i in range(5)]
  assert sorted(k for part in shards for k in [(r.train_fraction, r.seed, r.scheme) for r in part]) == sorted(keys)
  assert config.train_fraction == 1.0  # the grid copies, never mutates the config


def test_an_empty_grid_axis_means_the_single_value():
  config = config_lib.defaults()
  config.train_fraction, config.seed = 0.25, 7
  assert {(r.train_fraction, r.seed) for r in sweep.grid(config)} == {(0.25, 7)}


@pytest.mark.parametrize("spec", ["4/4", "-1/2", "1", "a/b", "1/0"])
def test_a_bad_shard_is_named(spec):
  with pytest.raises(ValueError, match=r"--shard=.*expected i/n with 0 <= i < n"):
    sweep.shard([1, 2, 3], spec)


def test_nan_free_formatting_of_missing_values():
  assert report._fmt(None) == "—" and report._fmt(math.nan) == "—"
