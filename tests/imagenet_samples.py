"""The real pretrained files and natural images of ../shared, for the converter tests.

Missing files fail the tests rather than skip them, so a misconfigured machine
cannot pass without checking the real checkpoints.
"""
from __future__ import annotations

import os
import pathlib

import numpy as np
import pytest
from PIL import Image

IMAGE_NAMES = ("bird.bmp", "cat.bmp", "grace_hopper.bmp", "parrot.jpg", "sunflower.bmp")


def weights_dir() -> pathlib.Path:
  """`$TUNING_WEIGHTS_DIR`, else `<repo>/../shared/weights`."""
  configured = os.environ.get("TUNING_WEIGHTS_DIR")
  path = (pathlib.Path(configured) if configured
          else pathlib.Path(__file__).resolve().parents[2] / "shared" / "weights")
  if not path.is_dir():
    pytest.fail(f"shared weights dir {path} does not exist; set TUNING_WEIGHTS_DIR")
  return path


def labels() -> list[str]:
  """The 1001 labels of the TFLite files: 0 = background, then the 1000 ImageNet classes."""
  return (weights_dir() / "imagenet_labels.txt").read_text().splitlines()


def images(size: int = 224) -> np.ndarray:
  """`IMAGE_NAMES` as uint8 RGB `[5, size, size, 3]`: central square, bilinear resize."""
  def load(name):
    image = Image.open(weights_dir().parent / "images" / name).convert("RGB")
    w, h = image.size
    side = min(w, h)
    box = ((w - side) // 2, (h - side) // 2, (w - side) // 2 + side, (h - side) // 2 + side)
    return np.asarray(image.crop(box).resize((size, size), Image.BILINEAR))
  return np.stack([load(name) for name in IMAGE_NAMES])


def litert_outputs(path, images: np.ndarray) -> np.ndarray:
  """The LiteRT interpreter's outputs for uint8 RGB `images`, the reference of the TFLite
  tests: each image quantized as the file's input tensor asks (from [-1, 1]), the
  outputs dequantized when the output tensor is quantized."""
  interpreter_module = pytest.importorskip(
      "ai_edge_litert.interpreter", reason="the LiteRT interpreter is the reference")
  from tuning.preprocess import MINUS_ONE_TO_ONE  # pylint: disable=import-outside-toplevel
  interpreter = interpreter_module.Interpreter(model_path=str(path))
  interpreter.allocate_tensors()
  (source,), (target,) = interpreter.get_input_details(), interpreter.get_output_details()
  scale, zero_point = source["quantization"]
  info = np.iinfo(source["dtype"])
  quantized = np.clip(np.round(MINUS_ONE_TO_ONE(images) / scale + zero_point), info.min, info.max)
  out_scale, out_zero_point = target["quantization"]
  outputs = []
  for image in quantized.astype(source["dtype"]):
    interpreter.set_tensor(source["index"], image[None])
    interpreter.invoke()
    out = interpreter.get_tensor(target["index"])[0].astype(np.float64)
    outputs.append((out - out_zero_point) * out_scale if out_scale else out)
  return np.stack(outputs)
