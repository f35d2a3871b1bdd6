"""Frozen-trunk feature caching changes the cost of a run, never its result."""
from __future__ import annotations

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from tuning import config as config_lib
from tuning import depth, feature_cache, input_pipeline, models, train
from tuning.datasets import medmnist
from tuning.preprocess import MINUS_ONE_TO_ONE

# One architecture per model class: the registered variants of a class (widths,
# depths, units) share its `__call__`, which is what passes `start`/`stop` on.
_ONE_PER_CLASS = {type(models.create(arch, 1)): arch for arch in reversed(models.ARCHITECTURES)}
# The smallest input every architecture takes (InceptionV3's 75 px).
SIZE = 75
# Compiled without optimisation: a fraction of the compile time, the same arithmetic.
_QUICK_COMPILE = {"xla_backend_optimization_level": 0, "xla_llvm_disable_expensive_passes": True}


def _random_variables(model, x):
  """Variables of the model's shapes whose logits are of order 1, without compiling its init.

  He-scaled kernels and BatchNorm statistics away from the identity keep every
  block's output informative; the models' own inits leave some logits near 1e-16,
  which any tolerance would pass.
  """
  rng = np.random.default_rng(0)
  def draw(path, leaf):
    if len(leaf.shape) >= 2:
      return rng.normal(0, np.sqrt(2 / np.prod(leaf.shape[:-1])), leaf.shape).astype(np.float32)
    if jax.tree_util.keystr(path[-1:]) in ("['var']", "['scale']"):
      return rng.uniform(0.5, 1.5, leaf.shape).astype(np.float32)
    return rng.normal(0, 0.1, leaf.shape).astype(np.float32)
  shapes = jax.eval_shape(model.init, jax.random.key(0), x)
  return jax.tree_util.tree_map_with_path(draw, shapes)


@pytest.mark.parametrize("arch", sorted(_ONE_PER_CLASS.values()))
def test_blocks_below_then_from_a_boundary_equal_the_whole_forward(arch):
  model = models.create(arch, 3)
  # Fewer units and narrower fully-connected layers, where the class has them: the same code.
  model = model.clone(**{k: v for k, v in {"units": (1, 1, 1, 1), "fc_width": 16}.items()
                         if hasattr(model, k)})
  x = jax.random.normal(jax.random.key(1), (2, SIZE, SIZE, 3))
  variables = _random_variables(model, x)
  k = len(type(model).block_names) // 2

  def forward(variables, x):
    trunk = model.apply(variables, x, stop=k)
    return model.apply(variables, x), trunk, model.apply(variables, trunk, start=k)
  full, trunk, split = jax.jit(forward).lower(variables, x).compile(_QUICK_COMPILE)(variables, x)
  chex.assert_tree_all_finite(full)
  assert float(jnp.abs(full).mean()) > 0.1, "logits too small to compare"
  chex.assert_rank(trunk, 4)  # a feature map: `stop` stopped below the head
  chex.assert_trees_all_close(split, full, atol=1e-5, rtol=1e-5)


def _indexed_split(n: int, size: int = 4) -> medmnist.Split:
  """Every pixel of image i is i and its label is i, to follow each image through."""
  ids = np.arange(n)
  images = np.broadcast_to(ids[:, None, None, None], (n, size, size, 3)).astype(np.uint8)
  return medmnist.Split(images=images, labels=ids.astype(np.int32))


def test_feature_batches_are_the_image_batches_in_the_same_order():
  """Same seed and start epoch: the same examples at every step, so a cached run
  trains, and resumes, exactly as the image run would."""
  split = _indexed_split(37)
  features = MINUS_ONE_TO_ONE(split.images)  # the identity trunk
  kw = dict(batch_size=8, seed=5, num_epochs=3, start_epoch=1)
  images = list(input_pipeline.train_batches(split, image_size=4, preprocess=MINUS_ONE_TO_ONE, **kw))
  cached = list(input_pipeline.feature_train_batches(features, split.labels, **kw))
  assert len(cached) == len(images) == 2 * input_pipeline.steps_per_epoch(37, 8)
  chex.assert_trees_all_equal(cached, images)
  images = list(input_pipeline.eval_batches(split, batch_size=8, image_size=4,
                                            preprocess=MINUS_ONE_TO_ONE))
  cached = list(input_pipeline.feature_eval_batches(features, split.labels, batch_size=8))
  chex.assert_trees_all_equal(cached, images)


@pytest.mark.parametrize("max_in_memory_bytes, kind", [(2**20, np.ndarray), (0, np.memmap)])
def test_build_holds_the_trunk_output_of_every_image_in_order(tmp_path, max_in_memory_bytes, kind):
  splits = {"train": _indexed_split(21), "val": _indexed_split(5, size=6)}
  trunk = jax.jit(lambda x: jnp.stack([x.mean((1, 2)), x.max((1, 2))], axis=1))
  features = feature_cache.build(
      trunk, splits, batch_size=4, image_size=6, preprocess=MINUS_ONE_TO_ONE,
      sharding=jax.sharding.SingleDeviceSharding(jax.devices()[0]),
      directory=str(tmp_path / "cache"), max_in_memory_bytes=max_in_memory_bytes)
  for name, split in splits.items():
    assert type(features[name]) is kind
    want = trunk(MINUS_ONE_TO_ONE(input_pipeline.resize(split.images, 6)))
    np.testing.assert_array_equal(features[name], want)
  assert not [p for p in tmp_path.rglob("*") if p.is_file()], "the memmaps must be anonymous files"


@pytest.mark.parametrize("scheme, cache, applies", [
    ("head", True, True), ("from:block6", True, True), ("from:stem", True, False),
    ("all", True, False), ("scratch", True, False), ("head", False, False)])
def test_cache_applies_only_below_a_freeze_boundary(scheme, cache, applies):
  config = config_lib.defaults()
  config.cache_features = cache
  blocks = type(models.create("mobilenet_v2", 1)).block_names
  assert feature_cache.applies(config, depth.parse_scheme(scheme, blocks)) is applies


@pytest.fixture(scope="module")
def rows(tmp_path_factory, shared_data_dir):
  """One tiny real run (real weights, real X-rays), with and without the cache."""
  results = {}
  for cache in (True, False):
    config = config_lib.defaults()
    config.update(data_dir=str(shared_data_dir), weights_dir=str(shared_data_dir.parent / "weights"),
                  scheme="head", image_size=32, train_fraction=0.05, epochs=2, batch_size=16,
                  progress=False, cache_features=cache)
    results[cache] = train.train_and_evaluate(config, str(tmp_path_factory.mktemp(f"cache{cache}")))
  return results


def test_the_cached_run_gives_the_uncached_result(rows):
  cached, uncached = rows[True], rows[False]
  assert cached["feature_cache"] and cached["feature_cache_s"] > 0
  assert not uncached["feature_cache"] and uncached["feature_cache_s"] is None
  for key in ("val_auc", "test_auc", "test_acc"):
    assert cached[key] == pytest.approx(uncached[key], abs=1e-6), key
  assert [h["epoch"] for h in cached["history"]] == [h["epoch"] for h in uncached["history"]]
  for got, want in zip(cached["history"], uncached["history"]):
    assert got["train_loss"] == pytest.approx(want["train_loss"], rel=1e-5)
    assert got["val_auc"] == pytest.approx(want["val_auc"], abs=1e-6)
  assert cached["best_epoch"] == uncached["best_epoch"]
  assert cached["n_trainable_params"] == uncached["n_trainable_params"]
