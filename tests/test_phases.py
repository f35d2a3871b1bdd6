"""Phased runs: plans as data, the `auto` stopping rule, and resuming across a phase boundary."""
import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from tuning import config as config_lib
from tuning import depth, models, phases, schedule, stats, train

BLOCKS = type(models.create("mobilenet_v2", 1)).block_names  # stem .. conv_last, head
HEAD = len(BLOCKS) - 1


def config(**overrides):
  c = config_lib.defaults()
  c.update(overrides)
  return c


def test_ordinary_schemes_are_one_phase_of_all_epochs():
  (phase,) = phases.plan(config(epochs=7), "from:block6", BLOCKS)
  assert phase.epochs == 7 and phase.trainable_from == BLOCKS.index("block6")
  assert phase.lr_mult == 1.0 and phase.layer_decay is None


def test_lpft_probes_the_head_then_tunes_every_block():
  plan = phases.plan(config(epochs=5, lpft_probe_epochs=2), "lpft", BLOCKS)
  assert [(p.epochs, p.trainable_from) for p in plan] == [(2, HEAD), (3, 0)]
  with pytest.raises(ValueError, match="lpft_probe_epochs = 5"):
    phases.plan(config(epochs=5, lpft_probe_epochs=5), "lpft", BLOCKS)


def test_gradual_unfreezes_top_down_with_rates_from_lr_over_spread_to_the_head():
  plan = phases.plan(config(epochs=6, gradual_step=4, gradual_epochs=1, gradual_spread=100.0),
                     "gradual", BLOCKS)
  assert [(p.epochs, p.trainable_from) for p in plan] == [(1, HEAD), (1, 5), (1, 1), (3, 0)]
  assert plan[0].layer_decay is None
  for phase in plan[1:]:  # the lowest trained block at lr / 100 (LLRD's decay ** depth)
    chex.assert_trees_all_close(phase.layer_decay ** (HEAD - phase.trainable_from), 0.01)
  with pytest.raises(ValueError, match="need config.epochs >= 4, got 3"):
    phases.plan(config(epochs=3, gradual_step=4), "gradual", BLOCKS)


def test_gradual_shapes_each_unfreezing_phase_by_its_curve_and_the_optimizer_follows_it():
  plan = phases.plan(config(epochs=6, gradual_step=4, gradual_warmup_epochs=0.5,
                            gradual_decay="cosine"), "gradual", BLOCKS)
  assert plan[0].curve == schedule.Curve()  # the head alone: the run's default
  assert [p.curve for p in plan[1:]] == [schedule.Curve(0.5, "cosine")] * 3
  # The phase's optimizer warms up: over 2 steps of an epoch of 4, the first at rate 0.
  params = {b: {"conv": {"kernel": jnp.ones(2)}} for b in BLOCKS}
  _, tx = train.make_optimizer(config(momentum=0.0), plan[1].scheme, params, BLOCKS,
                               steps_per_epoch=4, layer_decay=plan[1].layer_decay,
                               epochs=plan[1].epochs, curve=plan[1].curve)
  grads, state, head = jax.tree.map(jnp.ones_like, params), tx.init(params), []
  for _ in range(3):
    updates, state = tx.update(grads, state, params)
    head.append(-float(updates["head"]["conv"]["kernel"][0]))
  peak = config().lr * config().head_lr_mult
  np.testing.assert_allclose(head, [0.0, peak / 2, peak], rtol=1e-6)
  with pytest.raises(ValueError, match=r"phase 1 runs 1 epoch\(s\), but its schedule warms up "
                                       r"for 1; a warmup must end within its phase"):
    phases.plan(config(epochs=6, gradual_step=4, gradual_warmup_epochs=1.0), "gradual", BLOCKS)


def test_explicit_phases_take_schemes_or_block_indices_and_must_only_unfreeze():
  plan = phases.plan(config(epochs=6, phases=((2, "head", 1.0), (1, 7, 0.5), (3, "llrd", 0.1))),
                     "all", BLOCKS)
  assert [(p.epochs, p.trainable_from, p.lr_mult, p.scheme.name) for p in plan] == [
      (2, HEAD, 1.0, "head"), (1, 7, 0.5, "all"), (3, 0, 0.1, "llrd")]
  assert [phases.phase_of(plan, e) for e in range(7)] == [0, 0, 0, 1, 2, 2, 2]
  assert [phases.first_epoch(plan, i) for i in range(3)] == [1, 3, 4]
  with pytest.raises(ValueError, match="phases 0 -> 1 refreeze"):
    phases.plan(config(epochs=2, phases=((1, "all", 1.0), (1, "head", 1.0))), "all", BLOCKS)
  with pytest.raises(ValueError, match="run 3 epochs but config.epochs = 4"):
    phases.plan(config(epochs=4, phases=((1, "head", 1.0), (2, "all", 1.0))), "all", BLOCKS)
  bad = config(scheme="all", epochs=2, phases=((1, "auto", 1.0), (1, "all", 1.0)))
  with pytest.raises(ValueError, match="'auto' is itself a plan"):
    config_lib.validate(bad)
  with pytest.raises(ValueError, match="would replace scheme lpft's own plan"):
    phases.plan(config(epochs=2, phases=((2, "all", 1.0),)), "lpft", BLOCKS)


def test_new_schemes_are_valid_scheme_names():
  for name in ("lpft", "gradual", "auto", "auto_halving"):
    assert name in depth.valid_schemes(BLOCKS)
    assert depth.parse_scheme(name, BLOCKS).pretrained


def test_auto_goes_deeper_only_on_a_gain_above_min_gain_and_significant_if_asked():
  rng = np.random.default_rng(0)
  labels = rng.integers(0, 2, 400)
  noisy = lambda scale: labels + rng.normal(scale=scale, size=labels.shape)
  head, deeper = noisy(2.0), noisy(0.5)  # deeper separates the classes far better
  # Slightly better by chance: AUC 0.6770 against 0.6694, DeLong p = 0.25.
  slightly = head + np.random.default_rng(1).normal(scale=0.5, size=labels.shape)
  bests = lambda *scores: [{"val_auc": stats.delong(labels == 1, s, s).a, "epoch": i + 1,
                            "val_scores": s} for i, s in enumerate(scores)]
  assert phases.auto_choice(config(), bests(head, deeper), labels) == (1, True)
  assert phases.auto_choice(config(auto_min_gain=0.5), bests(head, deeper), labels) == (0, False)
  assert phases.auto_choice(config(), bests(head, deeper, head), labels) == (1, False)
  # A chance gain passes the plain rule but not DeLong's test at 5 %.
  assert phases.auto_choice(config(), bests(head, slightly), labels) == (1, True)
  assert phases.auto_choice(config(auto_alpha=0.05), bests(head, slightly), labels) == (0, False)
  assert phases.auto_choice(config(auto_alpha=0.05), bests(head, deeper), labels) == (1, True)


def comparable(row):
  return {k: v for k, v in row.items()
          if k not in ("wall_s", "resumed_at_epoch", "feature_cache_s")}


def test_a_run_interrupted_at_a_phase_boundary_resumes_bit_identically(
    tmp_path, shared_data_dir, monkeypatch):
  """Epoch 1 trains the head, epoch 2 fire9 and the head at half the rate: stopped
  after epoch 1, the rerun rebuilds epoch 2's optimizer and ends where an unbroken run does.
  (SqueezeNet with its real weights: the smallest pretrained model, so the fastest.)"""
  monkeypatch.setenv("TUNING_DATA_DIR", str(shared_data_dir))
  monkeypatch.setenv("TUNING_WEIGHTS_DIR", str(shared_data_dir.parent / "weights"))
  run = config(arch="squeezenet1_1", weights="squeezenet_weights.pkl",
               weights_format="numpy_pickle", scheme="head", schemes=("head",), image_size=32,
               train_fraction=0.05, batch_size=16, epochs=2, progress=False,
               phases=((1, "head", 1.0), (1, "from:fire9", 0.5)))
  reference = train.train_and_evaluate(run, str(tmp_path / "whole"))

  predict, calls = train.predict, []
  def interrupted(*args):
    calls.append(1)
    if len(calls) == 2:  # epoch 2's validation: epoch 1 is checkpointed, epoch 2 is not
      raise KeyboardInterrupt
    return predict(*args)
  monkeypatch.setattr(train, "predict", interrupted)
  with pytest.raises(KeyboardInterrupt):
    train.train_and_evaluate(run, str(tmp_path / "broken"))
  monkeypatch.setattr(train, "predict", predict)
  resumed = train.train_and_evaluate(run, str(tmp_path / "broken"))

  assert resumed["resumed_at_epoch"] == 1
  assert [h["phase"] for h in resumed["history"]] == [0, 1]
  assert [p["trainable_from"] for p in resumed["phases"]] == ["head", "fire9"]
  assert [p["lr_mult"] for p in resumed["phases"]] == [1.0, 0.5]
  assert resumed["n_trainable_params"] > 512 * 2 + 2  # the last phase's, not the head's
  assert comparable(resumed) == comparable(reference)
