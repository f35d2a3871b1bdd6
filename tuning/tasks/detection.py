"""Patch-based lesion detection scored by FROC (Tajbakhsh et al. 2016: polyps, PE).

The protocol of the paper: a candidate generator the user brings (the paper's
handcrafted polyp detector, tobogganing for PE) proposes boxes; each box is
cropped at several scales (box x 1.0, 1.2, 1.5), translations (+-10 % of the box
size, horizontally and vertically) and 8 orientations (mirroring and flipping),
and each crop is resized to the network's input. The network scores every patch;
a candidate's probability is the mean over its patches (`aggregate`). A FROC
curve (`froc`) then plots the fraction of lesions found against the false
positives per image (per frame for polyps, per volume for PE), which, unlike a
ROC curve of candidates, counts a lesion once however many candidates hit it and
charges the candidate generator for the lesions it missed.

Patches are uint8 RGB, as the images; the model's `Preprocess` is applied after,
as for classification batches.
"""
from __future__ import annotations

import dataclasses
from typing import Sequence

import numpy as np

from tuning import input_pipeline

# False positives per image at which the competition performance metric (CPM,
# Niemeijer et al. 2011, ANODE09; also LUNA16) averages the sensitivity.
CPM_FP_RATES = (1 / 8, 1 / 4, 1 / 2, 1.0, 2.0, 4.0, 8.0)


def candidate_patches(
    image: np.ndarray,
    boxes: np.ndarray,
    *,
    size: int,
    scales: Sequence[float] = (1.0, 1.2, 1.5),
    shifts: Sequence[float] = (-0.1, 0.0, 0.1),
    flips: bool = True,
) -> tuple[np.ndarray, np.ndarray]:
  """The test-time (and training) patches of each candidate, as in the paper.

  Each box `(top, left, bottom, right)` (pixel edges; a candidate given as a
  center and a size `s` is `(cy - s/2, cx - s/2, cy + s/2, cx + s/2)`) is
  scaled about its center by every `scales` factor, moved by every pair of
  `shifts` (fractions of the box height, vertically, and width, horizontally),
  cropped at whole pixels and resized (bilinear) to `size` x `size`; a
  non-square box is stretched to the square. Parts of a crop outside the image
  are zeros rather than replicated edges, so a lesion at the border is not
  smeared into a streak the network never saw in training. With `flips`, each
  crop appears in the 8 orientations of the square (4 rotations by 90 degrees,
  with and without a left-right mirror), the identity first.

  Args:
    image: uint8 `(H, W, 3)` RGB.
    boxes: `(N, 4)` candidate boxes.
    size: the network's input size.
    scales, shifts, flips: the augmentation grid; the defaults are the paper's.

  Returns:
    `(patches, candidate_index)`: uint8 `(M, size, size, 3)` with
    `M = N * len(scales) * len(shifts)**2 * (8 if flips else 1)`, candidate by
    candidate (then scale, vertical shift, horizontal shift, orientation), and
    int32 `(M,)`, the row of `boxes` each patch comes from.
  """
  image = np.asarray(image)
  boxes = np.asarray(boxes, np.float64)
  if image.dtype != np.uint8 or image.ndim != 3 or image.shape[-1] != 3:
    raise ValueError(f"image must be uint8 (H, W, 3) RGB, got {image.dtype} {image.shape}")
  if boxes.ndim != 2 or boxes.shape[1] != 4:
    raise ValueError(f"boxes must be (N, 4) (top, left, bottom, right), got shape {boxes.shape}")
  heights, widths = boxes[:, 2] - boxes[:, 0], boxes[:, 3] - boxes[:, 1]
  bad = np.flatnonzero((heights <= 0) | (widths <= 0))
  if len(bad):
    raise ValueError(f"boxes {bad.tolist()} have bottom <= top or right <= left")
  patches = []
  for box, height, width in zip(boxes, heights, widths):
    center_y, center_x = (box[0] + box[2]) / 2, (box[1] + box[3]) / 2
    for scale in scales:
      crop_h, crop_w = max(1, _round(scale * height)), max(1, _round(scale * width))
      for shift_y in shifts:
        top = _round(center_y + shift_y * height - crop_h / 2)
        for shift_x in shifts:
          left = _round(center_x + shift_x * width - crop_w / 2)
          crop = _crop(image, top, left, crop_h, crop_w)
          patch = input_pipeline.resize(crop[None], size)[0]
          patches.extend(_orientations(patch) if flips else [patch])
  per_candidate = len(scales) * len(shifts) ** 2 * (8 if flips else 1)
  candidate_index = np.repeat(np.arange(len(boxes), dtype=np.int32), per_candidate)
  if not patches:
    return np.zeros((0, size, size, 3), np.uint8), candidate_index
  return np.stack(patches), candidate_index


def aggregate(patch_probs: np.ndarray, candidate_index: np.ndarray) -> np.ndarray:
  """Each candidate's probability: the mean over its patches (the paper's test-time averaging).

  Args:
    patch_probs: `(M,)` lesion probabilities, or `(M, C)` class probabilities, per patch.
    candidate_index: `(M,)` the candidate of each patch, as `candidate_patches` returns.

  Returns:
    `(N,)` or `(N, C)`, N = the largest index + 1; every candidate must have patches.
  """
  probs = np.asarray(patch_probs, np.float64)
  index = np.asarray(candidate_index)
  if index.ndim != 1 or len(probs) != len(index) or probs.ndim not in (1, 2):
    raise ValueError(f"patch_probs {probs.shape} must be (M,) or (M, C) for candidate_index "
                     f"of shape {index.shape}")
  if len(index) == 0 or index.min() < 0:
    raise ValueError("candidate_index must be non-empty non-negative candidate rows")
  counts = np.bincount(index)
  if np.any(counts == 0):
    raise ValueError(f"candidates {np.flatnonzero(counts == 0).tolist()} have no patches")
  sums = np.zeros((len(counts),) + probs.shape[1:])
  np.add.at(sums, index, probs)
  return sums / counts.reshape((-1,) + (1,) * (probs.ndim - 1))


def match_candidates(boxes: np.ndarray, lesion_map: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
  """Which candidates hit a lesion, and which: the label under each box center.

  A candidate is a true positive when its center lies inside an annotated
  lesion, the usual criterion for polyp detection.

  Args:
    boxes: `(N, 4)` `(top, left, bottom, right)` candidate boxes of one image.
    lesion_map: integer `(H, W)`, 0 for background and k > 0 inside lesion k.

  Returns:
    `(is_true, lesion_id)`: bool `(N,)`, and the label under each center (0 for
    false positives and for centers outside the image). To pool images for
    `froc`, make the ids unique across images, e.g. `(image_number, label)`
    encoded as `image_number * (max_label + 1) + label`.
  """
  boxes = np.asarray(boxes, np.float64)
  lesion_map = np.asarray(lesion_map)
  if lesion_map.ndim != 2 or not np.issubdtype(lesion_map.dtype, np.integer):
    raise ValueError(f"lesion_map must be an integer (H, W) label image, got "
                     f"{lesion_map.dtype} {lesion_map.shape}")
  rows = np.floor((boxes[:, 0] + boxes[:, 2]) / 2).astype(np.int64)
  cols = np.floor((boxes[:, 1] + boxes[:, 3]) / 2).astype(np.int64)
  inside = (rows >= 0) & (rows < lesion_map.shape[0]) & (cols >= 0) & (cols < lesion_map.shape[1])
  lesion_id = np.zeros(len(boxes), lesion_map.dtype)
  lesion_id[inside] = lesion_map[rows[inside], cols[inside]]
  return lesion_id > 0, lesion_id


@dataclasses.dataclass(frozen=True, eq=False)
class Froc:
  """A FROC curve: one point per distinct candidate score, most confident first.

  Point i counts the candidates scoring >= `thresholds[i]`; the first point
  (threshold +inf) is the empty detector at (0 FPs, sensitivity 0).
  """
  thresholds: np.ndarray
  sensitivity: np.ndarray
  fp_per_image: np.ndarray

  def sensitivity_at(self, fp_rate: float) -> float:
    """The highest sensitivity with at most `fp_rate` false positives per image
    (the operating point; PE detection in the paper: 3 per volume)."""
    if fp_rate < 0:
      raise ValueError(f"fp_rate must be >= 0, got {fp_rate}")
    return float(np.max(self.sensitivity[self.fp_per_image <= fp_rate + 1e-12]))

  def cpm(self, fp_rates: Sequence[float] = CPM_FP_RATES) -> float:
    """One number for the curve: the mean sensitivity at `fp_rates` FPs per image,
    by default the CAD community's CPM at 1/8, 1/4, ..., 8 FPs per image."""
    return float(np.mean([self.sensitivity_at(r) for r in fp_rates]))


def froc(candidate_scores: np.ndarray, candidate_is_true: np.ndarray,
         candidate_lesion_id: np.ndarray, n_images: int, n_lesions: int) -> Froc:
  """Sensitivity against false positives per image at every threshold.

  A lesion counts as found at threshold t when any true candidate on it scores
  >= t, and counts once however many do; every other candidate scoring >= t is
  a false positive. Sensitivity is over all `n_lesions` annotated lesions,
  including those no candidate reached, so the curve scores the whole system.

  Args:
    candidate_scores: `(N,)` per-candidate probabilities (e.g. from `aggregate`),
      pooled over the test set.
    candidate_is_true: `(N,)` booleans, the candidate lies on a lesion.
    candidate_lesion_id: `(N,)` integers, the lesion a true candidate lies on,
      unique across the test set; ignored for false candidates.
    n_images: images (or volumes, for FPs per volume) in the test set.
    n_lesions: lesions annotated in the test set.

  Returns:
    The `Froc` curve.
  """
  scores = np.asarray(candidate_scores, np.float64)
  is_true = np.asarray(candidate_is_true)
  lesion_id = np.asarray(candidate_lesion_id)
  if scores.ndim != 1 or is_true.shape != scores.shape or lesion_id.shape != scores.shape:
    raise ValueError(f"candidate_scores {scores.shape}, candidate_is_true {is_true.shape} and "
                     f"candidate_lesion_id {lesion_id.shape} must be matching (N,) arrays")
  if is_true.dtype != bool or not np.issubdtype(lesion_id.dtype, np.integer):
    raise ValueError(f"candidate_is_true must be booleans and candidate_lesion_id integers, "
                     f"got {is_true.dtype} and {lesion_id.dtype}")
  if np.isnan(scores).any():
    raise ValueError("candidate_scores contain NaN; the model likely diverged")
  if n_images < 1 or n_lesions < 1:
    raise ValueError(f"n_images and n_lesions must be >= 1, got {n_images} and {n_lesions}")
  hit, lesion_index = np.unique(lesion_id[is_true], return_inverse=True)
  if len(hit) > n_lesions:
    raise ValueError(f"true candidates lie on {len(hit)} distinct lesions but n_lesions is "
                     f"{n_lesions}")
  best = np.full(len(hit), -np.inf)  # a lesion is found from its best candidate's score down
  np.maximum.at(best, lesion_index, scores[is_true])
  thresholds = np.r_[np.inf, np.unique(scores)[::-1]]
  return Froc(thresholds=thresholds,
              sensitivity=_count_at_least(best, thresholds) / n_lesions,
              fp_per_image=_count_at_least(scores[~is_true], thresholds) / n_images)


def _count_at_least(values: np.ndarray, thresholds: np.ndarray) -> np.ndarray:
  """How many `values` are >= each threshold."""
  return len(values) - np.searchsorted(np.sort(values), thresholds, side="left")


def _round(x: float) -> int:
  """Half-up rounding, so crops move consistently (Python's `round` goes to even)."""
  return int(np.floor(x + 0.5))


def _crop(image: np.ndarray, top: int, left: int, height: int, width: int) -> np.ndarray:
  """`image[top:top + height, left:left + width]`, zeros where the window leaves the image."""
  out = np.zeros((height, width) + image.shape[2:], image.dtype)
  r0, r1 = max(top, 0), min(top + height, image.shape[0])
  c0, c1 = max(left, 0), min(left + width, image.shape[1])
  if r0 < r1 and c0 < c1:
    out[r0 - top:r1 - top, c0 - left:c1 - left] = image[r0:r1, c0:c1]
  return out


def _orientations(patch: np.ndarray) -> list[np.ndarray]:
  """The 8 symmetries of a square patch: rotations by 90 degrees, then mirrored ones."""
  mirrored = patch[:, ::-1]
  return [np.rot90(p, k) for p in (patch, mirrored) for k in range(4)]
