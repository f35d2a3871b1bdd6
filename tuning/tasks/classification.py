"""Loss and metrics for single-label (binary or multi-class) classification.

Metrics follow the MedMNIST benchmark: ROC AUC (one-vs-rest, macro-averaged
for more than two classes) and accuracy. They run in numpy on the gathered
predictions of a whole split, since AUC does not decompose over batches.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax


def cross_entropy_loss(logits: jax.Array, labels: jax.Array) -> jax.Array:
  """Mean softmax cross-entropy of `(B, C)` logits against `(B,)` class indices."""
  return jnp.mean(optax.softmax_cross_entropy_with_integer_labels(logits, labels))


def roc_auc(labels: np.ndarray, scores: np.ndarray) -> float:
  """Area under the ROC curve, as sklearn's `roc_auc_score`.

  Args:
    labels: `(N,)` integer classes.
    scores: `(N, C)` class probabilities, or `(N,)` positive-class scores for
      binary labels. With two columns the AUC is that of column 1; with more,
      the mean one-vs-rest AUC over the classes present in `labels`.

  Returns:
    The AUC; ties in scores count half, as in the Mann-Whitney U statistic.
  """
  labels, scores = _check(labels, scores)
  present = np.unique(labels)
  if len(present) < 2:
    raise ValueError(
        f"ROC AUC is undefined when labels hold a single class ({present}); "
        "the evaluation split needs examples of at least two classes")
  if scores.ndim == 1:
    return _binary_auc(labels == 1, scores)
  if scores.shape[1] == 2:
    return _binary_auc(labels == 1, scores[:, 1])
  return float(np.mean([_binary_auc(labels == c, scores[:, c]) for c in present]))


def accuracy(labels: np.ndarray, scores: np.ndarray) -> float:
  """Fraction of argmax predictions (score > 0.5 for `(N,)` scores) that match."""
  labels, scores = _check(labels, scores)
  predictions = scores > 0.5 if scores.ndim == 1 else np.argmax(scores, axis=1)
  return float(np.mean(predictions == labels))


def roc_curve(positive: np.ndarray, scores: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
  """`(fpr, tpr)` at every distinct threshold, from (0, 0) to (1, 1), as sklearn's `roc_curve`."""
  positive, scores = np.asarray(positive, bool), np.asarray(scores, np.float64)
  order = np.argsort(-scores, kind="stable")
  scores, positive = scores[order], positive[order]
  last_of_tie = np.r_[scores[1:] != scores[:-1], True]  # cut only between distinct scores
  true_pos = np.cumsum(positive)[last_of_tie]
  false_pos = np.cumsum(~positive)[last_of_tie]
  return (np.r_[0.0, false_pos / max(false_pos[-1], 1)], np.r_[0.0, true_pos / max(true_pos[-1], 1)])


def sensitivity_at_fpr(labels: np.ndarray, scores: np.ndarray, fpr: float) -> float:
  """The highest sensitivity at a false-positive rate <= `fpr` (Tajbakhsh 2016 reports
  10, 15 and 20 %); for more than two classes, the mean over one-vs-rest curves."""
  labels, scores = _check(labels, scores)
  if scores.ndim == 1 or scores.shape[1] == 2:
    curves = [(labels == 1, scores if scores.ndim == 1 else scores[:, 1])]
  else:
    curves = [(labels == c, scores[:, c]) for c in np.unique(labels)]
  sensitivities = []
  for positive, class_scores in curves:
    false_rate, true_rate = roc_curve(positive, class_scores)
    sensitivities.append(np.max(true_rate[false_rate <= fpr + 1e-12]))
  return float(np.mean(sensitivities))


FPR_POINTS = (0.10, 0.15, 0.20)
SENSITIVITY_KEYS = tuple(f"sens_at_fpr{round(100 * f)}" for f in FPR_POINTS)


def evaluate(labels: np.ndarray, probs: np.ndarray) -> dict[str, float]:
  """The MedMNIST benchmark metrics (AUC, accuracy), and sensitivity at Tajbakhsh's FPRs."""
  return {"auc": roc_auc(labels, probs), "acc": accuracy(labels, probs),
          **{key: sensitivity_at_fpr(labels, probs, f) for key, f in zip(SENSITIVITY_KEYS, FPR_POINTS)}}


def _check(labels: np.ndarray, scores: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
  """Validates shapes and ranges, so misaligned predictions fail loudly."""
  labels, scores = np.asarray(labels), np.asarray(scores, np.float64)
  if labels.ndim != 1 or not np.issubdtype(labels.dtype, np.integer):
    raise ValueError(
        f"labels must be (N,) integers, got shape {labels.shape} dtype {labels.dtype}")
  if scores.ndim not in (1, 2) or len(scores) != len(labels):
    raise ValueError(
        f"scores must be ({len(labels)},) or ({len(labels)}, C) to match labels, "
        f"got shape {scores.shape}")
  if len(labels) == 0:
    raise ValueError("labels and scores are empty")
  num_classes = 2 if scores.ndim == 1 else scores.shape[1]
  if labels.min() < 0 or labels.max() >= num_classes:
    raise ValueError(
        f"labels must be class indices in [0, {num_classes}) for scores of shape "
        f"{scores.shape}, got values in [{labels.min()}, {labels.max()}]")
  if np.isnan(scores).any():
    raise ValueError("scores contain NaN; the model likely diverged")
  return labels, scores


def _binary_auc(positive: np.ndarray, scores: np.ndarray) -> float:
  """Mann-Whitney U of the positives' score ranks, normalised to [0, 1]."""
  n_pos = np.count_nonzero(positive)
  n_neg = len(positive) - n_pos
  rank_sum = np.sum(_average_ranks(scores)[positive])
  return float((rank_sum - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))


def _average_ranks(x: np.ndarray) -> np.ndarray:
  """1-based ranks of `x`, tied values sharing the mean of their ranks."""
  order = np.argsort(x, kind="stable")
  sorted_x = x[order]
  starts = np.flatnonzero(np.r_[True, sorted_x[1:] != sorted_x[:-1]])
  ends = np.r_[starts[1:], len(x)]
  ranks = np.empty(len(x))
  ranks[order] = np.repeat((starts + ends + 1) / 2, ends - starts)
  return ranks
