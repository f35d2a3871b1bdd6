"""The jitted train step: frozen blocks stay bit-identical and cost no backward pass."""
import functools

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from tuning import depth, models, schedule, train

SIZE = 32


def setup(arch, scheme, num_classes=3, size=SIZE, **model_kwargs):
  model = models.create(arch, num_classes, **model_kwargs)
  # `unsafe_rbg`: the init compiles 3-4x faster than with threefry on CPU.
  rng = jax.random.key(0, impl="unsafe_rbg")
  variables = jax.jit(lambda r: model.init(r, jnp.zeros((1, size, size, 3))))(rng)
  blocks = type(model).block_names
  trainable_from = depth.parse_scheme(scheme, blocks).trainable_from
  mults = schedule.multipliers(variables["params"], blocks, trainable_from, head_lr_mult=10.0)
  tx = schedule.make_optimizer(mults, learning_rate=0.05, momentum=0.9, steps_per_epoch=2,
                               decay_per_epoch=0.9)
  step = functools.partial(train.make_train_step(model, tx, trainable_from), rng=jax.random.key(1))
  return model, train.create_train_state(variables, tx), step, blocks[:trainable_from]


def batches(n, num_classes=3, batch=4, size=SIZE):
  rng = np.random.default_rng(0)
  return [{"image": jnp.asarray(rng.normal(size=(batch, size, size, 3)), jnp.float32),
           "label": jnp.asarray(rng.integers(0, num_classes, batch), jnp.int32)} for _ in range(n)]


@pytest.mark.parametrize("arch, scheme", [
    ("resnet18", "scratch"), ("resnet18", "head"), ("resnet18", "from:layer2"),
    ("resnet18", "from:layer4"), ("resnet18", "all"),
    ("mobilenet_v2", "head"), ("mobilenet_v2", "from:block6")])
def test_frozen_blocks_bit_identical_trainable_blocks_change(arch, scheme):
  _, state, step, frozen = setup(arch, scheme)
  before = jax.tree.map(np.asarray, state)
  step = jax.jit(step)
  for batch in batches(3):
    state, metrics = step(state, batch)
  assert np.isfinite(metrics["loss"])
  for collection in ("params", "batch_stats"):
    for block, subtree in before[collection].items():
      for path, old in jax.tree_util.tree_leaves_with_path(subtree):
        new = np.asarray(jax.tree_util.tree_flatten_with_path(state[collection][block])[0][
            [p for p, _ in jax.tree_util.tree_flatten_with_path(subtree)[0]].index(path)][1])
        name = f"{collection}/{block}{jax.tree_util.keystr(path)}"
        if block in frozen:
          assert new.tobytes() == old.tobytes(), f"frozen {name} changed"
        else:
          assert not np.array_equal(new, old), f"trainable {name} did not change"


@pytest.mark.parametrize("arch, scheme", [("resnet18", "head"), ("resnet18", "from:layer3"),
                                          ("mobilenet_v2", "from:block7")])
def test_frozen_params_have_no_optimizer_moments(arch, scheme):
  _, state, _, frozen = setup(arch, scheme)
  trainable = sum(p.size for b, sub in state["params"].items() if b not in frozen
                  for p in jax.tree.leaves(sub))
  moments = [x for x in jax.tree.leaves(state["opt_state"]) if np.ndim(x) > 0]
  assert sum(m.size for m in moments) == trainable


def flops(fn, *args) -> float:
  return jax.jit(fn).lower(*args).compile().cost_analysis()["flops"]


@pytest.mark.parametrize("arch", ["resnet18", "mobilenet_v2"])
def test_head_only_step_runs_no_backward_through_frozen_layers(arch):
  """Frozen layers must cost nothing in the backward pass: after XLA's dead-code
  elimination a head-only step does no more arithmetic than a training-mode forward
  pass and the head's gradient (its frozen BatchNorms even skip the batch statistics),
  a full step about three forward passes'.
  (Counted in FLOPs, not convolutions: 1x1 convs run as dots, depthwise ones as
  multiply-adds, see tuning/models/layers.py.)"""
  model, state, step, _ = setup(arch, "head")
  batch = batches(1)[0]
  forward = lambda s, b: model.apply(train.model_variables(s), b["image"], train=True,
                                     mutable=["batch_stats"], rngs={"dropout": jax.random.key(0)})
  forward_flops = flops(forward, state, batch)
  assert flops(step, state, batch) < 1.05 * forward_flops
  _, deep_state, deep_step, _ = setup(arch, "all")
  assert flops(deep_step, deep_state, batch) > 2 * forward_flops


class TestJitMatchesEager(chex.TestCase):

  @chex.variants(with_jit=True, without_jit=True)
  def test_train_step(self):
    _, state, step, _ = setup("resnet18", "from:layer3")
    reference, _ = jax.jit(step)(state, batches(1)[0])
    got, metrics = self.variant(step)(state, batches(1)[0])
    # Equal up to float reassociation: XLA fuses the jitted step differently.
    chex.assert_trees_all_close(got, reference, atol=5e-5, rtol=5e-3)
    assert np.isfinite(metrics["loss"])
