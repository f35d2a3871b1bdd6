"""Per-parameter learning rates: which parameters train, and how fast.

Every parameter gets a learning-rate multiplier, or None for frozen. The
multipliers compose, in this order:

1. the depth scheme: blocks below the freeze boundary None, tuned blocks 1,
   the fresh head `head_lr_mult` (Tajbakhsh 2016: 10x);
2. layer-wise decay (LLRD, timm's `layer_decay`): block `b` of `H` blocks below
   the head gets `layer_decay ** (H - b)`, so the deepest tuned block learns
   fastest and the stem slowest;
3. `bias_lr_mult` on biases (Caffe's convention, 2x in Tajbakhsh 2016);
4. regex rules, big_vision style: `((regex, multiplier or None), ...)` over
   parameter names like `block4/unit0/expand/conv/kernel`. Every parameter must
   match exactly one rule (scenic's strict check); None freezes it.

`make_optimizer` then gives frozen parameters `set_to_zero` (no optimizer state,
no weight decay: they stay bit-identical) and every other multiplier its own SGD
branch, with decoupled weight decay on kernels only.
"""
from __future__ import annotations

import re
from typing import Any, Sequence

import jax
import optax

Multiplier = float | None
FROZEN = "frozen"


def param_name(path) -> str:
  """`block/layer/leaf` for a `jax.tree_util` key path."""
  return "/".join(str(getattr(k, "key", getattr(k, "name", k))) for k in path)


def match_rules(params: Any, rules: Sequence[tuple[str, Any]]) -> Any:
  """The value of the one rule each parameter name fully matches, as a tree like `params`.

  Raises:
    ValueError: listing every parameter no rule matches and every one that
      several rules match (with those rules), and any invalid regex.
  """
  compiled = []
  for pattern, value in rules:
    try:
      compiled.append((re.compile(pattern), pattern, value))
    except re.error as e:
      raise ValueError(f"schedule rule {pattern!r} is not a valid regex: {e}") from e
  unmatched, doubly, values = [], [], {}
  for path, _ in jax.tree_util.tree_leaves_with_path(params):
    name = param_name(path)
    hits = [(pattern, value) for regex, pattern, value in compiled if regex.fullmatch(name)]
    if not hits:
      unmatched.append(name)
    elif len(hits) > 1:
      doubly.append(f"{name} (by {', '.join(repr(p) for p, _ in hits)})")
    else:
      values[name] = hits[0][1]
  problems = ([f"no rule matches: {', '.join(unmatched)}"] if unmatched else []) + (
      [f"several rules match: {'; '.join(doubly)}"] if doubly else [])
  if problems:
    raise ValueError("every parameter must match exactly one schedule rule; "
                     + " and ".join(problems))
  return jax.tree_util.tree_map_with_path(lambda path, _: values[param_name(path)], params)


def multipliers(params: Any, block_names: Sequence[str], trainable_from: int, *,
                head_lr_mult: float = 1.0, layer_decay: float | None = None,
                bias_lr_mult: float = 1.0, rules: Sequence[tuple[str, Multiplier]] = ()) -> Any:
  """Each parameter's learning-rate multiplier (None: frozen); see the module docstring."""
  unknown = set(params) - set(block_names)
  if unknown:
    raise ValueError(f"parameters outside the model's blocks {list(block_names)}: {sorted(unknown)}")
  head = len(block_names) - 1

  def by_depth(path, _) -> Multiplier:
    index = list(block_names).index(param_name(path[:1]))
    if index < trainable_from:
      return None
    mult = head_lr_mult if index == head else (layer_decay ** (head - index) if layer_decay else 1.0)
    return mult * (bias_lr_mult if param_name(path).endswith("bias") else 1.0)

  mults = jax.tree_util.tree_map_with_path(by_depth, params)
  if rules:
    mults = jax.tree.map(lambda m, r: None if m is None or r is None else m * r,
                         mults, match_rules(params, rules), is_leaf=lambda x: x is None)
  return mults


def _labels(mults: Any) -> Any:
  return jax.tree.map(lambda m: FROZEN if m is None else repr(float(m)), mults,
                      is_leaf=lambda x: x is None)


def l2sp(anchor: Any, strength: float) -> optax.GradientTransformation:
  """Adds the gradient of `strength / 2 * ||params - anchor||^2` (L2-SP, Li et al. 2018).

  Regularises fine-tuned weights toward their pretrained values (`anchor`)
  instead of toward zero. Leaves absent from `anchor` (None: the fresh head,
  which has no pretrained value) are left alone. The anchor is a constant,
  not optimizer state, so checkpoints do not grow.
  """
  def update(updates, state, params):
    if params is None:
      raise ValueError("l2sp needs params: call tx.update(grads, state, params)")
    # Inside optax.partition, the other branches' leaves arrive as MaskedNode.
    pulled = jax.tree.map(
        lambda u, p, a: u if a is None or isinstance(u, optax.MaskedNode) else u + strength * (p - a),
        updates, params, anchor, is_leaf=lambda x: x is None or isinstance(x, optax.MaskedNode))
    return pulled, state
  return optax.GradientTransformation(lambda params: optax.EmptyState(), update)


def make_optimizer(mults: Any, *, learning_rate: float, momentum: float, steps_per_epoch: int,
                   decay_per_epoch: float, weight_decay: float = 0.0, l2sp_anchor: Any = None,
                   l2sp_strength: float = 0.0) -> optax.GradientTransformation:
  """SGD with momentum at `learning_rate` x each parameter's multiplier, decayed per epoch.

  The rate decays by `decay_per_epoch` once per epoch (Tajbakhsh et al. 2016,
  Eq. 2). Weight decay is decoupled (added after the momentum, scaled by the
  rate, as in SGDW/AdamW) and applies to kernels only; frozen parameters go
  through `set_to_zero` alone, so they hold no state and never decay. With
  `l2sp_strength`, trainable parameters are pulled toward `l2sp_anchor` (the
  pretrained values; None leaves for parameters without one).
  """
  labels = _labels(mults)
  branches = {FROZEN: optax.set_to_zero()}
  for mult in {m for m in jax.tree.leaves(mults) if m is not None}:
    schedule = optax.exponential_decay(learning_rate * mult, steps_per_epoch, decay_per_epoch,
                                       staircase=True)
    parts = [optax.trace(decay=momentum)]
    if l2sp_strength:
      parts.insert(0, l2sp(l2sp_anchor, l2sp_strength))
    if weight_decay:
      parts.append(optax.add_decayed_weights(weight_decay, mask=_kernels))
    parts.append(optax.scale_by_learning_rate(schedule))
    branches[repr(float(mult))] = optax.chain(*parts)
  return optax.partition(branches, labels)


def _kernels(params: Any) -> Any:
  return jax.tree_util.tree_map_with_path(lambda path, _: param_name(path).endswith("kernel"), params)


def count_trainable(params: Any, mults: Any) -> int:
  sizes = jax.tree.map(lambda p, m: 0 if m is None else p.size, params, mults,
                       is_leaf=lambda x: x is None)
  return int(sum(jax.tree.leaves(sizes)))
