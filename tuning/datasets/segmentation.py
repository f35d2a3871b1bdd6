"""Boundary segmentation data a user brings, as pixel patches to classify, scored in distance.

`config.dataset = "segmentation:PATH.npz"` (absolute, or relative to the working
directory): an `.npz` archive of
- `images`: uint8 `(N, H, W)` grayscale or `(N, H, W, 3)` RGB (the paper:
  carotid ultrasound regions of interest);
- `boundaries`: `(N, K, W)` numbers, the row of interface k in every column of
  image n as an expert traced it (the paper: K = 2, lumen-intima then
  media-adventitia);
- `pixel_size_um` (optional): the vertical pixel size in micrometres, a scalar
  or one per image `(N,)`; errors are then in µm, else in pixels;
- `split` (optional): `(N,)` strings `train`/`val`/`test` (e.g. by subject, as
  the paper); the splits it lacks (all, without it) are carved from the
  training images by `config.split_fractions`.

The classes are background (0) and interface k (k + 1), one pixel per column
(`tasks.segmentation.label_map_from_boundaries`). A split is the
`config.patch_size` patches centered on every interface pixel of its images and
on as many random background pixels (`stratified_pixels`, seeded by
`config.split_seed` and the image), so training, depth schemes, feature
caching and early stopping on validation patch AUC run as for classification.
The test images are then segmented whole: every pixel classified from its
patch by the tested model (`probability_map`), each interface traced as the
row of highest probability per column (`boundaries_from_probability`, median
filtered over `config.boundary_smooth` columns) and compared with the expert's
(`mean_boundary_distance`). The row gets `test_boundary_error` (mean over test
images and interfaces, lower is better), `test_boundary_error_per_interface`
and `boundary_error_unit` ("um" or "px"); the per-image errors (the paper's
box-plot values) and the traced rows are saved beside the test predictions
(`boundary_errors` `(n_test, K)`, `boundary_rows` `(n_test, K, W)`).
"""
from __future__ import annotations

import os
import pathlib
from typing import Sequence

import numpy as np

from tuning import datasets
from tuning.datasets import medmnist
from tuning.tasks import segmentation


def load(
    path: str | os.PathLike,
    *,
    patch_size: int,
    smooth: int,
    split_fractions: Sequence[float],
    split_seed: int,
) -> datasets.PatchDataset:
  """Reads and checks the file (see the module docstring), cutting each split's pixel patches.

  Raises ValueError naming the file and key for a missing, mis-shaped or
  mis-typed array, boundary rows outside the images, or pixel sizes <= 0.
  """
  path = pathlib.Path(path).expanduser().resolve()
  arrays = medmnist.read_npz(path, ("images", "boundaries"))
  images = medmnist.rgb_images(path, arrays["images"], "images")
  if not len(images):
    raise ValueError(f"{path}: 'images' holds no image")
  n, height, width = images.shape[:3]
  rows = arrays["boundaries"]
  if rows.dtype.kind not in "iuf" or rows.ndim != 3 or rows.shape[::2] != (n, width) or (
      not rows.shape[1]):
    raise ValueError(f"{path}: 'boundaries' has dtype {rows.dtype} and shape {rows.shape}, "
                     f"expected numbers of shape ({n}, K, {width}): the row of each of K >= 1 "
                     "interfaces in every column of every image")
  if not np.isfinite(rows).all() or rows.min() < -0.5 or rows.max() >= height - 0.5:
    raise ValueError(f"{path}: 'boundaries' has rows in [{rows.min()}, {rows.max()}], expected "
                     f"finite rows inside the images' {height} rows")
  pixel_size = arrays.get("pixel_size_um")
  if pixel_size is not None and (pixel_size.dtype.kind not in "iuf" or pixel_size.shape not in (
      (), (n,)) or not np.all(np.isfinite(pixel_size) & (pixel_size > 0))):
    raise ValueError(f"{path}: 'pixel_size_um' has dtype {pixel_size.dtype} and shape "
                     f"{pixel_size.shape}, expected positive micrometres, a scalar or ({n},)")
  label_maps = np.stack([segmentation.label_map_from_boundaries(height, r) for r in rows])
  index = datasets.image_splits(path, arrays.get("split"), np.zeros(n, np.int32),
                                split_fractions, split_seed)
  splits = {name: _pixel_patches(images, label_maps, rows_of, patch_size, split_seed)
            for name, rows_of in index.items()}
  test = index["test"]
  interfaces = range(1, rows.shape[1] + 1)
  scale = 1.0 if pixel_size is None else np.broadcast_to(pixel_size, (n,))[test, None]

  def evaluate(probs: np.ndarray, predict: datasets.Predict):
    del probs  # the test split holds sampled pixels; the task needs every pixel's class
    traced = np.stack([segmentation.boundaries_from_probability(
        segmentation.probability_map(images[i], predict, patch_size), interfaces, smooth)
                       for i in test])
    errors = segmentation.mean_boundary_distance(traced, rows[test], scale)
    return ({"test_boundary_error": float(errors.mean()),
             "test_boundary_error_per_interface": errors.mean(axis=0).tolist(),
             "boundary_error_unit": "px" if pixel_size is None else "um"},
            {"boundary_errors": errors, "boundary_rows": traced})

  return datasets.PatchDataset(
      name=f"segmentation:{path}", num_classes=len(interfaces) + 1, **splits, path=str(path),
      sha256=medmnist.sha256(path), evaluate=evaluate)


def _pixel_patches(images: np.ndarray, label_maps: np.ndarray, index: np.ndarray, size: int,
                   seed: int) -> medmnist.Split:
  """Class-balanced pixel patches of images `index` (`stratified_pixels` per image)."""
  patches, classes = [], []
  for i in index:
    pixels, pixel_classes = segmentation.stratified_pixels(label_maps[i], seed=(seed, int(i)))
    patches.append(segmentation.pixel_patches(images[i], pixels, size))
    classes.append(pixel_classes)
  return medmnist.Split(images=np.concatenate(patches), labels=np.concatenate(classes))
