"""Per-parameter learning rates: which parameters train, how fast, and on which schedule.

Every parameter gets a learning-rate multiplier, or None for frozen. The
multipliers compose, in this order:

1. the depth scheme: blocks below the freeze boundary None, tuned blocks 1,
   the fresh head `head_lr_mult` (Tajbakhsh 2016: 10x);
2. layer-wise decay (LLRD, timm's `layer_decay`): block `b` of `H` blocks below
   the head gets `layer_decay ** (H - b)`, so the deepest tuned block learns
   fastest and the stem slowest;
3. `bias_lr_mult` on biases (Caffe's convention, 2x in Tajbakhsh 2016);
4. regex rules, big_vision style: `((regex, value), ...)` over parameter names
   like `block4/unit0/expand/conv/kernel`. Every parameter must match exactly
   one rule (scenic's strict check). A value is None (frozen), a multiplier, or
   a dict that may also set the rate's course (`Curve`) over a phase:
   `{"mult": 0.1, "warmup_epochs": 1, "decay": "cosine", "end": 0.0}`; keys it
   leaves out keep the phase's curve (by default no warmup, exponential decay).

`make_optimizer` then gives frozen parameters `set_to_zero` (no optimizer state,
no weight decay: they stay bit-identical) and every other (multiplier, curve)
its own SGD branch, with decoupled weight decay on kernels only.
"""
from __future__ import annotations

import dataclasses
import re
from typing import Any, Sequence

import jax
import ml_collections
import optax

Multiplier = float | None
FROZEN = "frozen"
DECAYS = ("exponential", "cosine", "constant")
SPEC_KEYS = ("mult", "warmup_epochs", "decay", "end")


@dataclasses.dataclass(frozen=True)
class Curve:
  """A rate's course over one phase, relative to its peak: a linear warmup from 0, then a decay.

  The decay starts at the peak when the warmup ends: `exponential` multiplies the
  rate by the run's `decay_per_epoch` once per epoch (Tajbakhsh 2016, Eq. 2);
  `cosine` anneals it to `end` x the peak at the phase's end (fastai's one-cycle,
  big_vision's `decay_type="cosine"`); `constant` holds it.
  """
  warmup_epochs: float = 0.0
  decay: str = "exponential"
  end: float = 0.0  # cosine only


@dataclasses.dataclass(frozen=True)
class Rule:
  """A `config.schedule` entry, checked: its multiplier (None: frozen), the `Curve` keys it sets."""
  pattern: str
  mult: Multiplier
  curve: dict


def _number(value) -> bool:
  return isinstance(value, (int, float)) and not isinstance(value, bool)


_SPEC_CHECKS = {
    "mult": (lambda v: _number(v) and v > 0, "a number > 0 (None freezes)"),
    "warmup_epochs": (lambda v: _number(v) and v >= 0, "a number of epochs >= 0"),
    "decay": (lambda v: v in DECAYS, f"one of {', '.join(DECAYS)}"),
    "end": (lambda v: _number(v) and 0 <= v <= 1, "a fraction of the peak rate in [0, 1]"),
}


def parse_rules(rules: Sequence[Any]) -> list[Rule]:
  """`config.schedule` checked without the model.

  Raises:
    ValueError: naming every bad rule, the key or value at fault and what is allowed.
  """
  parsed, problems = [], []
  for rule in rules:
    if not (isinstance(rule, (tuple, list)) and len(rule) == 2 and isinstance(rule[0], str)):
      problems.append(f"rule {rule!r}: expected a (regex, None | multiplier | dict) pair")
      continue
    pattern, value = rule
    try:
      re.compile(pattern)
    except re.error as e:
      problems.append(f"rule {pattern!r} is not a valid regex: {e}")
    if value is None:
      spec = {}
    elif _number(value):
      spec = {"mult": value}
    elif isinstance(value, (dict, ml_collections.ConfigDict)):
      spec = dict(value.items())
    else:
      problems.append(f"rule {pattern!r}: {value!r}; expected None (frozen), a multiplier > 0 "
                      f"or a dict with keys {', '.join(SPEC_KEYS)}")
      continue
    bad = [f"rule {pattern!r}: unknown key {k!r}; allowed: {', '.join(SPEC_KEYS)}"
           for k in spec if k not in _SPEC_CHECKS]
    bad += [f"rule {pattern!r}: {k} = {v!r}; expected {_SPEC_CHECKS[k][1]}"
            for k, v in spec.items() if k in _SPEC_CHECKS and not _SPEC_CHECKS[k][0](v)]
    if "end" in spec and spec.get("decay") != "cosine":
      bad.append(f"rule {pattern!r}: end = {spec['end']!r} needs decay 'cosine' in the same rule")
    problems += bad
    if not bad:
      mult = None if value is None else float(spec.pop("mult", 1.0))
      parsed.append(Rule(pattern, mult, spec))
  if problems:
    raise ValueError("schedule " + "; ".join(problems))
  return parsed


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
                bias_lr_mult: float = 1.0, rules: Sequence[tuple[str, Any]] = ()) -> Any:
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
    by_rule = match_rules(params, [(r.pattern, r.mult) for r in parse_rules(rules)])
    mults = jax.tree.map(lambda m, r: None if m is None or r is None else m * r,
                         mults, by_rule, is_leaf=lambda x: x is None)
  return mults


def curves(params: Any, rules: Sequence[tuple[str, Any]] = (), base: Curve = Curve()) -> Any:
  """Each parameter's `Curve`: `base` (the phase's) with the keys its rule sets."""
  if not rules:
    return jax.tree.map(lambda _: base, params)
  return match_rules(params, [(r.pattern, dataclasses.replace(base, **r.curve))
                              for r in parse_rules(rules)])


def _label(mult: Multiplier, curve: Curve) -> str:
  if mult is None:
    return FROZEN
  # The default curve keeps the plain multiplier, the label checkpoints written before curves hold.
  if curve == Curve():
    return repr(float(mult))
  return f"{float(mult)!r}-{curve.decay}-warmup{curve.warmup_epochs:g}-end{curve.end:g}"


def rate(peak: float, curve: Curve, *, steps_per_epoch: int, decay_per_epoch: float,
         epochs: int | None = None) -> optax.Schedule:
  """The step -> learning rate of `curve` at `peak` over a phase of `epochs` (cosine needs them).

  A warmup of w epochs lasts max(1, round(w x steps_per_epoch)) steps (big_vision's
  rounding); its rate at step s is peak x s / warmup, so the first step's is 0.
  """
  warmup = max(1, round(curve.warmup_epochs * steps_per_epoch)) if curve.warmup_epochs else 0
  if curve.decay == "exponential":
    decayed = optax.exponential_decay(peak, steps_per_epoch, decay_per_epoch, staircase=True)
  elif curve.decay == "cosine":
    if epochs is None or epochs * steps_per_epoch <= warmup:
      raise ValueError(f"a cosine schedule needs the phase's epochs, longer than its warmup of "
                       f"{curve.warmup_epochs:g} epoch(s); got epochs = {epochs}")
    decayed = optax.cosine_decay_schedule(peak, epochs * steps_per_epoch - warmup, alpha=curve.end)
  else:
    decayed = optax.constant_schedule(peak)
  if not warmup:
    return decayed
  return optax.join_schedules([optax.linear_schedule(0.0, peak, warmup), decayed], [warmup])


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
                   decay_per_epoch: float, curves: Any = None, epochs: int | None = None,
                   weight_decay: float = 0.0, l2sp_anchor: Any = None,
                   l2sp_strength: float = 0.0) -> optax.GradientTransformation:
  """SGD with momentum at `learning_rate` x each parameter's multiplier, on its curve.

  `curves` (a tree like `mults`; None: the default `Curve` everywhere, the rate
  decaying by `decay_per_epoch` once per epoch, Tajbakhsh et al. 2016, Eq. 2)
  shape each rate over the phase of `epochs`. Weight decay is decoupled (added
  after the momentum, scaled by the rate, as in SGDW/AdamW) and applies to
  kernels only; frozen parameters go through `set_to_zero` alone, so they hold
  no state and never decay. With `l2sp_strength`, trainable parameters are
  pulled toward `l2sp_anchor` (the pretrained values; None leaves for
  parameters without one).
  """
  if curves is None:
    curves = jax.tree.map(lambda _: Curve(), mults, is_leaf=lambda x: x is None)
  labels = jax.tree.map(_label, mults, curves, is_leaf=lambda x: x is None)
  branches = {FROZEN: optax.set_to_zero()}
  groups = zip(jax.tree.leaves(labels), jax.tree.leaves(mults, is_leaf=lambda x: x is None),
               jax.tree.leaves(curves))
  for label, (mult, curve) in {l: (m, c) for l, m, c in groups if m is not None}.items():
    schedule = rate(learning_rate * mult, curve, steps_per_epoch=steps_per_epoch,
                    decay_per_epoch=decay_per_epoch, epochs=epochs)
    parts = [optax.trace(decay=momentum)]
    if l2sp_strength:
      parts.insert(0, l2sp(l2sp_anchor, l2sp_strength))
    if weight_decay:
      parts.append(optax.add_decayed_weights(weight_decay, mask=_kernels))
    parts.append(optax.scale_by_learning_rate(schedule))
    branches[label] = optax.chain(*parts)
  return optax.partition(branches, labels)


def _kernels(params: Any) -> Any:
  return jax.tree_util.tree_map_with_path(lambda path, _: param_name(path).endswith("kernel"), params)


def count_trainable(params: Any, mults: Any) -> int:
  sizes = jax.tree.map(lambda p, m: 0 if m is None else p.size, params, mults,
                       is_leaf=lambda x: x is None)
  return int(sum(jax.tree.leaves(sizes)))
