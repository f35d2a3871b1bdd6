"""Per-parameter learning rates: strict regex rules, LLRD, bias multipliers, weight decay."""
from __future__ import annotations

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tuning import config as config_lib
from tuning import depth, schedule, train

BLOCKS = ("stem", "layer1", "layer2", "head")
PARAMS = {b: {"conv": {"kernel": jnp.full((2, 3), 2.0), "bias": jnp.full(3, 2.0)}} for b in BLOCKS}


def _flat(tree) -> dict:
  return {schedule.param_name(p): v for p, v in
          jax.tree_util.tree_leaves_with_path(tree, is_leaf=lambda x: x is None)}


def test_every_parameter_must_match_exactly_one_rule():
  rules = ((r"stem/.*", 0.1), (r".*/bias", 2.0), (r"layer1/.*", None))
  with pytest.raises(ValueError) as e:
    schedule.match_rules(PARAMS, rules)
  message = str(e.value)
  assert "no rule matches: head/conv/kernel, layer2/conv/kernel" in message
  assert "stem/conv/bias (by 'stem/.*', '.*/bias')" in message
  assert "layer1/conv/bias (by '.*/bias', 'layer1/.*')" in message
  assert "layer2/conv/bias" not in message  # matched once


def test_a_bad_regex_is_named():
  with pytest.raises(ValueError, match=r"rule 'stem\[' is not a valid regex"):
    schedule.match_rules(PARAMS, (("stem[", 1.0),))


def test_depth_llrd_bias_and_rules_compose():
  mults = _flat(schedule.multipliers(
      PARAMS, BLOCKS, trainable_from=1, head_lr_mult=10.0, layer_decay=0.5, bias_lr_mult=2.0,
      rules=((r"layer1/.*", None), (r"(layer2|head|stem)/.*", 3.0))))
  assert mults["stem/conv/kernel"] is None  # below the boundary: a rule cannot unfreeze it
  assert mults["layer1/conv/kernel"] is None and mults["layer1/conv/bias"] is None  # rule: frozen
  assert mults["layer2/conv/kernel"] == pytest.approx(0.5 * 3.0)  # one block below the head
  assert mults["layer2/conv/bias"] == pytest.approx(0.5 * 2.0 * 3.0)
  assert mults["head/conv/kernel"] == pytest.approx(10.0 * 3.0)
  assert mults["head/conv/bias"] == pytest.approx(10.0 * 2.0 * 3.0)


def test_llrd_decays_geometrically_from_the_head_down():
  mults = _flat(schedule.multipliers(PARAMS, BLOCKS, trainable_from=0, layer_decay=0.8))
  assert [mults[f"{b}/conv/kernel"] for b in BLOCKS] == pytest.approx([0.8 ** 3, 0.8 ** 2, 0.8, 1.0])


@settings(max_examples=10, deadline=None)
@given(st.integers(0, len(BLOCKS) - 1))
def test_the_boundary_freezes_below_and_only_trainable_params_hold_state(trainable_from):
  mults = schedule.multipliers(PARAMS, BLOCKS, trainable_from, head_lr_mult=10.0)
  for index, block in enumerate(BLOCKS):
    want = None if index < trainable_from else 10.0 if block == "head" else 1.0
    assert set(jax.tree.leaves(mults[block], is_leaf=lambda x: x is None)) == {want}
  assert schedule.count_trainable(PARAMS, mults) == 9 * (len(BLOCKS) - trainable_from)
  tx = schedule.make_optimizer(mults, learning_rate=0.1, momentum=0.9, steps_per_epoch=5,
                               decay_per_epoch=0.5)
  moments = [x for x in jax.tree.leaves(tx.init(PARAMS)) if np.ndim(x) > 0]
  assert sum(x.size for x in moments) == schedule.count_trainable(PARAMS, mults)


def test_head_learns_at_the_multiplied_rate_and_rates_decay_per_epoch():
  mults = schedule.multipliers(PARAMS, BLOCKS, 1, head_lr_mult=10.0)
  tx = schedule.make_optimizer(mults, learning_rate=0.1, momentum=0.0, steps_per_epoch=2,
                               decay_per_epoch=0.5)
  grads = jax.tree.map(jnp.ones_like, PARAMS)
  state = tx.init(PARAMS)
  steps = []
  for _ in range(3):
    updates, state = tx.update(grads, state, PARAMS)
    steps.append({b: float(updates[b]["conv"]["bias"][0]) for b in BLOCKS})
  assert [s["stem"] for s in steps] == [0.0, 0.0, 0.0]
  np.testing.assert_allclose([s["layer1"] for s in steps], [-0.1, -0.1, -0.05], rtol=1e-6)
  np.testing.assert_allclose([s["head"] for s in steps], [-1.0, -1.0, -0.5], rtol=1e-6)


def test_weight_decay_is_decoupled_on_kernels_and_never_touches_frozen_params():
  mults = schedule.multipliers(PARAMS, BLOCKS, trainable_from=2)
  tx = schedule.make_optimizer(mults, learning_rate=0.1, momentum=0.9, steps_per_epoch=100,
                               decay_per_epoch=1.0, weight_decay=0.01)
  params, state = PARAMS, tx.init(PARAMS)
  zero_grads = jax.tree.map(jnp.zeros_like, PARAMS)
  for _ in range(5):
    updates, state = tx.update(zero_grads, state, params)
    params = jax.tree.map(lambda p, u: p + u, params, updates)
  for block in ("stem", "layer1"):  # frozen: bit-identical, decay or not
    chex.assert_trees_all_equal(params[block], PARAMS[block])
  for block in ("layer2", "head"):
    np.testing.assert_allclose(params[block]["conv"]["kernel"], 2.0 * (1 - 0.1 * 0.01) ** 5, rtol=1e-6)
    chex.assert_trees_all_equal(params[block]["conv"]["bias"], PARAMS[block]["conv"]["bias"])
  moments = [x for x in jax.tree.leaves(state) if np.ndim(x) > 0]
  assert sum(x.size for x in moments) == schedule.count_trainable(PARAMS, mults) == 18


def test_parameters_outside_blocks_are_an_error():
  with pytest.raises(ValueError, match="outside the model's blocks.*'extra'"):
    schedule.multipliers({**PARAMS, "extra": {"w": jnp.ones(1)}}, BLOCKS, 1)


def test_l2sp_pulls_tuned_weights_to_the_pretrained_ones_not_the_head_or_frozen():
  anchor = jax.tree.map(jnp.zeros_like, PARAMS)  # "pretrained" values: 0; params start at 2
  anchor["head"] = jax.tree.map(lambda _: None, PARAMS["head"])  # the fresh head has no anchor
  mults = schedule.multipliers(PARAMS, BLOCKS, trainable_from=1)
  tx = schedule.make_optimizer(mults, learning_rate=0.1, momentum=0.0, steps_per_epoch=100,
                               decay_per_epoch=1.0, l2sp_anchor=anchor, l2sp_strength=0.5)
  updates, _ = tx.update(jax.tree.map(jnp.zeros_like, PARAMS), tx.init(PARAMS), PARAMS)
  for block in ("layer1", "layer2"):  # gradient 0.5 * (2 - 0) = 1, times lr 0.1
    chex.assert_trees_all_close(updates[block], jax.tree.map(lambda p: jnp.full_like(p, -0.1), PARAMS[block]))
  chex.assert_trees_all_equal(updates["head"], jax.tree.map(jnp.zeros_like, PARAMS["head"]))
  chex.assert_trees_all_equal(updates["stem"], jax.tree.map(jnp.zeros_like, PARAMS["stem"]))


@pytest.mark.parametrize("scheme", ["llrd", "l2sp", "all", "from:layer2", "scratch"])
def test_train_builds_each_schemes_optimizer_from_the_config(scheme):
  config = config_lib.defaults()
  config.bias_lr_mult, config.layer_decay, config.l2sp_strength = 2.0, 0.5, 0.5
  parsed = depth.parse_scheme(scheme, BLOCKS)
  mults, tx = train.make_optimizer(config, parsed, PARAMS, BLOCKS, steps_per_epoch=10)
  flat = _flat(mults)
  decay = 0.5 if scheme == "llrd" else 1.0
  head = 1.0 if scheme == "scratch" else config.head_lr_mult
  assert flat["head/conv/kernel"] == head and flat["head/conv/bias"] == 2 * head
  assert flat["layer2/conv/kernel"] == decay
  assert flat["stem/conv/kernel"] == (None if scheme == "from:layer2" else decay ** 3)
  lr = config.scratch_lr if scheme == "scratch" else config.lr
  updates, _ = tx.update(jax.tree.map(jnp.zeros_like, PARAMS), tx.init(PARAMS), PARAMS)
  # Zero gradients: only L2-SP moves anything, and its anchor is the starting point itself.
  chex.assert_trees_all_equal(updates, jax.tree.map(jnp.zeros_like, PARAMS))
  grads = jax.tree.map(jnp.ones_like, PARAMS)
  updates, _ = tx.update(grads, tx.init(PARAMS), PARAMS)
  assert float(updates["layer2"]["conv"]["kernel"][0, 0]) == pytest.approx(-lr * decay)
