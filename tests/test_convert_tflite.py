"""TFLite MobileNetV2 files convert to Flax models that agree with the LiteRT interpreter."""
from __future__ import annotations

import jax
import numpy as np
import pytest

import imagenet_samples
from tuning.convert import ConversionError, from_tflite
from tuning.preprocess import MINUS_ONE_TO_ONE

MOBILENET_V2_FILES = ("tf2_mobilenet_v2_1.0_224_ptq.tflite",  # int8 per-channel, TF-Hub TF2
                      "mobilenet_v2_1.0_224_quant.tflite")  # uint8 per-tensor, TF-slim


@pytest.mark.parametrize("name", MOBILENET_V2_FILES)
def test_top1_matches_litert(name):
  path = imagenet_samples.weights_dir() / name
  images = imagenet_samples.images()
  model, variables, preprocess = from_tflite("mobilenet_v2", path)

  assert model.num_classes == 1001 and preprocess == MINUS_ONE_TO_ONE
  assert set(variables) == {"params"}  # BatchNorm is folded: no batch_stats
  logits = jax.jit(model.apply)(variables, preprocess(images))
  ours = [int(i) for i in np.argmax(logits, axis=-1)]
  theirs = [int(i) for i in np.argmax(imagenet_samples.litert_outputs(path, images), axis=1)]

  labels = imagenet_samples.labels()
  print(name, {n: (labels[a], labels[b]) for n, a, b in
               zip(imagenet_samples.IMAGE_NAMES, ours, theirs)})
  assert ours == theirs
  top1 = dict(zip(imagenet_samples.IMAGE_NAMES, ours))
  assert "cat" in labels[top1["cat.bmp"]]
  assert labels[top1["parrot.jpg"]] == "macaw"


def test_other_architecture_fails_at_the_first_differing_op():
  path = imagenet_samples.weights_dir() / "mobilenet_v1_0.25_128_quant.tflite"
  with pytest.raises(ConversionError, match=(
      f"{path}: op 2 is a CONV_2D .* activation RELU6, expected a CONV_2D .* activation NONE "
      "for block1/unit0/project")):
    from_tflite("mobilenet_v2", path)


def test_not_a_tflite_file():
  path = imagenet_samples.weights_dir() / "mobilenet_v2-b0353104.pth"
  with pytest.raises(ValueError, match=f"{path}: not a TFLite flatbuffer"):
    from_tflite("mobilenet_v2", path)
