"""Per-parameter learning rates: strict regex rules, LLRD, bias multipliers, weight decay."""
from __future__ import annotations

import functools

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tuning import config as config_lib
from tuning import depth, models, schedule, train

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


def _rates(tx, params, steps: int) -> list[dict]:
  """Each step's rate per block: plain SGD (momentum 0) on gradients of 1 updates by -rate."""
  grads, state, rates = jax.tree.map(jnp.ones_like, params), tx.init(params), []
  for _ in range(steps):
    updates, state = tx.update(grads, state, params)
    rates.append({b: -float(updates[b]["conv"]["kernel"][0, 0]) for b in params})
  return rates


def test_a_warmup_rule_ramps_linearly_from_zero_then_decays_per_epoch_from_the_peak():
  rules = ((r"layer2/.*", {"mult": 2, "warmup_epochs": 0.5}),
           (r"head/.*", {"decay": "constant", "warmup_epochs": 1}), (r"(stem|layer1)/.*", 1.0))
  mults = schedule.multipliers(PARAMS, BLOCKS, trainable_from=1, rules=rules)
  tx = schedule.make_optimizer(mults, curves=schedule.curves(PARAMS, rules), learning_rate=0.1,
                               momentum=0.0, steps_per_epoch=4, decay_per_epoch=0.5, epochs=3)
  rates = _rates(tx, PARAMS, 12)
  # layer2: peak 0.2 after 2 steps (half an epoch), then x0.5 every 4 steps from the peak.
  want = [0, 0.1, 0.2, 0.2, 0.2, 0.2, 0.1, 0.1, 0.1, 0.1, 0.05, 0.05]
  np.testing.assert_allclose([r["layer2"] for r in rates], want, rtol=1e-6)
  np.testing.assert_allclose([r["head"] for r in rates],
                             [0, 0.025, 0.05, 0.075] + [0.1] * 8, rtol=1e-6)
  # A plain multiplier keeps the default: no warmup, x0.5 per epoch.
  np.testing.assert_allclose([r["layer1"] for r in rates], [0.1] * 4 + [0.05] * 4 + [0.025] * 4,
                             rtol=1e-6)
  assert [r["stem"] for r in rates] == [0.0] * 12  # below the boundary


def test_cosine_anneals_from_the_peak_to_its_end_value_at_the_phase_end_and_holds_it():
  rules = ((r"head/.*", {"mult": 10, "warmup_epochs": 1, "decay": "cosine", "end": 0.1}),
           (r"(stem|layer1|layer2)/.*", None))
  mults = schedule.multipliers(PARAMS, BLOCKS, trainable_from=0, rules=rules)
  tx = schedule.make_optimizer(mults, curves=schedule.curves(PARAMS, rules), learning_rate=0.1,
                               momentum=0.0, steps_per_epoch=2, decay_per_epoch=0.5, epochs=3)
  peak, end = 1.0, 0.1
  cosine = [end + (1 - end) * 0.5 * (1 + np.cos(np.pi * t / 4)) for t in range(5)]
  want = [0.0, 0.5 * peak] + [peak * c for c in cosine] + [peak * end] * 2
  rates = _rates(tx, PARAMS, 9)
  np.testing.assert_allclose([r["head"] for r in rates], want, rtol=1e-6, atol=1e-7)
  assert rates[6]["head"] == pytest.approx(end * peak)  # the phase's 6 steps done
  assert {r[b] for r in rates for b in ("stem", "layer1", "layer2")} == {0.0}


def test_rules_with_their_own_curves_never_move_frozen_params_even_with_weight_decay():
  rules = ((r"stem/.*", None), (r"layer1/.*", {"warmup_epochs": 1, "decay": "cosine"}),
           (r"layer2/.*", {"mult": 3, "decay": "constant"}), (r"head/.*", 1.0))
  mults = schedule.multipliers(PARAMS, BLOCKS, trainable_from=0, rules=rules)
  tx = schedule.make_optimizer(mults, curves=schedule.curves(PARAMS, rules), learning_rate=0.1,
                               momentum=0.9, steps_per_epoch=2, decay_per_epoch=0.9, epochs=4,
                               weight_decay=0.5)
  params, state = PARAMS, tx.init(PARAMS)
  for i in range(6):
    grads = jax.tree.map(lambda p: jax.random.normal(jax.random.key(i), p.shape), params)
    updates, state = tx.update(grads, state, params)
    params = jax.tree.map(lambda p, u: p + u, params, updates)
  chex.assert_trees_all_equal(params["stem"], PARAMS["stem"])
  for block in ("layer1", "layer2", "head"):
    assert not np.array_equal(params[block]["conv"]["kernel"], PARAMS[block]["conv"]["kernel"])
  moments = [x for x in jax.tree.leaves(state) if np.ndim(x) > 0]
  assert sum(x.size for x in moments) == schedule.count_trainable(PARAMS, mults) == 27


@pytest.mark.parametrize("rule, message", [
    ((r"head/.*", {"warmup": 1}),
     "rule 'head/.*': unknown key 'warmup'; allowed: mult, warmup_epochs, decay, end"),
    ((r"head/.*", {"decay": "linear"}),
     "rule 'head/.*': decay = 'linear'; expected one of exponential, cosine, constant"),
    ((r"head/.*", {"mult": 0}), "rule 'head/.*': mult = 0; expected a number > 0 (None freezes)"),
    ((r"head/.*", 0.0), "rule 'head/.*': mult = 0.0; expected a number > 0 (None freezes)"),
    ((r"head/.*", {"warmup_epochs": -1}),
     "rule 'head/.*': warmup_epochs = -1; expected a number of epochs >= 0"),
    ((r"head/.*", {"decay": "cosine", "end": 2}),
     "rule 'head/.*': end = 2; expected a fraction of the peak rate in [0, 1]"),
    ((r"head/.*", {"end": 0.1}), "rule 'head/.*': end = 0.1 needs decay 'cosine' in the same rule"),
    ((r"head/.*", "cosine"), "rule 'head/.*': 'cosine'; expected None (frozen), a multiplier > 0 "
                             "or a dict with keys mult, warmup_epochs, decay, end"),
    ((r"head[", 1.0), "rule 'head[' is not a valid regex"),
    (("head/.*",), "rule ('head/.*',): expected a (regex, None | multiplier | dict) pair"),
])
def test_bad_rules_are_config_errors_naming_the_rule_the_key_and_what_is_allowed(rule, message):
  config = config_lib.defaults()
  config.schedule = (rule, (r".*", 1.0))
  with pytest.raises(ValueError) as e:
    config_lib.validate(config)
  assert f"config.schedule {message}" in str(e.value)


def test_a_warmup_must_end_within_every_phase_it_shapes():
  config = config_lib.defaults()
  config.update(scheme="lpft", epochs=4, lpft_probe_epochs=1,
                schedule=((r"head/.*", {"warmup_epochs": 1}), (r".*", 1.0)))
  with pytest.raises(ValueError, match=r"config.scheme: phase 0 runs 1 epoch\(s\), but schedule "
                                       r"rule 'head/.*' warms up for 1; a warmup must end within"):
    config_lib.validate(config)
  config.lpft_probe_epochs = 2
  config_lib.validate(config)


def test_the_real_train_step_honours_a_per_rule_schedule():
  """The head warms up over an epoch of 2 steps, so its first step's rate is 0, while
  block5/unit1 trains from the first step and a rule freezes block5/unit0. The model
  exists from block5 up (the step starts on what enters it, as with cached features),
  which keeps it small."""
  model = models.create("mobilenet_v1_0.25", 2)
  blocks = type(model).block_names
  start = blocks.index("block5")
  shapes = jax.eval_shape(lambda: model.init(jax.random.key(0), jnp.zeros((1, 32, 32, 3))))
  features = jax.eval_shape(lambda v: model.apply(v, jnp.zeros((4, 32, 32, 3)), stop=start),
                            shapes)
  variables = jax.jit(lambda r: model.init(r, jnp.zeros(features.shape), start=start))(
      jax.random.key(0, impl="unsafe_rbg"))
  config = config_lib.defaults()
  config.schedule = ((r"head/.*", {"warmup_epochs": 1, "decay": "constant"}),
                     (r"block5/unit1/.*", 1.0), (r"block5/unit0/.*", None))
  scheme = depth.parse_scheme("from:block5", blocks)
  _, tx = train.make_optimizer(config, scheme, variables["params"], blocks, steps_per_epoch=2,
                               epochs=3)
  step = jax.jit(functools.partial(train.make_train_step(model, tx, start, start=start),
                                   rng=jax.random.key(1)))
  rng = np.random.default_rng(0)
  batch = lambda: {"image": jnp.asarray(rng.normal(size=features.shape), jnp.float32),
                   "label": jnp.asarray([0, 1, 0, 1], jnp.int32)}
  before = jax.tree.map(np.asarray, variables["params"])
  changed = lambda params, *path: [not np.array_equal(a, b) for a, b in zip(
      jax.tree.leaves(functools.reduce(dict.get, path, params)),
      jax.tree.leaves(functools.reduce(dict.get, path, before)))]
  state, _ = step(train.create_train_state(variables, tx), batch())
  assert changed(state["params"], "head") == [False, False]
  assert all(changed(state["params"], "block5", "unit1"))
  state, _ = step(state, batch())
  assert changed(state["params"], "head") == [True, True]
  chex.assert_trees_all_equal(state["params"]["block5"]["unit0"], before["block5"]["unit0"])
