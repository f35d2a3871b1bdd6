"""Input conventions of pretrained weights, applied by the data pipeline.

Every source of weights expects its own pixel convention (torchvision: RGB scaled
to [0, 1] then mean/std normalised; TensorFlow/Keras MobileNet and Inception:
[-1, 1]; Caffe: BGR minus a mean). A `Preprocess` records one, so the weights
and the way to feed them travel together.
"""
from __future__ import annotations

import dataclasses

import numpy as np


@dataclasses.dataclass(frozen=True)
class Preprocess:
  """Maps uint8 RGB pixels to the float inputs the weights were trained on.

  Computes `(pixels - mean) / std` per channel, in 0..255 pixel units and in the
  channel order of the weights (`bgr=True` reverses RGB first).
  """
  name: str
  mean: tuple[float, float, float]
  std: tuple[float, float, float]
  bgr: bool = False

  def __call__(self, images: np.ndarray) -> np.ndarray:
    """`images`: uint8 `[..., H, W, 3]` RGB. Returns float32 of the same shape."""
    x = np.asarray(images, np.float32)
    if self.bgr:
      x = x[..., ::-1]
    return (x - np.asarray(self.mean, np.float32)) / np.asarray(self.std, np.float32)

  def to_dict(self) -> dict:
    return dataclasses.asdict(self)

  @classmethod
  def from_dict(cls, d: dict) -> "Preprocess":
    return cls(name=d["name"], mean=tuple(d["mean"]), std=tuple(d["std"]), bgr=bool(d["bgr"]))


# torchvision / timm ImageNet weights: x/255, then ImageNet mean and std.
TORCHVISION = Preprocess(
    "torchvision", mean=(123.675, 116.28, 103.53), std=(58.395, 57.12, 57.375))
# TensorFlow MobileNet / Inception weights (TFLite, Keras `mode="tf"`): x/127.5 - 1.
MINUS_ONE_TO_ONE = Preprocess("minus_one_to_one", mean=(127.5,) * 3, std=(127.5,) * 3)
# BVLC Caffe weights (AlexNet): BGR in 0..255 minus a mean, in BGR order as the
# weights see it. Caffe subtracted its ILSVRC-2012 mean image, whose channel
# means (104.0, 116.7, 122.7) are the usual per-channel stand-in, here rounded.
CAFFE_IMAGENET = Preprocess("caffe_imagenet", mean=(104.0, 117.0, 123.0), std=(1.0,) * 3, bgr=True)
# Keras VGG16/VGG19 weights, `preprocess_input(mode="caffe")`: BGR in 0..255 minus
# the ImageNet channel means, in BGR order, not divided by any std.
KERAS_CAFFE = Preprocess("keras_caffe", mean=(103.939, 116.779, 123.68), std=(1.0,) * 3, bgr=True)
