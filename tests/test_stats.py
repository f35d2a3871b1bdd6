"""`tuning.stats`: DeLong against its definition, intervals and p-values that behave."""
from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from sklearn.metrics import roc_auc_score

from tuning import stats
from tuning.tasks.classification import roc_auc


def _delong_by_definition(positive, scores_a, scores_b):
  """DeLong et al. (1988) as written: structural components from the pairwise kernel, O(mn)."""
  components = []
  for scores in (scores_a, scores_b):
    x, y = scores[positive][:, None], scores[~positive][None, :]
    psi = (x > y) + 0.5 * (x == y)
    components.append((psi.mean(axis=1), psi.mean(axis=0), psi.mean()))
  (v10a, v01a, auc_a), (v10b, v01b, auc_b) = components
  m, n = len(v10a), len(v01a)
  s10, s01 = np.cov(np.stack([v10a, v10b])), np.cov(np.stack([v01a, v01b]))
  s = s10 / m + s01 / n
  variance = s[0, 0] + s[1, 1] - 2 * s[0, 1]
  return auc_a, auc_b, (auc_a - auc_b) / math.sqrt(variance) if variance > 1e-15 else math.nan


@settings(max_examples=30, deadline=None)
@given(st.integers(0, 2**31 - 1), st.integers(4, 60), st.booleans())
def test_delong_equals_its_definition(seed, n, coarse):
  rng = np.random.default_rng(seed)
  positive = np.arange(n) < max(2, n // 3)
  rng.shuffle(positive)
  positive[:2], positive[2:4] = True, False  # at least two of each
  a = rng.normal(size=n) + positive
  b = a + rng.normal(size=n)
  if coarse:  # many ties
    a, b = np.round(a), np.round(b)
  got = stats.delong(positive, a, b)
  auc_a, auc_b, z = _delong_by_definition(positive, a, b)
  assert got.a == pytest.approx(auc_a, abs=1e-12) and got.b == pytest.approx(auc_b, abs=1e-12)
  assert got.a == pytest.approx(roc_auc_score(positive, a), abs=1e-12)
  if math.isfinite(z):
    assert got.z == pytest.approx(z, rel=1e-9, abs=1e-9)
    assert got.p == pytest.approx(math.erfc(abs(z) / math.sqrt(2)), rel=1e-9, abs=1e-12)


def test_delong_identical_scores_are_not_different():
  positive = np.array([1, 1, 0, 0, 1, 0], bool)
  scores = np.array([0.9, 0.4, 0.3, 0.5, 0.8, 0.1])
  result = stats.delong(positive, scores, scores)
  assert (result.z, result.p, result.difference) == (0.0, 1.0, 0.0)


def test_delong_separates_a_good_from_a_random_classifier():
  rng = np.random.default_rng(0)
  positive = rng.random(400) < 0.4
  good, noise = positive + rng.normal(scale=0.5, size=400), rng.normal(size=400)
  result = stats.delong(positive, good, noise)
  assert result.a > 0.9 and abs(result.b - 0.5) < 0.1 and result.p < 1e-6 and result.z > 0


def test_delong_needs_both_classes():
  with pytest.raises(ValueError, match="at least 2 positives and 2 negatives, got 1 and 3"):
    stats.delong(np.array([1, 0, 0, 0], bool), np.arange(4.0), np.arange(4.0))


def test_paired_bootstrap_agrees_with_delong_on_direction_and_size():
  rng = np.random.default_rng(1)
  labels = (rng.random(300) < 0.5).astype(int)
  strong = labels + rng.normal(scale=0.8, size=300)
  weak = labels + rng.normal(scale=2.0, size=300)
  boot = stats.paired_bootstrap(labels, strong, weak, roc_auc, samples=300)
  delong = stats.delong(labels == 1, strong, weak)
  assert boot.difference == pytest.approx(delong.difference)
  assert boot.p < 0.05 and delong.p < 0.05
  assert boot.z == pytest.approx(delong.z, rel=0.3)  # two estimates of the same standard error


def test_bootstrap_ci_brackets_the_estimate_and_shrinks_with_more_data():
  rng = np.random.default_rng(2)
  widths = []
  for n in (100, 1600):
    labels = (rng.random(n) < 0.5).astype(int)
    scores = labels + rng.normal(size=n)
    low, high = stats.bootstrap_ci(labels, scores, roc_auc, samples=300)
    assert low < roc_auc(labels, scores) < high
    widths.append(high - low)
  assert widths[1] < widths[0] / 2  # ~ 1/sqrt(n): a quarter, allowing noise


def test_mean_ci_matches_the_t_interval():
  mean, low, high = stats.mean_ci([0.90, 0.92, 0.94])
  assert mean == pytest.approx(0.92)
  assert high - mean == pytest.approx(4.302653 * 0.02 / math.sqrt(3), rel=1e-5)  # t(0.975, 2) * sem
  assert mean - low == pytest.approx(high - mean)
  single = stats.mean_ci([0.9])
  assert single[0] == 0.9 and math.isnan(single[1]) and math.isnan(single[2])


def test_stouffer_combines_agreeing_tests():
  assert stats.stouffer([1.5, 1.5, 1.5]) < 0.01 < math.erfc(1.5 / math.sqrt(2))  # each alone: p 0.13
  assert stats.stouffer([2.0, -2.0]) == 1.0
