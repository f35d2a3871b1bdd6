"""Phased runs: a run as a sequence of phases, each with its own freeze boundary.

A phase is `(epochs, scheme, lr_mult)`: it trains the blocks the scheme names
(`head`, `from:<block>`, `all`, `llrd`, ... or a block index) at `lr_mult` x the
run's rates. Every run is a plan of phases; the ordinary schemes are one phase of
`config.epochs`, so they train as they always did. Schemes that are plans:

- `lpft` (Kumar et al. 2022, linear probe then fine-tune): the head alone for
  `config.lpft_probe_epochs`, then every block for the rest of `config.epochs`;
- `gradual` (fastai's `fine_tune`, ULMFiT's gradual unfreezing): the head for
  `config.gradual_epochs`, then `config.gradual_step` more blocks per phase from
  the top down until every block trains, the last phase taking the remaining
  epochs. Rates are discriminative, like fastai's `slice(lr / lr_mult, lr)`:
  geometric from lr / `config.gradual_spread` at the lowest trained block up to
  the head (schedule.py's layer decay, set per phase to span that range). Each
  unfreezing phase shapes them by `config.gradual_warmup_epochs` and
  `config.gradual_decay` (fastai's `fit_one_cycle`: a warmup, then cosine); by
  default no warmup and the run's per-epoch decay: fastai's course did not stop
  `gradual`'s collapse in configs/strategies.py, which BatchNorm statistics caused;
- `auto` (Tajbakhsh et al. 2016's layer-wise tuning, as a search): one phase of
  `config.epochs` per depth, from the head down by `config.auto_step` blocks;
  each depth starts from the previous depth's best weights, and the run goes
  deeper only while the validation AUC gains more than `config.auto_min_gain`
  (and, below `config.auto_alpha` < 1, significantly by DeLong's test);
- `config.phases`, explicit `(epochs, scheme or block index, lr_mult)` triples
  (their epochs summing to `config.epochs`), for any other plan.

Boundaries never rise from one phase to the next (blocks are unfrozen, never
refrozen), so a block frozen in a phase was frozen in every earlier one: its
weights are the pretrained ones under any checkpoint of the run, and the feature
cache of a later phase serves every earlier phase's checkpoints too.

Between phases train.py rebuilds the optimizer for the new boundary and keeps
params, batch statistics and the step (the dropout RNG and data order follow
it). Momentum restarts at zero and each phase's schedule (`Phase.curve`, its
warmup and decay) starts again at the phase's rate, as each fastai `fit` call does.
A warmup must end within its phase. The phase of an epoch follows
from the plan, so a resumed run knows which optimizer its checkpoint holds.
Early stopping (`config.patience`) ends a phase, not the run; epochs keep their
planned numbers, so a later phase starts at the same epoch either way.
"""
from __future__ import annotations

import dataclasses
from typing import Sequence

import ml_collections
import numpy as np

from tuning import depth, schedule, stats


@dataclasses.dataclass(frozen=True)
class Phase:
  epochs: int
  scheme: depth.Scheme  # this phase's boundary and strategy (llrd, l2sp)
  lr_mult: float = 1.0
  layer_decay: float | None = None  # discriminative rates; None: the scheme's own
  curve: schedule.Curve = schedule.Curve()  # the rates' course; rules may override it

  @property
  def trainable_from(self) -> int:
    return self.scheme.trainable_from


def plan(config: ml_collections.ConfigDict, scheme_name: str, block_names: Sequence[str]
         ) -> list[Phase]:
  """The phases of a run of `scheme_name`; ValueError says why a plan is impossible."""
  scheme = depth.parse_scheme(scheme_name, block_names)
  head = len(block_names) - 1
  if config.phases and scheme.name in depth.PHASED + depth.SEARCHES:
    raise ValueError(f"config.phases would replace scheme {scheme.name}'s own plan; give them "
                     "with a one-phase scheme (e.g. all, llrd, l2sp) or leave them empty")
  if config.phases:
    phases = [_explicit(entry, scheme, block_names) for entry in config.phases]
    total = sum(p.epochs for p in phases)
    if total != config.epochs:
      raise ValueError(f"config.phases run {total} epochs but config.epochs = {config.epochs}; "
                       "set config.epochs to their sum")
  elif scheme.name == "lpft":
    if not 1 <= config.lpft_probe_epochs < config.epochs:
      raise ValueError(f"scheme lpft probes for config.lpft_probe_epochs = "
                       f"{config.lpft_probe_epochs}, which must be in [1, config.epochs = "
                       f"{config.epochs}) to leave epochs for fine-tuning")
    phases = [Phase(config.lpft_probe_epochs, _at(scheme, head)),
              Phase(config.epochs - config.lpft_probe_epochs, _at(scheme, 0))]
  elif scheme.name == "gradual":
    boundaries = depths(head, config.gradual_step)
    rest = config.epochs - config.gradual_epochs * (len(boundaries) - 1)
    if rest < 1:
      raise ValueError(
          f"scheme gradual unfreezes {config.gradual_step} block(s) per phase of "
          f"{config.gradual_epochs} epoch(s): {len(boundaries)} phases need config.epochs >= "
          f"{config.gradual_epochs * (len(boundaries) - 1) + 1}, got {config.epochs}")
    unfreezing = schedule.Curve(config.gradual_warmup_epochs, config.gradual_decay)
    phases = [Phase(config.gradual_epochs if b else rest, _at(scheme, b),
                    layer_decay=config.gradual_spread ** (-1 / (head - b)) if b < head else None,
                    curve=unfreezing if b < head else schedule.Curve())
              for b in boundaries]
  elif scheme.name == "auto":
    phases = [Phase(config.epochs, _at(scheme, b)) for b in depths(head, config.auto_step)]
  else:
    phases = [Phase(config.epochs, scheme)]
  rising = [f"{i} -> {i + 1}" for i in range(len(phases) - 1)
            if phases[i + 1].trainable_from > phases[i].trainable_from]
  if rising:
    raise ValueError(f"phases {', '.join(rising)} refreeze blocks; a later phase must train "
                     "at least the blocks of the one before")
  _check_warmups(phases, schedule.parse_rules(config.schedule))
  return phases


def _check_warmups(phases: Sequence[Phase], rules: Sequence[schedule.Rule]) -> None:
  """Every warmup must end within its phase (as big_vision checks), or the rate never peaks."""
  for i, phase in enumerate(phases):
    used = [(r, dataclasses.replace(phase.curve, **r.curve)) for r in rules
            if r.mult is not None] if rules else [(None, phase.curve)]
    for rule, curve in used:
      if curve.warmup_epochs >= phase.epochs:
        source = (f"schedule rule {rule.pattern!r}" if rule and "warmup_epochs" in rule.curve
                  else "its schedule")
        raise ValueError(f"phase {i} runs {phase.epochs} epoch(s), but {source} warms up for "
                         f"{curve.warmup_epochs:g}; a warmup must end within its phase")


def _at(scheme: depth.Scheme, trainable_from: int) -> depth.Scheme:
  return dataclasses.replace(scheme, trainable_from=trainable_from)


def depths(head: int, step: int) -> list[int]:
  """Candidate boundaries: the head's index, then `step` blocks lower at a time, down to 0."""
  return [*range(head, 0, -step), 0]


def _explicit(entry, run: depth.Scheme, block_names: Sequence[str]) -> Phase:
  epochs, boundary, lr_mult = entry
  if isinstance(boundary, int) and not isinstance(boundary, bool):
    if not 0 <= boundary < len(block_names):
      raise ValueError(f"phase {entry!r}: block index {boundary} outside 0..{len(block_names) - 1}")
    scheme = _at(run, boundary)
  elif not isinstance(boundary, str):
    raise ValueError(f"phase {entry!r}: expected a scheme name or a block index, got {boundary!r}")
  else:
    scheme = depth.parse_scheme(boundary, block_names)
    if scheme.name in depth.PHASED + depth.SEARCHES:
      raise ValueError(f"phase {entry!r}: {boundary!r} is itself a plan of phases")
    scheme = dataclasses.replace(scheme, pretrained=run.pretrained)
  if not (isinstance(epochs, int) and epochs >= 1 and lr_mult > 0):
    raise ValueError(f"phase {entry!r}: expected (epochs >= 1, scheme or block index, lr_mult > 0)")
  return Phase(epochs, scheme, float(lr_mult))


def first_epoch(phases: Sequence[Phase], index: int) -> int:
  """The planned number (from 1) of phase `index`'s first epoch."""
  return 1 + sum(p.epochs for p in phases[:index])


def phase_of(phases: Sequence[Phase], epoch: int) -> int:
  """The phase that runs epoch `epoch` (from 1); epoch 0, before any, is phase 0's."""
  ends = np.cumsum([p.epochs for p in phases])
  return min(int(np.searchsorted(ends, max(epoch, 1))), len(phases) - 1)


def describe(phases: Sequence[Phase], block_names: Sequence[str], history: Sequence[dict]
             ) -> list[dict]:
  """The plan as the result row records it, with the epochs each phase ran and its best."""
  run = [[h for h in history if h.get("phase", 0) == i] for i in range(len(phases))]
  return [{"epochs": p.epochs, "first_epoch": first_epoch(phases, i),
           "trainable_from": block_names[p.trainable_from], "lr_mult": p.lr_mult,
           "layer_decay": p.layer_decay, "schedule": dataclasses.asdict(p.curve),
           "epochs_run": len(run[i]),
           "best_val_auc": max((h["val_auc"] for h in run[i]), default=None)}
          for i, p in enumerate(phases)]


def phase_bests(progress: dict) -> list[dict]:
  """Each phase run so far: `{"val_auc", "epoch", "val_scores"}` of its best epoch.

  `val_scores` are what train.py keeps of that epoch's validation predictions
  (binary tasks: the positive class's probabilities), None if it keeps none.
  """
  bests: dict[int, dict] = {}
  for h in progress["history"]:
    phase = h.get("phase", 0)
    if phase not in bests or h["val_auc"] > bests[phase]["val_auc"]:
      bests[phase] = {"val_auc": h["val_auc"], "epoch": h["epoch"]}
  scores = progress.get("val_scores", {})
  return [{**bests[i], "val_scores": scores.get(str(i))} for i in sorted(bests)]


def auto_choice(config: ml_collections.ConfigDict, bests: Sequence[dict], val_labels: np.ndarray
                ) -> tuple[int, bool]:
  """`auto`: the phase (depth) chosen from `phase_bests`, and whether to try the next deeper one.

  Each depth is kept while it beat the one above it enough (`deepen`); the first
  that did not ends the search, and the one above it is chosen.
  """
  for i in range(1, len(bests)):
    if not deepen(config, bests[i - 1], bests[i], val_labels):
      return i - 1, False
  return len(bests) - 1, True


def deepen(config: ml_collections.ConfigDict, previous: dict, current: dict,
           val_labels: np.ndarray) -> bool:
  """`auto`: whether the depth just trained (`current`) beat the one above it enough to go on.

  Each is `{"val_auc", "val_scores"}` of its best epoch (`val_scores`: the
  positive class's probabilities, binary tasks only). It must gain more than
  `config.auto_min_gain` and, with `config.auto_alpha` < 1 on a binary task, be
  better by DeLong's test at that level.
  """
  if current["val_auc"] - previous["val_auc"] <= config.auto_min_gain:
    return False
  if config.auto_alpha >= 1 or current.get("val_scores") is None:
    return True
  test = stats.delong(np.asarray(val_labels) == 1, current["val_scores"], previous["val_scores"])
  return test.p < config.auto_alpha
