"""MobileNet V1: TF-slim's TFLite files agree with the LiteRT interpreter; blocks, errors."""
from __future__ import annotations

import jax
import numpy as np
import pytest

import imagenet_samples
from tuning.convert import ConversionError, from_tflite
from tuning.preprocess import MINUS_ONE_TO_ONE

# The ImageNet classes of the photos, as `imagenet_samples.labels()` names them; any
# of the three cat classes is right, and ImageNet has no sunflower: daisy is its nearest.
PHOTO_CLASSES = {
    "bird.bmp": {"chickadee"},
    "cat.bmp": {"Egyptian cat", "tiger cat", "tabby, tabby cat"},
    "grace_hopper.bmp": {"military uniform"},
    "parrot.jpg": {"macaw"},
    "sunflower.bmp": {"daisy"},
}


def _file(alpha: str, size: int):
  return imagenet_samples.weights_dir() / f"mobilenet_v1_{alpha}_{size}_quant.tflite"


@pytest.mark.parametrize("alpha, size", [("0.25", 128), ("0.5", 160), ("0.75", 192)])
def test_top1_and_probabilities_match_litert(alpha, size):
  """Each uint8 file, dequantized to float, picks the interpreter's class for every photo.

  Its probabilities stay within 0.15 of the interpreter's (uint8 activations
  move them by up to 0.08 on these photos), which the top-1 alone does not
  check: with PyTorch's padding instead of SAME the classes stay but the
  probabilities move by 0.27 or more.
  """
  path, images = _file(alpha, size), imagenet_samples.images(size)
  model, variables, preprocess = from_tflite(f"mobilenet_v1_{alpha}", path)

  assert model.num_classes == 1001 and model.alpha == float(alpha)
  assert preprocess == MINUS_ONE_TO_ONE
  assert set(variables) == {"params"}  # BatchNorm is folded: no batch_stats
  probabilities = np.asarray(jax.nn.softmax(jax.jit(model.apply)(variables, preprocess(images))))
  reference = imagenet_samples.litert_outputs(path, images)
  ours = [int(i) for i in np.argmax(probabilities, axis=-1)]
  theirs = [int(i) for i in np.argmax(reference, axis=-1)]

  labels = imagenet_samples.labels()
  right = [name for name, i in zip(imagenet_samples.IMAGE_NAMES, ours)
           if labels[i] in PHOTO_CLASSES[name]]
  print(f"{path.name}: top-1 right on {len(right)}/{len(ours)}:",
        {n: (labels[a], labels[b]) for n, a, b in zip(imagenet_samples.IMAGE_NAMES, ours, theirs)})
  print(f"max |probability diff| = {np.abs(probabilities - reference).max():.3f}")
  assert ours == theirs
  np.testing.assert_allclose(probabilities, reference, rtol=0, atol=0.15)
  # Grace Hopper's uniform is the one photo these small models miss (academic gown, suit).
  assert set(right) >= set(PHOTO_CLASSES) - {"grace_hopper.bmp"}


def test_other_architecture_fails_at_the_first_differing_op():
  path = imagenet_samples.weights_dir() / "mobilenet_v2_1.0_224_quant.tflite"
  with pytest.raises(ConversionError, match=(
      f"{path}: op 2 is a CONV_2D .* activation NONE, expected a CONV_2D .* activation RELU6 "
      r"for block1/unit0/pointwise \(not a mobilenet_v1_0.25 as built here\)")):
    from_tflite("mobilenet_v1_0.25", path)


def test_file_of_another_width_lists_every_mis_shaped_weight():
  with pytest.raises(ConversionError) as error:
    from_tflite("mobilenet_v1_0.5", _file("0.25", 128))
  message = str(error.value)
  # Every conv's weights and bias (stem, 13 depthwise, 13 pointwise) and the
  # classifier's weights; only the classifier's bias (1001 classes) fits.
  assert f"{2 * 27 + 1} problem(s)" in message
  assert ("op 0 CONV_2D weights has shape (8, 3, 3, 3), expected (16, 3, 3, 3) "
          "(for params/stem/conv/kernel)") in message
  assert "expected (1001, 512) (for params/head/classifier/kernel)" in message
