"""Uncertainty and significance for comparing depth schemes on one test set.

- `delong`: two correlated ROC AUCs of the same test images (DeLong, DeLong &
  Clarke-Pearson 1988), with the O(n log n) midrank algorithm of Sun & Xu (2014).
- `paired_bootstrap`: any metric, when DeLong does not apply (e.g. macro AUC).
- `bootstrap_ci` over test images (one run) and `mean_ci` over seeds (several runs).
- `stouffer`: one p-value from the independent per-seed tests of a pair of schemes.
"""
from __future__ import annotations

import dataclasses
import math
from typing import Callable, Sequence

import numpy as np
import scipy.stats


@dataclasses.dataclass(frozen=True)
class Comparison:
  """`a` against `b` on the same test set: their metrics, `a - b`, and a two-sided p-value."""
  a: float
  b: float
  z: float
  p: float

  @property
  def difference(self) -> float:
    return self.a - self.b


def delong(positive: np.ndarray, scores_a: np.ndarray, scores_b: np.ndarray) -> Comparison:
  """DeLong's test of AUC(a) = AUC(b), both scoring the same images.

  Args:
    positive: `(N,)` booleans, the positive class.
    scores_a, scores_b: `(N,)` scores of the two classifiers (higher = more positive).

  Returns:
    The two AUCs, the z statistic and the two-sided p-value. Identical scores give
    z = 0, p = 1 (the variance of the difference is zero).
  """
  positive = np.asarray(positive, bool)
  scores = np.stack([np.asarray(scores_a, np.float64), np.asarray(scores_b, np.float64)])
  if scores.shape[1] != positive.shape[0] or positive.ndim != 1:
    raise ValueError(f"scores of shapes {np.shape(scores_a)}, {np.shape(scores_b)} do not match "
                     f"labels of shape {positive.shape}")
  x, y = scores[:, positive], scores[:, ~positive]
  m, n = x.shape[1], y.shape[1]
  if m < 2 or n < 2:
    raise ValueError(f"DeLong needs at least 2 positives and 2 negatives, got {m} and {n}")
  # Midranks (ties share the mean rank) within positives, negatives, and all.
  tx, ty = scipy.stats.rankdata(x, axis=1), scipy.stats.rankdata(y, axis=1)
  tz = scipy.stats.rankdata(np.concatenate([x, y], axis=1), axis=1)
  aucs = (tz[:, :m].sum(axis=1) - m * (m + 1) / 2) / (m * n)
  v10 = (tz[:, :m] - tx) / n  # per positive: the fraction of negatives it outscores
  v01 = 1.0 - (tz[:, m:] - ty) / m  # per negative: the fraction of positives above it
  covariance = np.cov(v10) / m + np.cov(v01) / n
  variance = covariance[0, 0] + covariance[1, 1] - 2 * covariance[0, 1]
  difference = aucs[0] - aucs[1]
  if variance <= 1e-15:
    z = 0.0 if abs(difference) < 1e-12 else math.copysign(math.inf, difference)
  else:
    z = difference / math.sqrt(variance)
  return Comparison(float(aucs[0]), float(aucs[1]), float(z), _two_sided(z))


def paired_bootstrap(labels: np.ndarray, scores_a: np.ndarray, scores_b: np.ndarray,
                     metric: Callable[[np.ndarray, np.ndarray], float], samples: int = 1000,
                     seed: int = 0, strata: np.ndarray | None = None) -> Comparison:
  """`metric(a) = metric(b)` tested by resampling test images (the same resample for both).

  The p-value is twice the fraction of resamples on the other side of zero from
  the observed difference (percentile bootstrap), floored at 1 / samples.
  Images are resampled within their `strata` (default: their class in `labels`).
  """
  labels = np.asarray(labels)
  observed_a, observed_b = metric(labels, scores_a), metric(labels, scores_b)
  differences = []
  for index in _resamples(labels if strata is None else strata, samples, seed):
    differences.append(metric(labels[index], scores_a[index]) - metric(labels[index], scores_b[index]))
  differences = np.asarray(differences)
  observed = observed_a - observed_b
  if observed == 0:
    p = 1.0
  else:
    p = min(1.0, 2 * max(np.mean(np.sign(observed) * differences <= 0), 1 / samples))
  spread = np.std(differences)
  z = observed / spread if spread > 0 else (0.0 if observed == 0 else math.copysign(math.inf, observed))
  return Comparison(float(observed_a), float(observed_b), float(z), float(p))


def bootstrap_ci(labels: np.ndarray, scores: np.ndarray,
                 metric: Callable[[np.ndarray, np.ndarray], float], samples: int = 1000,
                 level: float = 0.95, seed: int = 0, strata: np.ndarray | None = None
                 ) -> tuple[float, float]:
  """Percentile interval of `metric` over test sets resampled with replacement, within
  `strata` (default: the class in `labels`)."""
  labels = np.asarray(labels)
  values = [metric(labels[i], scores[i])
            for i in _resamples(labels if strata is None else strata, samples, seed)]
  tail = (1 - level) / 2 * 100
  low, high = np.percentile(values, [tail, 100 - tail])
  return float(low), float(high)


def mean_ci(values: Sequence[float], level: float = 0.95) -> tuple[float, float, float]:
  """Mean and Student-t interval over independent runs (seeds); one run gives (v, nan, nan)."""
  values = np.asarray(values, np.float64)
  mean = float(np.mean(values))
  if len(values) < 2:
    return mean, math.nan, math.nan
  half = scipy.stats.t.ppf((1 + level) / 2, len(values) - 1) * scipy.stats.sem(values)
  return mean, float(mean - half), float(mean + half)


def stouffer(zs: Sequence[float]) -> float:
  """Two-sided p-value of the combined z of independent tests of the same direction."""
  zs = np.asarray(zs, np.float64)
  return _two_sided(float(np.sum(zs) / math.sqrt(len(zs))))


def _two_sided(z: float) -> float:
  return float(math.erfc(abs(z) / math.sqrt(2)))


def _resamples(strata: np.ndarray, samples: int, seed: int):
  """Index arrays of bootstrap resamples within `(N,)` strata, so each keeps every class."""
  rng = np.random.default_rng(seed)
  by_class = [np.flatnonzero(strata == c) for c in np.unique(strata)]
  for _ in range(samples):
    yield np.concatenate([rng.choice(members, len(members)) for members in by_class])
