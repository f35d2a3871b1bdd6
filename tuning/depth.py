"""Depth schemes: which of a model's named blocks train and which stay frozen.

A scheme string names the freeze boundary (Tajbakhsh et al. 2016 tune "from the
last layer backwards"; Kandel & Castelli 2020 tune the top blocks):

- `scratch`: random initialisation, every block trains;
- `all`: pretrained, every block trains (deep tuning);
- `head`: pretrained, only the fresh classifier head trains;
- `from:<block>`: pretrained, that block and every block above it train;
- `lpft`, `gradual`, `auto`: phases with boundaries moving down (tuning/phases.py);
- `auto_halving`: successive halving over the depths (tuning/auto_depth.py).

Tajbakhsh's own names are accepted too: `FT:only fc8` is `head` and
`FT:fc6-fc8` is `from:fc6` (the range must end at the last block).

Frozen blocks get no updates and hold no optimizer state (tuning/schedule.py),
and the model cuts gradients at the boundary (`run_blocks`).
"""
from __future__ import annotations

import dataclasses
from typing import Sequence


@dataclasses.dataclass(frozen=True)
class Scheme:
  name: str
  trainable_from: int  # index of the first trainable block
  pretrained: bool


# Deep tuning with a strategy (see tuning/schedule.py): `llrd` decays the rate layer by
# layer from the head down (config.layer_decay); `l2sp` pulls the weights toward the
# pretrained ones (config.l2sp_strength) rather than toward zero.
STRATEGIES = ("llrd", "l2sp")
# Runs of several phases, each with its own boundary (tuning/phases.py): `lpft` probes
# then fine-tunes, `gradual` unfreezes from the top down, `auto` deepens while it helps.
PHASED = ("lpft", "gradual", "auto")
# Searches over depths by separate runs (tuning/auto_depth.py): successive halving.
SEARCHES = ("auto_halving",)


def valid_schemes(block_names: Sequence[str]) -> list[str]:
  return ["scratch", "all", *STRATEGIES, *PHASED, *SEARCHES, "head",
          *(f"from:{b}" for b in block_names),
          f"FT:only {block_names[-1]}", *(f"FT:{b}-{block_names[-1]}" for b in block_names[:-1])]


def parse_scheme(scheme: str, block_names: Sequence[str]) -> Scheme:
  """Resolves a scheme string against a model's ordered blocks."""
  last = block_names[-1]
  # A plan or search may reach every block; its phases or runs set their own boundaries.
  if scheme in ("scratch", "all", *STRATEGIES, *PHASED, *SEARCHES):
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
