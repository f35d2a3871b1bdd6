"""Pretrained weights from other frameworks, as (model, variables, preprocess)."""
from tuning.convert.common import ConversionError
from tuning.convert.keras import URLS as KERAS_URLS, from_keras
from tuning.convert.numpy_pickle import from_numpy_pickle
from tuning.convert.tflite import from_tflite
from tuning.convert.timm import from_timm
from tuning.convert.torch_pickle import load_state_dict
from tuning.convert.torchvision import URLS, fetch, from_torchvision

__all__ = ["KERAS_URLS", "URLS", "ConversionError", "fetch", "from_keras", "from_numpy_pickle",
           "from_timm", "from_tflite", "from_torchvision", "load_state_dict"]
