"""Depth schemes: which of a model's named blocks train and which stay frozen.

A scheme string names the freeze boundary (Tajbakhsh et al. 2016 tune "from the
last layer backwards"; Kandel & Castelli 2020 tune the top blocks):

- `scratch`: random initialisation, every block trains;
- `all`: pretrained, every block trains (deep tuning);
- `head`: pretrained, only the fresh classifier head trains;
- `from:<block>`: pretrained, that block and every block above it train.

Tajbakhsh's own names are accepted too: `FT:only fc8` is `head` and
`FT:fc6-fc8` is `from:fc6` (the range must end at the last block).

Frozen blocks get the optimizer's `set_to_zero` branch, so they hold no
optimizer state, and the model cuts gradients at the boundary (`run_blocks`).
"""
from __future__ import annotations

import dataclasses
from typing import Any, Sequence

import jax
import optax

FROZEN, TUNED, HEAD = "frozen", "tuned", "head"


@dataclasses.dataclass(frozen=True)
class Scheme:
  name: str
  trainable_from: int  # index of the first trainable block
  pretrained: bool


# Deep tuning with a strategy (see tuning/schedule.py): `llrd` decays the rate layer by
# layer from the head down (config.layer_decay); `l2sp` pulls the weights toward the
# pretrained ones (config.l2sp_strength) rather than toward zero.
STRATEGIES = ("llrd", "l2sp")


def valid_schemes(block_names: Sequence[str]) -> list[str]:
  return ["scratch", "all", *STRATEGIES, "head", *(f"from:{b}" for b in block_names),
          f"FT:only {block_names[-1]}", *(f"FT:{b}-{block_names[-1]}" for b in block_names[:-1])]


def parse_scheme(scheme: str, block_names: Sequence[str]) -> Scheme:
  """Resolves a scheme string against a model's ordered blocks."""
  last = block_names[-1]
  if scheme in ("scratch", "all", *STRATEGIES):
    return Scheme(scheme, 0, pretrained=scheme != "scratch")
  if scheme in ("head", f"FT:only {last}"):
    return Scheme(scheme, len(block_names) - 1, pretrained=True)
  first = scheme.removeprefix("from:") if scheme.startswith("from:") else None
  if scheme.startswith("FT:") and scheme.endswith(f"-{last}"):
    first = scheme[3:-len(last) - 1]
  if first in block_names:
    return Scheme(scheme, list(block_names).index(first), pretrained=True)
  raise ValueError(
      f"unknown scheme {scheme!r}; expected one of {', '.join(valid_schemes(block_names))}")


def param_labels(params: Any, block_names: Sequence[str], trainable_from: int) -> Any:
  """Labels every parameter `frozen`, `tuned` or `head` by its top-level block."""
  unknown = set(params) - set(block_names)
  if unknown:
    raise ValueError(f"parameters outside the model's blocks {list(block_names)}: {sorted(unknown)}")
  def label(block: str) -> str:
    index = list(block_names).index(block)
    if index < trainable_from:
      return FROZEN
    return HEAD if index == len(block_names) - 1 else TUNED
  return {block: jax.tree.map(lambda _, b=block: label(b), subtree)
          for block, subtree in params.items()}


def make_optimizer(labels: Any, *, learning_rate: float, head_lr_mult: float, momentum: float,
                   steps_per_epoch: int, decay_per_epoch: float) -> optax.GradientTransformation:
  """SGD with momentum, the new head at `head_lr_mult` x the tuned layers' rate.

  The rate decays by `decay_per_epoch` once per epoch (Tajbakhsh et al. 2016,
  Eq. 2); frozen parameters go through `set_to_zero` and hold no state.
  """
  def sgd(lr: float) -> optax.GradientTransformation:
    schedule = optax.exponential_decay(lr, steps_per_epoch, decay_per_epoch, staircase=True)
    return optax.sgd(schedule, momentum=momentum)
  return optax.partition(
      {FROZEN: optax.set_to_zero(), TUNED: sgd(learning_rate),
       HEAD: sgd(learning_rate * head_lr_mult)}, labels)


def count_trainable(params: Any, labels: Any) -> int:
  sizes = jax.tree.map(lambda p, l: 0 if l == FROZEN else p.size, params, labels)
  return int(sum(jax.tree.leaves(sizes)))
