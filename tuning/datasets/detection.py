"""Lesion detection data a user brings, as candidate patches to classify, scored by FROC.

`config.dataset = "detection:PATH.npz"` (absolute, or relative to the working
directory): an `.npz` archive of
- `images`: uint8 `(N, H, W)` grayscale or `(N, H, W, 3)` RGB;
- `lesions`: integer `(N, H, W)` maps, 0 for background and k > 0 inside lesion k
  of that image (ids need not be contiguous);
- `candidates`: integer `(M, 5)` rows `(image, top, left, bottom, right)`: the
  boxes (pixel edges, as `tuning.tasks.detection`) of the user's candidate
  generator, which the paper's pipeline assumes (a handcrafted polyp detector,
  tobogganing for PE);
- `split` (optional): `(N,)` strings `train`/`val`/`test`, e.g. by patient or
  video. The splits it lacks (all, without it) are carved from the training
  images by `config.split_fractions`, stratified by whether an image holds a
  lesion; every candidate of an image goes where its image goes.

Each candidate becomes the paper's patches (`tasks.detection.candidate_patches`
over `config.detection_scales`, `detection_shifts` and `detection_flips`,
resized to `config.patch_size`), labelled 1 when its center lies on a lesion
(`match_candidates`). A split is its images' patches, so training, depth
schemes, feature caching, augmentation, `config.balance` (the paper's
stratified patch set) and early stopping on validation patch AUC run as for
classification; `config.train_fraction` subsamples training patches. The test
split's patch probabilities are then averaged per candidate (`aggregate`) into
a FROC curve over the test images (`froc`: lesions no candidate reached count
as missed): the row gets `test_cpm` and `test_froc_sensitivity` at each
`config.froc_fp_rates` false positives per image, and the curve is saved beside
the test predictions (`froc_fp_per_image`, `froc_sensitivity`, `froc_thresholds`).
"""
from __future__ import annotations

import dataclasses
import os
import pathlib
from typing import Sequence

import numpy as np

from tuning import datasets
from tuning.datasets import medmnist
from tuning.tasks import detection

NUM_CLASSES = 2  # 0: the candidate is a false positive, 1: it lies on a lesion


@dataclasses.dataclass(frozen=True, eq=False)
class _Candidates:
  """A split's candidate patches, and what scoring its candidates needs."""
  split: medmnist.Split
  candidate_index: np.ndarray  # (P,) the candidate of each patch, in split order
  is_true: np.ndarray  # (C,) the candidate's center lies on a lesion
  lesion_id: np.ndarray  # (C,) that lesion, unique across the dataset
  n_images: int
  n_lesions: int


def load(
    path: str | os.PathLike,
    *,
    patch_size: int,
    scales: Sequence[float],
    shifts: Sequence[float],
    flips: bool,
    fp_rates: Sequence[float],
    split_fractions: Sequence[float],
    split_seed: int,
) -> datasets.PatchDataset:
  """Reads and checks the file (see the module docstring), cutting every candidate's patches.

  Raises ValueError naming the file and key for a missing, mis-shaped or
  mis-typed array, a candidate outside its image, or a split whose candidates
  are not both on and off lesions (its patch AUC would be undefined).
  """
  path = pathlib.Path(path).expanduser().resolve()
  arrays = medmnist.read_npz(path, ("images", "lesions", "candidates"))
  images = medmnist.rgb_images(path, arrays["images"], "images")
  if not len(images):
    raise ValueError(f"{path}: 'images' holds no image")
  lesions, candidates = arrays["lesions"], arrays["candidates"]
  if not np.issubdtype(lesions.dtype, np.integer) or lesions.shape != images.shape[:3]:
    raise ValueError(f"{path}: 'lesions' has dtype {lesions.dtype} and shape {lesions.shape}, "
                     f"expected integer lesion ids of shape {images.shape[:3]} (as 'images')")
  if lesions.min() < 0:
    raise ValueError(f"{path}: 'lesions' holds negative ids; expected 0 (background) or k > 0")
  if (not np.issubdtype(candidates.dtype, np.integer) or candidates.ndim != 2
      or candidates.shape[1] != 5):
    raise ValueError(f"{path}: 'candidates' has dtype {candidates.dtype} and shape "
                     f"{candidates.shape}, expected integer (M, 5) rows "
                     "(image, top, left, bottom, right)")
  bad = np.flatnonzero((candidates[:, 0] < 0) | (candidates[:, 0] >= len(images))
                       | (candidates[:, 3] <= candidates[:, 1])
                       | (candidates[:, 4] <= candidates[:, 2]))
  if len(bad):
    raise ValueError(f"{path}: 'candidates' rows {bad[:5].tolist()} name no image of the "
                     f"{len(images)} or have bottom <= top or right <= left")
  grid = dict(size=patch_size, scales=tuple(scales), shifts=tuple(shifts), flips=flips)
  rows = datasets.image_splits(path, arrays.get("split"),
                               lesions.reshape(len(lesions), -1).any(axis=1).astype(np.int32),
                               split_fractions, split_seed)
  parts = {name: _candidates(path, name, images, lesions, candidates, index, grid)
           for name, index in rows.items()}
  def evaluate(probs: np.ndarray, predict: datasets.Predict):
    del predict  # the test split holds every test candidate's patches, `probs` their scores
    return _froc_metrics(parts["test"], probs, fp_rates)
  return datasets.PatchDataset(
      name=f"detection:{path}", num_classes=NUM_CLASSES,
      **{name: part.split for name, part in parts.items()}, path=str(path),
      sha256=medmnist.sha256(path), evaluate=evaluate)


def _froc_metrics(test: _Candidates, probs: np.ndarray, fp_rates: Sequence[float]
                 ) -> tuple[dict, dict[str, np.ndarray]]:
  """The row's FROC metrics and the curve, from the test patches' class probabilities."""
  curve = detection.froc(detection.aggregate(probs[:, 1], test.candidate_index), test.is_true,
                         test.lesion_id, test.n_images, test.n_lesions)
  # JSON keys are strings: "3" for 3 false positives per image.
  return ({"test_cpm": curve.cpm(),
           "test_froc_sensitivity": {f"{r:g}": curve.sensitivity_at(r) for r in fp_rates}},
          {"froc_fp_per_image": curve.fp_per_image, "froc_sensitivity": curve.sensitivity,
           "froc_thresholds": curve.thresholds})


def _candidates(path: pathlib.Path, name: str, images: np.ndarray, lesions: np.ndarray,
                candidates: np.ndarray, index: np.ndarray, grid: dict) -> _Candidates:
  """The patches of split `name`'s images `index`, and their candidates' truth."""
  ids_per_image = int(lesions.max()) + 1  # lesion k of image i is i * ids_per_image + k
  patches, candidate_index, is_true, lesion_id, seen = [], [], [], [], 0
  for i in index:
    boxes = candidates[candidates[:, 0] == i, 1:].astype(np.float64)
    if not len(boxes):
      continue
    crops, which = detection.candidate_patches(images[i], boxes, **grid)
    true, ids = detection.match_candidates(boxes, lesions[i])
    patches.append(crops)
    candidate_index.append(which + seen)
    seen += len(boxes)
    is_true.append(true)
    lesion_id.append(i * ids_per_image + ids.astype(np.int64))
  if not is_true or len(np.unique(np.concatenate(is_true))) < 2:
    raise ValueError(f"{path}: the {name} split's {len(index)} images need candidates both on "
                     "and off lesions ('candidates' centers inside and outside 'lesions'), "
                     "for its patch AUC")
  candidate_index, is_true = np.concatenate(candidate_index), np.concatenate(is_true)
  return _Candidates(
      split=medmnist.Split(images=np.concatenate(patches),
                           labels=is_true[candidate_index].astype(np.int32)),
      candidate_index=candidate_index, is_true=is_true, lesion_id=np.concatenate(lesion_id),
      n_images=len(index),
      n_lesions=sum(len(np.unique(lesions[i][lesions[i] > 0])) for i in index))
