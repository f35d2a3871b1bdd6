"""Every shipped config builds and validates (schemes name real blocks, values in range)."""
from __future__ import annotations

import importlib.util
import pathlib

import pytest

from tuning import config as config_lib

CONFIGS = pathlib.Path(__file__).resolve().parents[1] / "configs"
CASES = [(path, None) for path in sorted(CONFIGS.rglob("*.py"))]
CASES += [(CONFIGS / "kandel2020" / "pcam.py", arch) for arch in ("vgg16", "vgg19", "inception_v3")]


@pytest.mark.parametrize("path, arg", CASES, ids=lambda x: getattr(x, "name", x))
def test_shipped_config_validates(path, arg):
  spec = importlib.util.spec_from_file_location(path.stem, path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  config = module.get_config() if arg is None else module.get_config(arg)
  config_lib.validate(config)
  assert module.__doc__ and "tuning sweep --config" in module.__doc__
