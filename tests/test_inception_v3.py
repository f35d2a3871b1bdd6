"""InceptionV3 (Keras layout): blocks, Keras's conv2d_bn parameters, freezing.

Parity with Keras itself is in test_convert_keras.py.
"""
from __future__ import annotations

import functools

import chex
import jax
import jax.numpy as jnp
import pytest

import test_train_step
from tuning import models
from tuning.models import inception_v3

_BLOCKS = ("stem", *(f"mixed{i}" for i in range(11)), "head")


def test_blocks_are_named_ordered_and_own_all_params():
  model = models.create("inception_v3", num_classes=5)
  # 75 px, Keras's smallest: mixed9 and mixed10 see 1x1 maps.
  variables = jax.eval_shape(model.init, jax.random.key(0), jnp.zeros((1, 75, 75, 3)))
  assert type(model).block_names == _BLOCKS
  assert set(variables["params"]) == set(_BLOCKS)
  assert set(variables["params"]["head"]) == {"classifier"}
  assert set(variables["batch_stats"]) == set(_BLOCKS) - {"head"}
  # Keras's conv2d_bn: no conv bias, no BatchNorm scale.
  leaves = {tuple(key.key for key in path[-2:])
            for path, _ in jax.tree_util.tree_leaves_with_path(variables["params"])}
  assert leaves == {("conv", "kernel"), ("bn", "bias"), ("classifier", "kernel"),
                    ("classifier", "bias")}
  chex.assert_shape(jax.eval_shape(model.apply, variables, jnp.zeros((2, 75, 75, 3))), (2, 5))


def test_frozen_blocks_bit_identical_trainable_blocks_change(monkeypatch):
  """stem..mixed8 frozen; mixed9, mixed10 and the head train, on 75 px (the smallest input).

  Each module keeps only its first branch (mixed3 and mixed8 their strided one),
  so the train step compiles in seconds rather than a minute.
  """
  monkeypatch.setattr(inception_v3, "BLOCKS",
                      tuple((name, branches[:1]) for name, branches in inception_v3.BLOCKS))
  for name in ("setup", "batches"):
    monkeypatch.setattr(test_train_step, name,
                        functools.partial(getattr(test_train_step, name), size=75))
  test_train_step.test_frozen_blocks_bit_identical_trainable_blocks_change(
      "inception_v3", "from:mixed9")



def test_images_below_75_px_are_refused_not_turned_into_nan():
  model = models.create("inception_v3", 2)
  with pytest.raises(ValueError, match="InceptionV3 needs images of at least 75 px, got 74x80"):
    jax.eval_shape(model.init, jax.random.key(0), jnp.zeros((1, 74, 80, 3)))
