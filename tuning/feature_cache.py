"""Frozen-trunk features, computed once per image rather than once per epoch.

A pretrained scheme that freezes blocks 0..k-1 runs them in inference mode
(`tuning.models.layers.run_blocks`: BatchNorm on its running averages, no
dropout), and the input pipeline maps each image to the same input every epoch,
so what enters block k is a fixed function of the image. `build` computes it
once for every image of the train, val and test splits; training and evaluation
then run blocks k.. only (`model.apply(..., start=k)`) on
`input_pipeline.feature_train_batches`, which batches the features exactly as
`train_batches` batches the images. A head-only run then trains at the cost of
its head, and its evaluations cost nearly nothing.
"""
from __future__ import annotations

import math
import os
import tempfile
from typing import Callable, Mapping

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from tqdm import tqdm

from tuning import augment, depth, input_pipeline
from tuning.datasets.medmnist import Split
from tuning.preprocess import Preprocess

# Caches up to this size stay in memory; larger ones (shallow boundaries at large
# image sizes, e.g. 112x112x16 floats per image after MobileNetV2's block1 at
# 224 px) go to memory-mapped files under the workdir, paged in as batches need them.
MAX_IN_MEMORY_BYTES = 2**30


def applies(config: ml_collections.ConfigDict, scheme: depth.Scheme) -> bool:
  """Whether a run trains on cached features: the one place that decides it.

  Cached features equal what the frozen blocks would compute at every visit of
  an image only if
  - the scheme freezes blocks (`trainable_from > 0`, pretrained schemes only),
    which run deterministically in inference mode (`run_blocks`); and
  - the training pipeline gives each image the same input every epoch:
    `input_pipeline.train_batches` resizes and normalises, and augments only
    when `config.augment` is on the fly (`augment.on_the_fly`); pre-generated
    copies (`config.augment_copies`) are fixed images and cache like any other.
  `config.cache_features = False` turns caching off.
  """
  return config.cache_features and scheme.trainable_from > 0 and not augment.on_the_fly(config)


def build(trunk: Callable[[jax.Array], jax.Array], splits: Mapping[str, Split], *,
          batch_size: int, image_size: int, preprocess: Preprocess,
          sharding: jax.sharding.Sharding, directory: str, progress: bool = False,
          desc: str = "features", max_in_memory_bytes: int = MAX_IN_MEMORY_BYTES
          ) -> dict[str, np.ndarray]:
  """`trunk`'s output for every image of every split, one row per image in split order.

  `trunk` maps a batch of preprocessed images (as `input_pipeline.eval_batches`
  yields them, so resized and normalised as in training) to what enters the
  first trained block. Up to `max_in_memory_bytes` in all, the features are
  arrays in memory; beyond, `np.memmap`s of anonymous temporary files in
  `directory`, which the OS deletes when the arrays go, also on a kill.
  """
  out = jax.eval_shape(trunk, jax.ShapeDtypeStruct(
      (batch_size, image_size, image_size, 3), jnp.float32))
  row, dtype = out.shape[1:], np.dtype(out.dtype)
  total = sum(len(s.labels) for s in splits.values()) * math.prod(row) * dtype.itemsize
  on_disk = total > max_in_memory_bytes
  if on_disk:
    os.makedirs(directory, exist_ok=True)
  features = {}
  for name, split in splits.items():
    shape = (len(split.labels), *row)
    if on_disk:  # the mapping holds its own descriptor: the file can close at once
      with tempfile.TemporaryFile(dir=directory) as f:
        features[name] = np.memmap(f, dtype, "w+", shape=shape)
    else:
      features[name] = np.empty(shape, dtype)
  steps = sum(-(-len(s.labels) // batch_size) for s in splits.values())
  with tqdm(total=steps, desc=desc, leave=False, disable=not progress) as bar:
    for name, split in splits.items():
      done = 0
      for batch in input_pipeline.eval_batches(split, batch_size=batch_size,
                                                image_size=image_size, preprocess=preprocess):
        rows = np.asarray(trunk(jax.device_put(batch["image"], sharding)))[batch["mask"]]
        features[name][done:done + len(rows)] = rows
        done += len(rows)
        bar.update()
  return features
