"""Random augmentations of training images, on the fly or pre-generated once.

`config.augment` is a comma list of these ("" for none), applied in this order:
- `crop`: pad each side by `crop_pad` of the image side (reflected) and crop
  back to the original size at a random offset;
- `jitter`: scale by a factor in `[1 - max_scale, 1 + max_scale]` about the
  centre and shift by up to `max_shift` of the side, bilinear, edges repeated;
- `hflip`, `vflip`: mirror left-right, top-bottom, each image with probability 1/2;
- `rot90`: rotate by a random multiple of 90 degrees (square images only).

On the fly (`config.augment_copies = 0`), `Augment` is a grain `RandomMap` over
uint8 image batches: `input_pipeline.train_batches` gives it a generator derived
from the run's seed and the batch's position in the run, so a resumed run sees
the augmented batches an uninterrupted one would. Pre-generated
(`augment_copies = k`), `pregenerate` replaces the training split by k augmented
copies of each image once, like the fixed sets of patches at several scales,
shifts and orientations of Tajbakhsh et al. 2016; training is then
deterministic per image again, which caching frozen features needs.
"""
from __future__ import annotations

import dataclasses

import grain
import ml_collections
import numpy as np

from tuning.datasets.medmnist import Split

OPS = ("crop", "jitter", "hflip", "vflip", "rot90")
_CHUNK = 256  # images `pregenerate` reads and augments at a time


def parse(spec: str) -> tuple[str, ...]:
  """The operations a `config.augment` string names, in `OPS` order.

  Raises ValueError naming unknown ones.
  """
  names = {s.strip() for s in spec.split(",")} - {""}
  unknown = sorted(names - set(OPS))
  if unknown:
    raise ValueError(
        f"augment {spec!r}: unknown {unknown}; expected a comma list of "
        f"{', '.join(OPS)}, or '' for none")
  return tuple(op for op in OPS if op in names)


@dataclasses.dataclass(frozen=True)
class Augment(grain.transforms.RandomMap):
  """Applies `ops`, in their order, to a uint8 `(B, H, W, 3)` batch, each image
  drawn independently; the result has the batch's shape."""
  ops: tuple[str, ...]
  crop_pad: float = 0.125  # of the side: 4 px at 32 px, the usual CIFAR setting
  max_scale: float = 0.1
  max_shift: float = 0.1

  def __post_init__(self):
    parse(",".join(self.ops))  # unknown names fail here, not mid-training

  def random_map(self, images: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    for op in self.ops:
      images = getattr(self, f"_{op}")(images, rng)
    return images

  def _crop(self, images: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    _, height, width, _ = images.shape
    pad = max(1, round(self.crop_pad * min(height, width)))
    padded = np.pad(images, ((0, 0), (pad, pad), (pad, pad), (0, 0)), mode="reflect")
    ys, xs = rng.integers(0, 2 * pad + 1, (2, len(images)))
    return np.stack([p[y:y + height, x:x + width] for p, y, x in zip(padded, ys, xs)])

  def _jitter(self, images: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    batch, height, width, _ = images.shape
    scale = rng.uniform(1 - self.max_scale, 1 + self.max_scale, (batch, 1, 1))
    shift_y, shift_x = rng.uniform(-self.max_shift, self.max_shift, (2, batch, 1, 1))
    # Where each output pixel samples the input: the inverse of scale-then-shift.
    centre_y, centre_x = (height - 1) / 2, (width - 1) / 2
    y = (np.arange(height)[None, :, None] - centre_y - shift_y * height) / scale + centre_y
    x = (np.arange(width)[None, None, :] - centre_x - shift_x * width) / scale + centre_x
    y, x = np.clip(y, 0, height - 1), np.clip(x, 0, width - 1)
    y0, x0 = np.floor(y).astype(int), np.floor(x).astype(int)
    y1, x1 = np.minimum(y0 + 1, height - 1), np.minimum(x0 + 1, width - 1)
    wy, wx = (y - y0)[..., None], (x - x0)[..., None]
    b = np.arange(batch)[:, None, None]
    pixel = lambda yy, xx: images[b, yy, xx].astype(np.float32)
    top = pixel(y0, x0) * (1 - wx) + pixel(y0, x1) * wx
    bottom = pixel(y1, x0) * (1 - wx) + pixel(y1, x1) * wx
    return np.rint(top * (1 - wy) + bottom * wy).astype(np.uint8)

  def _hflip(self, images: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    return np.where(rng.random(len(images))[:, None, None, None] < 0.5, images[:, :, ::-1], images)

  def _vflip(self, images: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    return np.where(rng.random(len(images))[:, None, None, None] < 0.5, images[:, ::-1], images)

  def _rot90(self, images: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    if images.shape[1] != images.shape[2]:
      raise ValueError(
          f"augment rot90 needs square images, got {images.shape[2]}x{images.shape[1]}; "
          "set config.load_size to load them square")
    turns = rng.integers(0, 4, len(images))
    return np.stack([np.rot90(image, k) for image, k in zip(images, turns)])


def pregenerate(split: Split, augment: Augment, *, k: int, seed: int) -> Split:
  """`split` with each image replaced by `k` augmented copies (adjacent rows).

  Materialises `k` times the split in memory. Images are read `_CHUNK` at a
  time, once each (lazily read ones are decoded once); each chunk's copies draw
  from their own generator, seeded by `seed`, the chunk and the copy.
  """
  if k < 1:
    raise ValueError(f"pregenerate needs k >= 1 copies, got {k}")
  n = len(split.labels)
  out = np.empty((n, k, *split.images.shape[1:]), np.uint8)
  for start in range(0, n, _CHUNK):
    rows = np.arange(start, min(start + _CHUNK, n))
    images = split.images[rows]
    for copy in range(k):
      out[rows, copy] = augment.random_map(images, np.random.default_rng((seed, start, copy)))
  return Split(images=out.reshape(n * k, *out.shape[2:]), labels=np.repeat(split.labels, k, axis=0))


def on_the_fly(config: ml_collections.ConfigDict) -> bool:
  """Whether a run's training images change from epoch to epoch (augmented per batch)."""
  return bool(parse(config.augment)) and not config.augment_copies


def from_config(split: Split, config: ml_collections.ConfigDict) -> tuple[Split, Augment | None]:
  """The training split and the transform `train_batches` applies per batch.

  The transform is None without `config.augment` and when `augment_copies`
  pre-generates the copies instead; only then are a run's training images fixed.
  """
  ops = parse(config.augment)
  if not ops:
    return split, None
  if config.augment_copies:
    return pregenerate(split, Augment(ops), k=config.augment_copies, seed=config.seed), None
  return split, Augment(ops)
