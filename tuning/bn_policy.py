"""BatchNorm policies: what fine-tuning does with the BatchNorm layers of the blocks it trains.

Frozen blocks' BatchNorm is always fully frozen: it normalises with its running
averages and keeps them (`tuning.models.layers.run_blocks`). For the trainable
blocks, `config.bn_policy` chooses (REFERENCE.md section 4.3):

- `train_all`: batch statistics in training, running averages updated, scale
  and bias trained; PyTorch's `model.train()`.
- `frozen_stats`: the pretrained running averages normalise in training too and
  stay as they are, while scale and bias train. Small or skewed target batches
  then cannot move the statistics, and training normalises as evaluation does.
  Dropout and stochastic depth still act: the train step only withholds
  `batch_stats` from what the model may update (`layers.BatchNorm`).
- `train_stats_frozen_affine`: batch statistics as `train_all`, scale and bias
  frozen through their learning-rate multipliers (`freeze_affine`), so they get
  no updates and no optimizer state.
- `reestimate`: the running averages are recomputed on the target training data
  (`reestimate`), then training goes on as `frozen_stats`, so that it normalises
  with exactly the statistics evaluation uses, not with each small batch's. They
  are recomputed before training for every block, the frozen ones too (AdaBN,
  Li et al. 2016: a frozen trunk adapts to the target domain at no parameter
  cost), and before each evaluation for the trainable blocks, whose weights
  moved; the frozen ones' inputs and weights did not.
"""
from __future__ import annotations

from typing import Any, Callable, Iterable

import jax
import jax.numpy as jnp
import numpy as np

from tuning import schedule
from tuning.models.layers import BN_MOMENTUM

TRAIN_ALL = "train_all"
FROZEN_STATS = "frozen_stats"
TRAIN_STATS_FROZEN_AFFINE = "train_stats_frozen_affine"
REESTIMATE = "reestimate"
POLICIES = (TRAIN_ALL, FROZEN_STATS, TRAIN_STATS_FROZEN_AFFINE, REESTIMATE)

# BatchNorm parameters: every BatchNorm is a `bn` module (`layers.batch_norm`).
_AFFINE = r"(.*/)?bn/[^/]+"


def updates_stats(policy: str) -> bool:
  """Whether trainable blocks normalise with batch statistics and update their running averages."""
  return policy in (TRAIN_ALL, TRAIN_STATS_FROZEN_AFFINE)


def freeze_affine(params: Any, mults: Any) -> Any:
  """`mults` with every BatchNorm scale and bias frozen (None), for `train_stats_frozen_affine`."""
  affine = schedule.match_rules(params, ((_AFFINE, None), (f"(?!{_AFFINE}$).*", 1.0)))
  return jax.tree.map(lambda m, a: None if a is None else m, mults, affine,
                      is_leaf=lambda x: x is None)


def make_moments(model, *, trainable_from: int = 0, start: int = 0
                 ) -> Callable[[dict, jax.Array, jax.Array], dict]:
  """A jittable `(variables, inputs, rng) -> batch moments` of blocks `trainable_from` on.

  `inputs` enter block `start` (images, or cached features). Blocks from
  `trainable_from` run in training mode, those below it frozen, as in a train
  step, and the result holds, for each BatchNorm of the trainable blocks, the
  mean and biased variance of its input over the batch's pixels: Flax's update
  from zeroed running averages, `momentum * 0 + (1 - momentum) * moment`,
  divided back by `1 - momentum`. Dropout acts, with `rng`, as in training
  (as `torch.optim.swa_utils.update_bn` runs the model in training mode).
  """
  block_names = type(model).block_names

  def moments(variables: dict, inputs: jax.Array, rng: jax.Array) -> dict:
    trainable = [b for b in variables["batch_stats"] if block_names.index(b) >= trainable_from]
    zeroed = {**variables["batch_stats"],
              **{b: jax.tree.map(jnp.zeros_like, variables["batch_stats"][b]) for b in trainable}}
    _, updates = model.apply({**variables, "batch_stats": zeroed}, inputs, train=True,
                             trainable_from=trainable_from, start=start,
                             mutable=["batch_stats"], rngs={"dropout": rng})
    return {b: jax.tree.map(lambda s: s / (1 - BN_MOMENTUM), updates["batch_stats"][b])
            for b in trainable}
  return moments


def _is_moments(node: Any) -> bool:
  """A BatchNorm's entry: `{"mean", "var"}` (or `"m2"`, summed squared deviations)."""
  return isinstance(node, dict) and "mean" in node


def reestimate(moments: Callable[[dict, jax.Array, jax.Array], dict], variables: dict,
               batches: Iterable[jax.Array], rng: jax.Array) -> dict:
  """`variables["batch_stats"]` with `moments`' BatchNorms set to their statistics over `batches`.

  One pass, no parameter updates: each BatchNorm gets the exact mean and
  (biased) variance of its input over every pixel of every batch, the batches'
  moments combined in float64 by Chan et al.'s pairwise update (batches may
  differ in size), not Flax's momentum average, which would weight the last
  batches most. Batches must hold real examples only (no padding rows).
  """
  def combine(total, batch, count, n):
    delta = batch["mean"] - total["mean"]
    return {"mean": total["mean"] + delta * n / (count + n),
            "m2": total["m2"] + batch["var"] * n + delta ** 2 * count * n / (count + n)}

  count, total = 0, None
  for i, inputs in enumerate(batches):
    n = len(inputs)
    batch = jax.tree.map(lambda x: np.asarray(x, np.float64),
                         moments(variables, inputs, jax.random.fold_in(rng, i)))
    if total is None:
      total = jax.tree.map(lambda b: {"mean": 0 * b["mean"], "m2": 0 * b["var"]}, batch,
                           is_leaf=_is_moments)
    total = jax.tree.map(lambda t, b: combine(t, b, count, n), total, batch, is_leaf=_is_moments)
    count += n
  if total is None:
    raise ValueError("reestimate needs at least one batch")
  stats = jax.tree.map(lambda t: {"mean": t["mean"].astype(np.float32),
                                  "var": (t["m2"] / count).astype(np.float32)},
                       total, is_leaf=_is_moments)
  return {**variables["batch_stats"], **stats}


def restart_unfrozen(moments: Callable[[dict, jax.Array, jax.Array], dict], variables: dict,
                     batches: Iterable[jax.Array], rng: jax.Array, block_names: tuple[str, ...],
                     *, boundary: int, previous: int) -> dict:
  """`batch_stats` with the blocks a phase unfreezes, `boundary` up to `previous`, re-estimated.

  Under `train_all` or `train_stats_frozen_affine`, a block unfrozen late (gradual
  unfreezing, LP-FT, `auto`) still holds the source data's running averages, and
  the few epochs left at momentum 0.1 only dilute them: after 30 steps 4 % remain,
  which still dominates channels whose target variance is far smaller (the stem on
  grayscale X-rays: ImageNet's variances are up to 1,585x the X-rays'), so that
  evaluation normalises unlike training. Starting them from the target's
  statistics (`reestimate`) removes that; the blocks above keep what they learnt.
  `moments` must cover blocks from `boundary` (`make_moments(trainable_from=boundary)`).
  """
  stats = reestimate(moments, variables, batches, rng)
  return {**variables["batch_stats"],
          **{b: stats[b] for b in block_names[boundary:previous] if b in stats}}
