"""Pretrained weights from other frameworks, as (model, variables, preprocess)."""
from tuning.convert.common import ConversionError
from tuning.convert.tflite import from_tflite
from tuning.convert.torch_pickle import load_state_dict
from tuning.convert.torchvision import URLS, fetch, from_torchvision

__all__ = ["URLS", "ConversionError", "fetch", "from_tflite", "from_torchvision",
           "load_state_dict"]
