"""`tuning.config.validate`: every bad field is named, with what was expected."""
from __future__ import annotations

import importlib.util
import math
import os
import pathlib
import subprocess
import sys
import textwrap

import hypothesis
import hypothesis.strategies as st
import ml_collections
import pytest

from tuning import config as config_lib

REPO = pathlib.Path(__file__).resolve().parents[1]


def _config(**overrides) -> ml_collections.ConfigDict:
  """The defaults with `overrides`, built from a dict.

  Assigning a wrong type to a ConfigDict field raises in ml_collections itself,
  so a config holding one (as a hand-built or loaded one may) is built afresh.
  """
  return ml_collections.ConfigDict({**config_lib.defaults().to_dict(), **overrides})


def _error(**overrides) -> str:
  with pytest.raises(ValueError) as e:
    config_lib.validate(_config(**overrides))
  return str(e.value)


def test_defaults_are_valid():
  config_lib.validate(config_lib.defaults())


def test_demo_config_is_valid():
  """The shipped experiment must pass its own checks, or `tuning sweep` fails at once."""
  spec = importlib.util.spec_from_file_location("demo_config", REPO / "configs" / "demo.py")
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  config_lib.validate(module.get_config())


def test_unknown_key_suggests_the_closest():
  config = config_lib.defaults()
  config.epoch = 3  # a typo that would otherwise silently train 10 epochs
  with pytest.raises(ValueError, match=r"unknown config key 'epoch' \(did you mean 'epochs'\?\)"):
    config_lib.validate(config)


@pytest.mark.parametrize("key, value, expected", [
    ("epochs", "3", "int"),
    ("train_fraction", "half", "float"),
    ("image_size", 64.5, "int"),
    ("epochs", True, "int"),  # bool is an int subclass, but never a valid count
    ("batch_size", False, "int"),
    ("scheme", 4, "str"),
])
def test_wrong_type_is_named(key, value, expected):
  message = _error(**{key: value})
  assert f"config.{key} = {value!r}: expected {expected}" in message


def test_int_is_accepted_for_float_fields():
  """`--config.lr=1` or `lr = 1` in a config file means 1.0, not a type error."""
  config_lib.validate(_config(lr=1, train_fraction=1, head_lr_mult=10, momentum=0))


@pytest.mark.parametrize("key, value, expected", [
    ("train_fraction", 0.0, "in (0, 1]"),
    ("train_fraction", 1.5, "in (0, 1]"),
    ("momentum", 1.0, "in [0, 1)"),
    ("image_size", 16, ">= 32"),
    ("batch_size", 0, ">= 1"),
    ("epochs", 0, ">= 1"),
    ("lr", -0.1, "> 0"),
])
def test_out_of_range_is_named(key, value, expected):
  message = _error(**{key: value})
  assert f"config.{key} = {value!r}: expected {expected}" in message


def test_unknown_arch_lists_the_known():
  message = _error(arch="vgg99")
  assert "config.arch = 'vgg99'" in message
  assert "'mobilenet_v2'" in message and "'resnet18'" in message


def test_unknown_scheme_lists_the_valid():
  message = _error(scheme="from:block9")
  assert "config.scheme: unknown scheme 'from:block9'" in message
  assert "from:block4" in message and "scratch" in message and "head" in message


def test_unknown_scheme_in_schemes_lists_the_valid():
  message = _error(schemes=("head", "from:blok4"))
  assert "config.schemes: unknown scheme 'from:blok4'" in message
  assert "from:block4" in message
  assert "'head'" not in message  # the valid entry is not reported


def test_schemes_are_checked_against_the_arch():
  """ResNet-18 has layer1..4, so MobileNetV2's default block names are wrong for it."""
  message = _error(arch="resnet18", scheme="from:layer3")
  assert "unknown scheme 'from:block6'" in message and "from:layer3" in message
  assert "config.scheme:" not in message  # from:layer3 is valid for resnet18


def test_a_problem_shared_by_scheme_and_schemes_is_reported_once():
  """A phased scheme named in both fields fails the same plan check: one line names both."""
  message = _error(scheme="gradual", schemes=("head", "gradual"), epochs=2)
  assert message.count("scheme gradual unfreezes") == 1
  assert "config.scheme and config.schemes: scheme gradual unfreezes" in message


@pytest.mark.parametrize("archs, schemes, fragment", [
    ((("resnet18", "", "torchvision"), ("vgg16", "", "torchvision")), ("head", "from:block9"),
     "config.schemes: 'from:block9' applies to none of config.archs (resnet18, vgg16)"),
    ((("resnet19", "", "torchvision"),), ("head",), "unknown arch 'resnet19'"),
    ((("resnet18", "", "onnx"),), ("head",), "unknown weights_format 'onnx'"),
    ((("resnet18", "x.pth"),), ("head",), "expected (arch, weights, weights_format) strings"),
])
def test_arch_grid_problems_are_named(archs, schemes, fragment):
  assert fragment in _error(archs=archs, schemes=schemes)


def test_every_problem_is_reported_at_once():
  """Fixing one field per run would be slow; one error names them all."""
  message = _error(epochs="3", train_fraction=1.5, scheme="from:block99", epoch=3)
  assert "config.epochs = '3'" in message
  assert "config.train_fraction = 1.5" in message
  assert "config.scheme: unknown scheme 'from:block99'" in message
  assert "unknown config key 'epoch'" in message
  assert len(message.splitlines()) == 5  # the header and one line per problem


@hypothesis.given(st.floats(min_value=0.0, max_value=1.0, exclude_min=True))
def test_any_fraction_in_unit_interval_is_valid(fraction):
  config_lib.validate(_config(train_fraction=fraction))


@hypothesis.given(st.floats().filter(lambda f: not 0 < f <= 1))
def test_any_fraction_outside_unit_interval_is_rejected(fraction):
  message = _error(train_fraction=fraction)
  assert "config.train_fraction" in message and "expected in (0, 1]" in message
  assert math.isnan(fraction) or repr(fraction) in message


def test_batch_size_must_split_over_devices():
  """Run apart: the device count is fixed when JAX starts, so fake 4 CPU devices."""
  code = textwrap.dedent("""
      import ml_collections
      from tuning import config
      c = config.defaults()
      c.batch_size = 6
      try:
        config.validate(c)
      except ValueError as e:
        print(e)
      c.batch_size = 8
      config.validate(c)
      print("8 ok")
  """)
  env = {**os.environ, "XLA_FLAGS": "--xla_force_host_platform_device_count=4",
         "JAX_PLATFORMS": "cpu"}
  out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True,
                       timeout=120, check=True).stdout
  assert "config.batch_size = 6: must be a multiple of the 4 devices" in out
  assert "8 ok" in out


@pytest.mark.parametrize("arch, size, minimum", [
    ("inception_v3", 74, 75), ("alexnet", 62, 63), ("alexnet_caffe", 38, 39)])
def test_an_image_size_below_the_archs_minimum_is_named(arch, size, minimum):
  config = config_lib.defaults()
  config.arch, config.image_size, config.schemes, config.scheme = arch, size, ("head",), "head"
  with pytest.raises(ValueError, match=rf"config.image_size = {size}: {arch} needs at least "
                                       rf"{minimum} px"):
    config_lib.validate(config)
  config.image_size = minimum
  config_lib.validate(config)
