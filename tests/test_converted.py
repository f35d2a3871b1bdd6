"""Converted weights on disk (`tuning convert`, `config.pretrained`): exact round trips, loud refusals."""
from __future__ import annotations

import json

import jax
import numpy as np
import pytest

import imagenet_samples
from tuning import config as config_lib
from tuning import pretrained
from tuning.convert import ConversionError, converted, from_tflite, from_torchvision

MOBILENET_V2 = "mobilenet_v2-b0353104.pth"


def _assert_same_variables(got: dict, want: dict) -> None:
  got_leaves = dict(jax.tree_util.tree_leaves_with_path(got))
  want_leaves = dict(jax.tree_util.tree_leaves_with_path(want))
  assert got_leaves.keys() == want_leaves.keys()
  for key, value in want_leaves.items():
    assert np.array_equal(got_leaves[key], value), jax.tree_util.keystr(key)


@pytest.fixture(scope="module")
def saved_mobilenet(tmp_path_factory):
  source = imagenet_samples.weights_dir() / MOBILENET_V2
  model, variables, preprocess = from_torchvision("mobilenet_v2", source)
  out = tmp_path_factory.mktemp("converted") / "mobilenet_v2"
  converted.save(out, "mobilenet_v2", model, variables, preprocess, "torchvision", source)
  return out, model, variables, preprocess


def test_torchvision_weights_round_trip_bit_for_bit(saved_mobilenet):
  out, model, variables, preprocess = saved_mobilenet
  loaded_model, loaded, loaded_preprocess = converted.load(out)
  assert loaded_model == model
  assert loaded_preprocess == preprocess
  _assert_same_variables(loaded, variables)


def test_the_card_names_arch_source_and_its_sha256(saved_mobilenet):
  out, *_ = saved_mobilenet
  card = json.loads((out / converted.CARD).read_text())
  assert card["arch"] == "mobilenet_v2" and card["num_classes"] == 1000
  assert card["source_format"] == "torchvision" and card["source"] == MOBILENET_V2
  assert card["source_sha256"] == ("b03531047ffacf1e2488318dcd2aba1126cde36e3bfe1aa5cb07700aeeee9889")
  assert card["model_attributes"] == {}
  assert card["preprocess"]["name"] == "torchvision"


def test_tflite_model_attributes_survive_the_round_trip(tmp_path):
  source = imagenet_samples.weights_dir() / "mobilenet_v2_1.0_224_quant.tflite"
  model, variables, preprocess = from_tflite("mobilenet_v2", source)
  converted.save(tmp_path / "out", "mobilenet_v2", model, variables, preprocess, "tflite", source)
  card = converted.read_card(tmp_path / "out")
  assert card["model_attributes"] == {"same_padding": True, "folded_bn": True}
  assert card["num_classes"] == 1001
  loaded_model, loaded, loaded_preprocess = converted.load(tmp_path / "out")
  assert loaded_model == model and loaded_preprocess == preprocess
  _assert_same_variables(loaded, variables)


def test_a_config_with_pretrained_loads_it_instead_of_weights(saved_mobilenet):
  out, model, variables, preprocess = saved_mobilenet
  config = config_lib.defaults()
  config.weights = "/nonexistent.pth"  # never read: `pretrained` comes first
  config.pretrained = str(out)
  config_lib.validate(config)
  loaded_model, loaded, loaded_preprocess = pretrained.from_config(config)
  assert loaded_model == model and loaded_preprocess == preprocess
  _assert_same_variables(loaded, variables)
  assert pretrained.source(config) == str(out)  # what results rows and sweep keys record


def test_another_arch_is_refused_by_name(saved_mobilenet):
  out, *_ = saved_mobilenet
  with pytest.raises(ValueError, match=r"holds mobilenet_v2 weights .* arch is 'resnet18'"):
    converted.load(out, arch="resnet18")


def test_an_interrupted_conversion_is_not_loaded(tmp_path):
  (tmp_path / "variables").mkdir()
  with pytest.raises(FileNotFoundError, match="not a directory written by `tuning convert`"):
    converted.load(tmp_path)


def test_a_tampered_checkpoint_lists_what_does_not_fit(saved_mobilenet, tmp_path):
  out, model, variables, preprocess = saved_mobilenet
  variables = jax.tree.map(np.copy, variables)
  del variables["params"]["stem"]
  variables["params"]["extra"] = {"kernel": np.zeros((2, 2), np.float32)}
  converted.save(tmp_path / "out", "mobilenet_v2", model, variables, preprocess, "torchvision",
                 out / converted.CARD)
  with pytest.raises(ConversionError) as e:
    converted.load(tmp_path / "out")
  assert "missing params/stem/conv/kernel" in str(e.value)
  assert "unexpected params/extra/kernel (2, 2)" in str(e.value)


def test_save_refuses_a_non_empty_output(saved_mobilenet):
  out, model, variables, preprocess = saved_mobilenet
  with pytest.raises(FileExistsError, match="not empty"):
    converted.save(out, "mobilenet_v2", model, variables, preprocess, "torchvision",
                   out / converted.CARD)
