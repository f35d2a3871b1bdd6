"""Loss and metrics for binary, multi-class and multi-label classification.

The labels' shape is the task: `(N,)` class indices are single-label (softmax
over the classes); `(N, L)` 0/1 rows are multi-label (one sigmoid per label, an
image may have any subset of them, e.g. ChestMNIST's 14 findings). Every
function here dispatches on that shape, so no flag can disagree with the data.

Metrics follow the MedMNIST benchmark: ROC AUC (one-vs-rest, macro-averaged
over more than two classes or over the labels) and accuracy. They run in numpy
on the gathered predictions of a whole split, since AUC does not decompose over
batches.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax


def is_multi_label(labels: np.ndarray | jax.Array) -> bool:
  """Whether `labels` are `(N, L)` 0/1 rows rather than `(N,)` class indices."""
  return np.ndim(labels) == 2


def loss(logits: jax.Array, labels: jax.Array) -> jax.Array:
  """The training loss of `(B, C)` logits.

  Against `(B,)` class indices: mean softmax cross-entropy. Against `(B, L)` 0/1
  labels: sigmoid binary cross-entropy, mean over labels and images, since the
  labels are independent findings rather than competing classes.
  """
  if is_multi_label(labels):
    return jnp.mean(optax.sigmoid_binary_cross_entropy(logits, labels.astype(logits.dtype)))
  return jnp.mean(optax.softmax_cross_entropy_with_integer_labels(logits, labels))


def probabilities(logits: jax.Array, multi_label: bool) -> jax.Array:
  """What the metrics score: per-label sigmoids (multi-label), else the class softmax."""
  return jax.nn.sigmoid(logits) if multi_label else jax.nn.softmax(logits)


def roc_auc(labels: np.ndarray, scores: np.ndarray) -> float:
  """Area under the ROC curve, as sklearn's `roc_auc_score`.

  Args:
    labels: `(N,)` integer classes, or `(N, L)` 0/1 multi-label rows.
    scores: `(N, C)` class probabilities, or `(N,)` positive-class scores for
      binary labels. With two columns the AUC is that of column 1; with more,
      the mean one-vs-rest AUC over the classes present in `labels`. For
      multi-label rows, `(N, L)` per-label probabilities: the macro AUC,
      `roc_auc_score(average="macro")`, over the labels that have both
      positives and negatives in `labels`; the others are skipped, as their
      AUC is undefined (sklearn would raise).

  Returns:
    The AUC; ties in scores count half, as in the Mann-Whitney U statistic.
  """
  return float(np.mean([_binary_auc(*curve) for curve in _curves(*_check(labels, scores))]))


def label_aucs(labels: np.ndarray, scores: np.ndarray) -> list[float | None]:
  """Each label's AUC of multi-label `(N, L)` rows; None where the split lacks
  its positives or its negatives (JSON-ready, unlike NaN)."""
  labels, scores = _check(labels, scores)
  if not is_multi_label(labels):
    raise ValueError(f"label_aucs needs (N, L) multi-label rows, got labels of shape {labels.shape}")
  return [_binary_auc(labels[:, j] == 1, scores[:, j]) if _both_classes(labels[:, j]) else None
          for j in range(labels.shape[1])]


def accuracy(labels: np.ndarray, scores: np.ndarray) -> float:
  """Fraction of argmax predictions (score > 0.5 for `(N,)` scores) that match.

  Multi-label: the mean per-label accuracy at 0.5 (MedMNIST's ACC for
  ChestMNIST; sklearn's `1 - hamming_loss`), not exact match of whole rows,
  which with 14 findings mostly measures how rare the findings are.
  """
  labels, scores = _check(labels, scores)
  predictions = (scores > 0.5 if scores.ndim == 1 or is_multi_label(labels)
                 else np.argmax(scores, axis=1))
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
  10, 15 and 20 %); for more than two classes, the mean over one-vs-rest curves,
  and for multi-label rows over the labels `roc_auc` averages."""
  sensitivities = []
  for positive, class_scores in _curves(*_check(labels, scores)):
    false_rate, true_rate = roc_curve(positive, class_scores)
    sensitivities.append(np.max(true_rate[false_rate <= fpr + 1e-12]))
  return float(np.mean(sensitivities))


FPR_POINTS = (0.10, 0.15, 0.20)
SENSITIVITY_KEYS = tuple(f"sens_at_fpr{round(100 * f)}" for f in FPR_POINTS)


def evaluate(labels: np.ndarray, probs: np.ndarray) -> dict[str, float | list[float | None]]:
  """The MedMNIST benchmark metrics (AUC, accuracy), and sensitivity at Tajbakhsh's FPRs;
  for multi-label rows also each label's AUC (`label_aucs`)."""
  return {"auc": roc_auc(labels, probs), "acc": accuracy(labels, probs),
          **{key: sensitivity_at_fpr(labels, probs, f) for key, f in zip(SENSITIVITY_KEYS, FPR_POINTS)},
          **({"label_aucs": label_aucs(labels, probs)} if is_multi_label(labels) else {})}


def _check(labels: np.ndarray, scores: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
  """Validates shapes and ranges, so misaligned predictions fail loudly."""
  labels, scores = np.asarray(labels), np.asarray(scores, np.float64)
  if labels.ndim not in (1, 2) or not np.issubdtype(labels.dtype, np.integer):
    raise ValueError(
        f"labels must be (N,) integers (class indices) or (N, L) 0/1 integers (multi-label), "
        f"got shape {labels.shape} dtype {labels.dtype}")
  if is_multi_label(labels):
    if scores.shape != labels.shape:
      raise ValueError(f"multi-label labels of shape {labels.shape} need scores of the same "
                       f"shape (one probability per label), got {scores.shape}")
    if not np.isin(labels, (0, 1)).all():
      raise ValueError(f"multi-label labels must be 0/1, got values in "
                       f"[{labels.min()}, {labels.max()}]")
  elif scores.ndim not in (1, 2) or len(scores) != len(labels):
    raise ValueError(
        f"scores must be ({len(labels)},) or ({len(labels)}, C) to match labels, "
        f"got shape {scores.shape}")
  if len(labels) == 0:
    raise ValueError("labels and scores are empty")
  num_classes = 2 if scores.ndim == 1 else scores.shape[1]
  if not is_multi_label(labels) and (labels.min() < 0 or labels.max() >= num_classes):
    raise ValueError(
        f"labels must be class indices in [0, {num_classes}) for scores of shape "
        f"{scores.shape}, got values in [{labels.min()}, {labels.max()}]")
  if np.isnan(scores).any():
    raise ValueError("scores contain NaN; the model likely diverged")
  return labels, scores


def _curves(labels: np.ndarray, scores: np.ndarray) -> list[tuple[np.ndarray, np.ndarray]]:
  """The one-vs-rest problems `(positive, scores)` that the metrics average over.

  Binary: the positive class. Multi-class: each class present. Multi-label:
  each label with positives and negatives. Raises if there are none, since AUC
  needs both classes.
  """
  if is_multi_label(labels):
    curves = [(labels[:, j] == 1, scores[:, j]) for j in range(labels.shape[1])
              if _both_classes(labels[:, j])]
    if not curves:
      raise ValueError(
          f"ROC AUC is undefined: none of the {labels.shape[1]} labels has both positive and "
          "negative examples; the evaluation split needs both for at least one label")
    return curves
  present = np.unique(labels)
  if len(present) < 2:
    raise ValueError(
        f"ROC AUC is undefined when labels hold a single class ({present}); "
        "the evaluation split needs examples of at least two classes")
  if scores.ndim == 1 or scores.shape[1] == 2:
    return [(labels == 1, scores if scores.ndim == 1 else scores[:, 1])]
  return [(labels == c, scores[:, c]) for c in present]


def _both_classes(column: np.ndarray) -> bool:
  return 0 < np.count_nonzero(column) < len(column)


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
