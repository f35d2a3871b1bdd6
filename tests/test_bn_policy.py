"""BatchNorm policies: what a train step changes (dropout still acting), exact re-estimation."""
from __future__ import annotations

import functools
from typing import ClassVar

import chex
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from tuning import bn_policy, config as config_lib, depth, schedule, train
from tuning.models.efficientnet import MBConv
from tuning.models.layers import ClassifierHead, ConvNormAct, run_blocks
from test_train_step import flops

SIZE = 8


class Toy(nn.Module):
  """A 1x1 conv stem and its BatchNorm, an EfficientNet unit, a head.

  The unit holds BatchNorms and stochastic depth inside a trainable block, as
  EfficientNet's do; the stem's BatchNorm sees `images @ kernel`, which numpy
  computes exactly.
  """
  num_classes: int = 3
  dropout_rate: float = 0.0
  drop_rate: float = 0.0
  block_names: ClassVar[tuple[str, ...]] = ("stem", "block", "head")

  @nn.compact
  def __call__(self, x, train=False, trainable_from=0, start=0, stop=None):
    blocks = [("stem", ConvNormAct(8, 1, name="stem")),
              ("block", MBConv(1, 3, 8, 1, self.drop_rate, nn.relu, squeeze_excitation=False,
                               same_padding=False, bn_epsilon=1e-5, name="block")),
              ("head", ClassifierHead(self.num_classes, self.dropout_rate, name="head"))]
    return run_blocks(blocks, x, train=train, trainable_from=trainable_from, start=start,
                      stop=stop)


@pytest.fixture(scope="module")
def variables():
  """Every `Toy`'s variables, whatever its dropout rates."""
  # Jitted, with `unsafe_rbg`: compiles faster than an eager init runs on CPU.
  init = jax.jit(lambda rng: Toy().init(rng, jnp.zeros((1, SIZE, SIZE, 3))))
  return jax.tree.map(np.asarray, init(jax.random.key(0, impl="unsafe_rbg")))


def batches(n, batch=4, num_classes=3):
  rng = np.random.default_rng(0)
  return [{"image": jnp.asarray(rng.normal(size=(batch, SIZE, SIZE, 3)), jnp.float32),
           "label": jnp.asarray(rng.integers(0, num_classes, batch), jnp.int32)} for _ in range(n)]


def setup(model, variables, scheme, policy):
  """Multipliers, train state, and the step for a dropout RNG, as `train_and_evaluate` builds them."""
  config = config_lib.defaults()
  config.bn_policy, config.lr = policy, 0.05
  blocks = type(model).block_names
  parsed = depth.parse_scheme(scheme, blocks)
  mults, tx = train.make_optimizer(config, parsed, variables["params"], blocks, steps_per_epoch=2)
  make_step = lambda rng: functools.partial(
      train.make_train_step(model, tx, parsed.trainable_from, bn=policy), rng=rng)
  return mults, train.create_train_state(variables, tx), make_step


@pytest.mark.parametrize("policy", bn_policy.POLICIES)
def test_train_steps_change_what_the_policy_trains(variables, policy):
  # Stochastic depth, inside the trained block with its BatchNorms, is the only dropout.
  model = Toy(drop_rate=0.5)
  mults, state, make_step = setup(model, variables, "from:block", policy)
  # The dropout RNG as an argument: one compilation for every RNG.
  step = jax.jit(lambda rng, state, batch: make_step(rng)(state, batch))
  first = batches(1)[0]
  losses = [float(step(jax.random.key(seed), state, first)[1]["loss"]) for seed in (2, 3, 2)]
  assert losses[0] == losses[2] != losses[1], "dropout does not act"
  for batch in batches(3):
    state, metrics = step(jax.random.key(1), state, batch)
  assert np.isfinite(metrics["loss"])

  updates_stats = policy in (bn_policy.TRAIN_ALL, bn_policy.TRAIN_STATS_FROZEN_AFFINE)
  trains_affine = policy != bn_policy.TRAIN_STATS_FROZEN_AFFINE
  kinds = set()
  for collection in ("params", "batch_stats"):
    old = dict(jax.tree_util.tree_leaves_with_path(variables[collection]))
    for path, new in jax.tree_util.tree_leaves_with_path(state[collection]):
      name = f"{collection}/{schedule.param_name(path)}"
      if name.startswith(f"{collection}/stem/"):
        kind, should_change = "frozen", False
      elif collection == "batch_stats":
        kind, should_change = "stats", updates_stats
      elif "/bn/" in name:
        kind, should_change = "affine", trains_affine
      else:
        kind, should_change = "kernel" if name.endswith("kernel") else "other", True
      changed = not np.array_equal(np.asarray(new), old[path])
      assert changed == should_change, f"{policy}: {name} {'changed' if changed else 'unchanged'}"
      kinds.add(kind)
  assert {"frozen", "stats", "affine", "kernel"} <= kinds
  # Frozen parameters, and BatchNorm's under `train_stats_frozen_affine`, hold no optimizer state.
  moments = sum(x.size for x in jax.tree.leaves(state["opt_state"]) if np.ndim(x) > 0)
  assert moments == schedule.count_trainable(variables["params"], mults)
  affine = sum(p.size for path, p in jax.tree_util.tree_leaves_with_path(variables["params"]["block"])
               if "/bn/" in f"/{schedule.param_name(path)}")
  trained = sum(p.size for b in ("block", "head") for p in jax.tree.leaves(variables["params"][b]))
  assert moments == trained - (0 if trains_affine else affine)


def test_reestimate_gives_the_exact_moments_of_the_batchnorm_input(variables):
  model = Toy()
  rng = np.random.default_rng(0)
  # Batches of unequal sizes and means: averaging the batches' variances, or a
  # momentum average, would miss the spread between batches.
  data = [(rng.normal(size=(n, SIZE, SIZE, 3)) * 2 + offset).astype(np.float32)
          for n, offset in ((8, 3.0), (8, -1.0), (5, 0.5))]
  stats = bn_policy.reestimate(jax.jit(bn_policy.make_moments(model)), variables, data,
                               jax.random.key(1))
  kernel = variables["params"]["stem"]["conv"]["kernel"].astype(np.float64)[0, 0]
  pre_bn = np.einsum("nhwc,cd->nhwd", np.concatenate(data).astype(np.float64), kernel)
  got = stats["stem"]["bn"]
  assert got["mean"].dtype == got["var"].dtype == np.float32
  np.testing.assert_allclose(got["mean"], pre_bn.mean((0, 1, 2)), rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(got["var"], pre_bn.var((0, 1, 2)), rtol=1e-5)
  # Blocks below `trainable_from` keep their statistics; the others get new ones.
  partial = bn_policy.reestimate(jax.jit(bn_policy.make_moments(model, trainable_from=1)),
                                 variables, data, jax.random.key(1))
  chex.assert_trees_all_equal(partial["stem"], variables["batch_stats"]["stem"])
  for new, old in zip(jax.tree.leaves(partial["block"]),
                      jax.tree.leaves(variables["batch_stats"]["block"])):
    assert not np.array_equal(new, old)


def test_restart_unfrozen_reestimates_only_the_blocks_a_phase_unfreezes(variables):
  """From the head down to the stem: `block` had trained, the stem is new; neither the
  block's learnt averages nor anything above them may change."""
  model = Toy()
  data = [np.random.default_rng(0).normal(size=(6, SIZE, SIZE, 3)).astype(np.float32) * 3]
  # Source-like statistics far from the data's, as ImageNet's are from X-rays'.
  stale = {**variables, "batch_stats": jax.tree.map(lambda s: s + 100.0, variables["batch_stats"])}
  moments = jax.jit(bn_policy.make_moments(model, trainable_from=0))
  got = bn_policy.restart_unfrozen(moments, stale, data, jax.random.key(1), Toy.block_names,
                                   boundary=0, previous=1)
  want = bn_policy.reestimate(moments, stale, data, jax.random.key(1))
  chex.assert_trees_all_equal(got["stem"], want["stem"])
  chex.assert_trees_all_equal(got["block"], stale["batch_stats"]["block"])
  assert np.abs(got["stem"]["bn"]["var"] - stale["batch_stats"]["stem"]["bn"]["var"]).min() > 1


def test_head_only_step_runs_no_backward_through_frozen_layers_under_every_policy(variables):
  """As tests/test_train_step.py: a head-only step does no more arithmetic than the
  forward pass and the head's gradient, whatever the BatchNorm policy."""
  model = Toy(dropout_rate=0.5, drop_rate=0.5)
  batch = batches(1)[0]
  forward = lambda v, images: model.apply(v, images, train=True, mutable=["batch_stats"],
                                          rngs={"dropout": jax.random.key(0)})
  forward_flops = flops(forward, variables, batch["image"])
  for policy in bn_policy.POLICIES:
    _, state, make_step = setup(model, variables, "head", policy)
    assert flops(make_step(jax.random.key(1)), state, batch) < 1.05 * forward_flops, policy
  _, state, make_step = setup(model, variables, "all", bn_policy.FROZEN_STATS)
  assert flops(make_step(jax.random.key(1)), state, batch) > 2 * forward_flops
