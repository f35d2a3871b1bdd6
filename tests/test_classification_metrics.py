"""Tests for tuning.tasks.classification against scikit-learn: binary, multi-class, multi-label."""
from __future__ import annotations

import hypothesis
from hypothesis import strategies as st
import jax
import numpy as np
import pytest
from sklearn import metrics

from tuning.tasks import classification

_SETTINGS = hypothesis.settings(deadline=None, max_examples=60)


def _random_problem(seed: int, n: int, num_classes: int, levels: int):
  """Labels covering >= 2 classes and row-normalised scores with many ties."""
  rng = np.random.default_rng(seed)
  labels = rng.integers(0, num_classes, n)
  labels[:2] = [0, 1]
  scores = rng.integers(1, levels + 1, (n, num_classes)).astype(np.float64)
  return labels, scores / scores.sum(axis=1, keepdims=True)


@_SETTINGS
@hypothesis.given(seed=st.integers(0, 2**32 - 1), n=st.integers(2, 60),
                  levels=st.integers(1, 5))
def test_binary_auc_matches_sklearn(seed, n, levels):
  labels, probs = _random_problem(seed, n, 2, levels)
  expected = metrics.roc_auc_score(labels, probs[:, 1])
  assert classification.roc_auc(labels, probs) == pytest.approx(expected, abs=1e-12)
  assert classification.roc_auc(labels, probs[:, 1]) == pytest.approx(
      expected, abs=1e-12)


@_SETTINGS
@hypothesis.given(seed=st.integers(0, 2**32 - 1), n=st.integers(2, 60),
                  num_classes=st.integers(3, 6), levels=st.integers(1, 5))
def test_multiclass_auc_matches_sklearn_ovr_macro(seed, n, num_classes, levels):
  labels, probs = _random_problem(seed, n, num_classes, levels)
  present = np.unique(labels)
  if len(present) == num_classes:
    expected = metrics.roc_auc_score(labels, probs, multi_class="ovr", average="macro")
  else:  # sklearn's "ovr" needs every class present; average over those that are.
    expected = np.mean(
        [metrics.roc_auc_score(labels == c, probs[:, c]) for c in present])
  assert classification.roc_auc(labels, probs) == pytest.approx(expected, abs=1e-12)


@_SETTINGS
@hypothesis.given(seed=st.integers(0, 2**32 - 1), n=st.integers(2, 60),
                  num_classes=st.integers(2, 6), levels=st.integers(1, 5))
def test_accuracy_matches_sklearn(seed, n, num_classes, levels):
  labels, probs = _random_problem(seed, n, num_classes, levels)
  expected = metrics.accuracy_score(labels, probs.argmax(axis=1))
  assert classification.accuracy(labels, probs) == pytest.approx(expected)
  result = classification.evaluate(labels, probs)
  assert result["acc"] == pytest.approx(expected)
  assert result["auc"] == classification.roc_auc(labels, probs)


def test_auc_extremes_and_ties():
  labels = np.array([0, 0, 1, 1])
  assert classification.roc_auc(labels, np.array([0.1, 0.2, 0.8, 0.9])) == 1.0
  assert classification.roc_auc(labels, np.array([0.9, 0.8, 0.2, 0.1])) == 0.0
  assert classification.roc_auc(labels, np.full(4, 0.5)) == 0.5


def test_binary_accuracy_from_positive_scores():
  labels = np.array([0, 1, 1, 0])
  assert classification.accuracy(labels, np.array([0.2, 0.7, 0.5, 0.4])) == 0.75


@pytest.mark.parametrize("scores", [np.full((5, 3), 1 / 3), np.full(5, 0.5)])
def test_auc_single_class_raises(scores):
  labels = np.ones(5, np.int64) if scores.ndim == 1 else np.full(5, 2)
  with pytest.raises(ValueError, match="single class"):
    classification.roc_auc(labels, scores)


@pytest.mark.parametrize("labels, scores, match", [
    (np.array([0, 1, 2]), np.zeros((3, 2)), r"class indices in \[0, 2\)"),
    (np.array([0, 1]), np.zeros((3, 2)), "to match labels"),
    (np.array([[[0]], [[1]]]), np.zeros((2, 2)), r"labels must be \(N,\) integers"),
    (np.array([[0, 1], [1, 0]]), np.zeros((2, 3)), r"multi-label labels of shape \(2, 2\) need"),
    (np.array([[0, 2], [1, 0]]), np.zeros((2, 2)), "must be 0/1"),
    (np.array([[0, 1], [0, 1]]), np.zeros((2, 2)), "none of the 2 labels has both"),
    (np.array([0.0, 1.0]), np.zeros((2, 2)), r"labels must be \(N,\) integers"),
    (np.array([0, 1]), np.array([0.3, np.nan]), "NaN"),
])
def test_invalid_inputs_raise(labels, scores, match):
  with pytest.raises(ValueError, match=match):
    classification.roc_auc(labels, scores)


def test_cross_entropy_loss():
  logits = jax.numpy.array([[2.0, 0.0, -1.0], [0.0, 0.0, 0.0]])
  labels = jax.numpy.array([0, 2])
  log_probs = jax.nn.log_softmax(logits)
  expected = -(log_probs[0, 0] + log_probs[1, 2]) / 2
  np.testing.assert_allclose(classification.loss(logits, labels), expected, rtol=1e-6)
  np.testing.assert_allclose(classification.probabilities(logits, multi_label=False),
                             np.exp(log_probs), rtol=1e-6)


def test_multi_label_loss_is_per_label_sigmoid_cross_entropy():
  logits = jax.numpy.array([[2.0, 0.0, -1.0], [0.5, -3.0, 1.0]])
  labels = jax.numpy.array([[1, 0, 0], [1, 1, 0]], jax.numpy.int32)
  p = 1 / (1 + np.exp(-np.asarray(logits, np.float64)))
  y = np.asarray(labels)
  expected = -np.mean(y * np.log(p) + (1 - y) * np.log(1 - p))  # over images and labels
  np.testing.assert_allclose(classification.loss(logits, labels), expected, rtol=1e-5)
  np.testing.assert_allclose(classification.probabilities(logits, multi_label=True), p, rtol=1e-5)


@_SETTINGS
@hypothesis.given(seed=st.integers(0, 2**32 - 1), n=st.integers(2, 60),
                  levels=st.integers(1, 8))
def test_roc_curve_matches_sklearn(seed, n, levels):
  labels, probs = _random_problem(seed, n, 2, levels)
  fpr, tpr = classification.roc_curve(labels == 1, probs[:, 1])
  want_fpr, want_tpr, _ = metrics.roc_curve(labels, probs[:, 1], drop_intermediate=False)
  np.testing.assert_allclose(fpr, want_fpr, atol=1e-12)
  np.testing.assert_allclose(tpr, want_tpr, atol=1e-12)


@_SETTINGS
@hypothesis.given(seed=st.integers(0, 2**32 - 1), n=st.integers(2, 60),
                  num_classes=st.integers(2, 5), levels=st.integers(1, 8),
                  fpr=st.sampled_from(classification.FPR_POINTS))
def test_sensitivity_at_fpr_reads_sklearns_roc_curve(seed, n, num_classes, levels, fpr):
  labels, probs = _random_problem(seed, n, num_classes, levels)
  columns = [1] if num_classes == 2 else np.unique(labels)
  expected = []
  for c in columns:
    # drop_intermediate=False: dropping collinear points would hide the best point under fpr.
    want_fpr, want_tpr, _ = metrics.roc_curve(labels == c, probs[:, c], drop_intermediate=False)
    expected.append(want_tpr[want_fpr <= fpr].max())
  got = classification.sensitivity_at_fpr(labels, probs, fpr)
  assert got == pytest.approx(np.mean(expected), abs=1e-12)


def test_evaluate_reports_the_papers_operating_points():
  labels = np.array([0] * 10 + [1] * 10)
  scores = np.r_[np.linspace(0, 0.5, 10), np.linspace(0.45, 1, 10)]  # the top negative outscores one positive
  result = classification.evaluate(labels, scores)
  assert set(result) == {"auc", "acc", "sens_at_fpr10", "sens_at_fpr15", "sens_at_fpr20"}
  assert result["sens_at_fpr10"] == 1.0  # one false positive of ten: every positive found


def _multi_label_problem(seed: int, n: int, num_labels: int, levels: int):
  """`(N, L)` 0/1 labels, some labels all-negative or all-positive (their AUC is
  undefined), label 0 always with both; per-label scores with many ties."""
  rng = np.random.default_rng(seed)
  rates = rng.choice([0.0, 0.2, 0.5, 1.0], num_labels)
  labels = (rng.random((n, num_labels)) < rates).astype(np.int64)
  labels[:2, 0] = [0, 1]
  scores = rng.integers(0, levels + 1, (n, num_labels)) / levels
  return labels, scores


def _defined(labels):
  """The labels whose AUC is defined: both classes present."""
  return [j for j in range(labels.shape[1]) if 0 < labels[:, j].sum() < len(labels)]


@_SETTINGS
@hypothesis.given(seed=st.integers(0, 2**32 - 1), n=st.integers(2, 60),
                  num_labels=st.integers(1, 6), levels=st.integers(1, 5))
def test_multi_label_auc_matches_sklearn_macro_over_defined_labels(seed, n, num_labels, levels):
  labels, scores = _multi_label_problem(seed, n, num_labels, levels)
  keep = _defined(labels)
  expected = metrics.roc_auc_score(labels[:, keep], scores[:, keep], average="macro")
  assert classification.roc_auc(labels, scores) == pytest.approx(expected, abs=1e-12)
  per_label = classification.label_aucs(labels, scores)
  assert [j for j, auc in enumerate(per_label) if auc is not None] == keep
  for j in keep:
    assert per_label[j] == pytest.approx(metrics.roc_auc_score(labels[:, j], scores[:, j]), abs=1e-12)


@_SETTINGS
@hypothesis.given(seed=st.integers(0, 2**32 - 1), n=st.integers(2, 60),
                  num_labels=st.integers(1, 6), levels=st.integers(1, 5),
                  fpr=st.sampled_from(classification.FPR_POINTS))
def test_multi_label_accuracy_and_sensitivity_match_sklearn(seed, n, num_labels, levels, fpr):
  labels, scores = _multi_label_problem(seed, n, num_labels, levels)
  # Accuracy is per label, averaged (MedMNIST's), i.e. 1 - Hamming loss; not exact match.
  want_acc = 1 - metrics.hamming_loss(labels, scores > 0.5)
  assert classification.accuracy(labels, scores) == pytest.approx(want_acc, abs=1e-12)
  sensitivities = []
  for j in _defined(labels):
    want_fpr, want_tpr, _ = metrics.roc_curve(labels[:, j], scores[:, j], drop_intermediate=False)
    sensitivities.append(want_tpr[want_fpr <= fpr].max())
  got = classification.sensitivity_at_fpr(labels, scores, fpr)
  assert got == pytest.approx(np.mean(sensitivities), abs=1e-12)
  result = classification.evaluate(labels, scores)
  assert result["acc"] == pytest.approx(want_acc)
  assert result["label_aucs"] == classification.label_aucs(labels, scores)


def test_multi_label_accuracy_is_per_label_not_exact_match():
  labels = np.array([[1, 0, 0], [0, 1, 1]])
  scores = np.array([[0.9, 0.1, 0.8], [0.2, 0.7, 0.6]])  # one label of six wrong
  assert classification.accuracy(labels, scores) == pytest.approx(5 / 6)
  assert metrics.accuracy_score(labels, scores > 0.5) == 0.5  # exact match would say this


def test_single_label_results_have_no_per_label_aucs():
  labels, probs = _random_problem(0, 20, 3, 4)
  assert "label_aucs" not in classification.evaluate(labels, probs)
  with pytest.raises(ValueError, match=r"needs \(N, L\) multi-label"):
    classification.label_aucs(labels, probs)
