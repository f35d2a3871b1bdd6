"""Patch-based boundary segmentation (Tajbakhsh et al. 2016: carotid intima-media).

The protocol of the paper: segmentation as a 3-class pixel classifier
(background, lumen-intima interface, media-adventitia interface) applied to a
patch centered on each pixel of a region of interest. Training patches are
centered on pixels sampled per class, the plentiful background down-sampled so
the classes are balanced (`stratified_pixels`). At test time every pixel is
classified (`probability_map`), each interface is the row of highest confidence
in every column (`boundaries_from_probability`), and the error is the mean
distance in micrometres between predicted and expert interfaces, one value per
image and interface for box plots (`mean_boundary_distance`). The paper then
fits two open snakes to the per-column maxima; snakes are left out here, and a
median filter along the columns stands in for their smoothing.

Images and patches are uint8 RGB (repeat a grayscale ultrasound to 3 channels);
the model's `Preprocess` is applied after, as for classification batches.
"""
from __future__ import annotations

from typing import Callable, Sequence

import numpy as np
import scipy.ndimage

BACKGROUND, LUMEN_INTIMA, MEDIA_ADVENTITIA = 0, 1, 2
INTERFACES = (LUMEN_INTIMA, MEDIA_ADVENTITIA)


def label_map_from_boundaries(height: int, rows: np.ndarray) -> np.ndarray:
  """Per-pixel training classes from annotated interfaces.

  Args:
    height: rows of the image.
    rows: `(K, W)` row of interface k in every column (as an expert traces it).

  Returns:
    int32 `(height, W)`: `k + 1` on the pixel nearest interface k in each
    column (`INTERFACES` order for the carotid), `BACKGROUND` elsewhere.
  """
  rows = np.asarray(rows, np.float64)
  if rows.ndim != 2:
    raise ValueError(f"rows must be (K, W) interface rows per column, got shape {rows.shape}")
  pixel_rows = np.floor(rows + 0.5).astype(np.int64)
  if pixel_rows.min() < 0 or pixel_rows.max() >= height:
    raise ValueError(f"interface rows span [{rows.min()}, {rows.max()}], outside an image of "
                     f"height {height}")
  labels = np.full((height, rows.shape[1]), BACKGROUND, np.int32)
  for k, interface in enumerate(pixel_rows):
    labels[interface, np.arange(rows.shape[1])] = k + 1
  return labels


def stratified_pixels(label_map: np.ndarray, seed: int | Sequence[int]
                      ) -> tuple[np.ndarray, np.ndarray]:
  """Training pixels: every pixel of each rare class and as many background ones.

  The interfaces are one pixel thick, so background pixels outnumber them by
  orders of magnitude; as in the paper, the background is randomly
  down-sampled to the size of the largest other class so the classes balance.

  Args:
    label_map: integer `(H, W)` classes, `BACKGROUND` = 0.
    seed: picks the background pixels; a sequence, e.g. (seed, image number), gives
      each image of a dataset its own draw.

  Returns:
    `(pixels, classes)`: int `(N, 2)` (row, column) and int32 `(N,)`, grouped by class.
  """
  label_map = np.asarray(label_map)
  if label_map.ndim != 2 or not np.issubdtype(label_map.dtype, np.integer):
    raise ValueError(f"label_map must be an integer (H, W) image, got "
                     f"{label_map.dtype} {label_map.shape}")
  flat = label_map.ravel()
  others = [np.flatnonzero(flat == c) for c in np.unique(flat) if c != BACKGROUND]
  if not others:
    raise ValueError("label_map holds only background; there is nothing to balance against")
  background = np.flatnonzero(flat == BACKGROUND)
  keep = min(len(background), max(len(members) for members in others))
  chosen = np.sort(np.random.default_rng(seed).choice(background, keep, replace=False))
  index = np.concatenate([chosen] + others)
  pixels = np.stack(np.unravel_index(index, label_map.shape), axis=1)
  return pixels, flat[index].astype(np.int32)


def pixel_patches(image: np.ndarray, pixels: np.ndarray, size: int) -> np.ndarray:
  """`size` x `size` patches centered on `pixels`, zeros beyond the image.

  Patch i covers rows `pixels[i, 0] - size // 2` on (and the same for columns),
  so for an even `size` the pixel sits just below and right of the middle.
  Zero padding keeps border patches from repeating the edge into a fake band.

  Args:
    image: uint8 `(H, W, 3)` RGB.
    pixels: integer `(N, 2)` (row, column) inside the image.
    size: the patch side in image pixels (the model may resize it).

  Returns:
    uint8 `(N, size, size, 3)`.
  """
  pixels = np.asarray(pixels)
  windows = _windows(image, size)
  if pixels.ndim != 2 or pixels.shape[1] != 2 or not np.issubdtype(pixels.dtype, np.integer):
    raise ValueError(f"pixels must be integer (N, 2) (row, column), got {pixels.dtype} "
                     f"{pixels.shape}")
  outside = ((pixels < 0) | (pixels >= windows.shape[:2])).any(axis=1)
  if outside.any():
    raise ValueError(f"pixels {pixels[outside][:5].tolist()} lie outside the "
                     f"{windows.shape[:2]} image")
  return np.moveaxis(windows[pixels[:, 0], pixels[:, 1]], 1, -1)


def probability_map(image: np.ndarray, model: Callable[[np.ndarray], np.ndarray], size: int,
                    batch_size: int = 256) -> np.ndarray:
  """Class probabilities of every pixel, from the patch centered on it.

  Args:
    image: uint8 `(H, W, 3)` RGB region of interest.
    model: maps uint8 `(batch_size, size, size, 3)` patches to `(batch_size, C)`
      probabilities, resizing and preprocessing as its weights need, e.g.
      `lambda p: jax.nn.softmax(net.apply(v, preprocess(resize(p, 64)), train=False))`.
    size: the patch side, as in `pixel_patches`.
    batch_size: patches per call; the last batch is padded with blank patches so
      every call has one shape and a jitted model compiles once.

  Returns:
    float32 `(H, W, C)`.
  """
  if batch_size < 1:
    raise ValueError(f"batch_size must be >= 1, got {batch_size}")
  windows = _windows(image, size)
  height, width = windows.shape[:2]
  flat = windows.reshape((height * width,) + windows.shape[2:])
  outputs = []
  for start in range(0, len(flat), batch_size):
    chunk = np.moveaxis(flat[start:start + batch_size], 1, -1)
    padded = np.pad(chunk, ((0, batch_size - len(chunk)), (0, 0), (0, 0), (0, 0)))
    outputs.append(np.asarray(model(padded), np.float32)[:len(chunk)])
  probs = np.concatenate(outputs)
  if probs.ndim != 2:
    raise ValueError(f"model must return (batch, C) probabilities, got shape {probs.shape[1:]} "
                     "per patch")
  return probs.reshape(height, width, -1)


def boundaries_from_probability(prob_map: np.ndarray, classes: Sequence[int] = INTERFACES,
                                smooth: int = 1) -> np.ndarray:
  """Each interface as a row per column: where its confidence peaks in that column.

  Args:
    prob_map: `(H, W, C)` per-pixel class probabilities (`probability_map`).
    classes: the interface classes to trace, in the order to return them.
    smooth: odd width, in columns, of a median filter over each traced row;
      1 keeps the raw per-column maxima. It removes isolated columns that jump
      to a distant peak, a crude stand-in for the paper's open snakes.

  Returns:
    float64 `(len(classes), W)` rows.
  """
  prob_map = np.asarray(prob_map)
  if prob_map.ndim != 3:
    raise ValueError(f"prob_map must be (H, W, C), got shape {prob_map.shape}")
  if smooth < 1 or smooth % 2 == 0:
    raise ValueError(f"smooth must be an odd number of columns >= 1, got {smooth}")
  bad = [c for c in classes if not 0 <= c < prob_map.shape[2]]
  if bad:
    raise ValueError(f"classes {bad} are not channels of a prob_map with {prob_map.shape[2]}")
  rows = np.argmax(prob_map[:, :, list(classes)], axis=0).T.astype(np.float64)
  return scipy.ndimage.median_filter(rows, size=(1, smooth), mode="nearest")


def mean_boundary_distance(predicted_rows: np.ndarray, true_rows: np.ndarray,
                           pixel_size_um: float | np.ndarray) -> np.ndarray:
  """Segmentation error: the mean over columns of |predicted - true| row, in micrometres.

  Args:
    predicted_rows, true_rows: `(..., W)` rows per column, e.g. `(N, K, W)`
      for N images and K interfaces.
    pixel_size_um: the vertical pixel size, a scalar or an array broadcasting
      against the leading axes (e.g. `(N, 1)`: one per image).

  Returns:
    `(...)` errors, one per image and interface: the values of the paper's box plots.
  """
  predicted, true = np.asarray(predicted_rows, np.float64), np.asarray(true_rows, np.float64)
  if predicted.shape != true.shape or predicted.ndim < 1:
    raise ValueError(f"predicted_rows {predicted.shape} and true_rows {true.shape} must be "
                     "matching (..., W) arrays")
  if not (np.isfinite(predicted).all() and np.isfinite(true).all()):
    raise ValueError("boundary rows must be finite in every column")
  return np.mean(np.abs(predicted - true), axis=-1) * np.asarray(pixel_size_um, np.float64)


def _windows(image: np.ndarray, size: int) -> np.ndarray:
  """A view `(H, W, 3, size, size)`: the zero-padded patch centered on each pixel."""
  image = np.asarray(image)
  if image.dtype != np.uint8 or image.ndim != 3 or image.shape[-1] != 3:
    raise ValueError(f"image must be uint8 (H, W, 3) RGB, got {image.dtype} {image.shape}")
  if size < 1:
    raise ValueError(f"patch size must be >= 1, got {size}")
  before = size // 2
  padded = np.pad(image, ((before, size - 1 - before), (before, size - 1 - before), (0, 0)))
  return np.lib.stride_tricks.sliding_window_view(padded, (size, size), axis=(0, 1))
