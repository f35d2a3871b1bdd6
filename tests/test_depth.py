"""Depth schemes: parsing, labels and the optimizer built from them."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, strategies as st

from tuning import depth

BLOCKS = ("stem", "layer1", "layer2", "head")
PARAMS = {b: {"conv": {"kernel": jnp.ones((2, 3)), "bias": jnp.ones(3)}} for b in BLOCKS}


@pytest.mark.parametrize("scheme, trainable_from, pretrained", [
    ("scratch", 0, False), ("all", 0, True), ("head", 3, True),
    ("from:layer1", 1, True), ("from:stem", 0, True), ("from:head", 3, True),
    ("FT:only head", 3, True), ("FT:layer1-head", 1, True), ("FT:stem-head", 0, True)])
def test_parse_scheme(scheme, trainable_from, pretrained):
  assert depth.parse_scheme(scheme, BLOCKS) == depth.Scheme(scheme, trainable_from, pretrained)


@pytest.mark.parametrize("scheme", ["from:layer9", "fc8", "from:", "Head", "FT:layer1-layer2",
                                    "FT:only layer2", "FT:-head"])
def test_unknown_scheme_lists_valid_ones(scheme):
  with pytest.raises(ValueError, match=r"unknown scheme .*from:layer1.*from:layer2"):
    depth.parse_scheme(scheme, BLOCKS)


@given(st.integers(0, len(BLOCKS) - 1))
def test_labels_split_at_the_boundary(trainable_from):
  labels = depth.param_labels(PARAMS, BLOCKS, trainable_from)
  for index, block in enumerate(BLOCKS):
    want = (depth.FROZEN if index < trainable_from else
            depth.HEAD if block == "head" else depth.TUNED)
    assert set(jax.tree.leaves(labels[block])) == {want}
  assert depth.count_trainable(PARAMS, labels) == 9 * (len(BLOCKS) - trainable_from)


def test_parameters_outside_blocks_are_an_error():
  with pytest.raises(ValueError, match="outside the model's blocks.*'extra'"):
    depth.param_labels({**PARAMS, "extra": {"w": jnp.ones(1)}}, BLOCKS, 1)


@given(st.integers(0, len(BLOCKS) - 1))
def test_optimizer_holds_state_only_for_trainable_params(trainable_from):
  labels = depth.param_labels(PARAMS, BLOCKS, trainable_from)
  tx = depth.make_optimizer(labels, learning_rate=0.1, head_lr_mult=10.0, momentum=0.9,
                            steps_per_epoch=5, decay_per_epoch=0.5)
  state = tx.init(PARAMS)
  moments = [x for x in jax.tree.leaves(state) if np.ndim(x) > 0]
  assert sum(x.size for x in moments) == depth.count_trainable(PARAMS, labels)


def test_head_learns_at_the_multiplied_rate_and_rates_decay_per_epoch():
  labels = depth.param_labels(PARAMS, BLOCKS, 1)
  tx = depth.make_optimizer(labels, learning_rate=0.1, head_lr_mult=10.0, momentum=0.0,
                            steps_per_epoch=2, decay_per_epoch=0.5)
  grads = jax.tree.map(jnp.ones_like, PARAMS)
  state = tx.init(PARAMS)
  steps = []
  for _ in range(3):
    updates, state = tx.update(grads, state, PARAMS)
    steps.append({b: float(updates[b]["conv"]["bias"][0]) for b in BLOCKS})
  assert [s["stem"] for s in steps] == [0.0, 0.0, 0.0]
  np.testing.assert_allclose([s["layer1"] for s in steps], [-0.1, -0.1, -0.05], rtol=1e-6)
  np.testing.assert_allclose([s["head"] for s in steps], [-1.0, -1.0, -0.5], rtol=1e-6)
