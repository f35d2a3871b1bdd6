"""Automatic depth selection: which depth to tune, found at less than a sweep's cost.

Two searches over the candidate depths (the head, then `config.auto_step` blocks
deeper at a time, down to every block):

- `auto`, a phased run (tuning/phases.py): from the head down, each depth warm
  started from the one above's best weights, deeper only while it helps;
- `auto_halving`, successive halving (Jamieson & Talwalkar 2016): every
  candidate trains `config.auto_budget` epochs, the better half by validation
  AUC goes on with twice the budget, until one is left. Each round restarts
  from the pretrained weights (separate runs of the ordinary schemes, so each
  resumes like any run), capped at `config.epochs`.

Both record the evidence in the result row's `auto`: each depth's validation
AUC and epochs, and the compute against the sweep that trains every candidate
for `config.epochs`: epochs times the trained blocks' forward and backward FLOPs
per image (XLA's cost analysis of each block; the backward taken as twice the
forward; frozen blocks run once per image from the feature cache and are not
counted), and the sweep's measured wall time where its rows are in the workdir.
"""
from __future__ import annotations

import hashlib
import json
import os
import time
from typing import Callable, Sequence

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from tuning import models, phases, report


def depth_scheme(trainable_from: int, block_names: Sequence[str]) -> str:
  """The ordinary scheme that trains from block `trainable_from`: `head`, `from:<block>`, `all`."""
  if trainable_from == len(block_names) - 1:
    return "head"
  return "all" if trainable_from == 0 else f"from:{block_names[trainable_from]}"


def block_flops(model, variables, image_size: int) -> list[float]:
  """Forward FLOPs per image of each block, from the lowered (not compiled) block."""
  shapes = jax.tree.map(lambda x: jax.ShapeDtypeStruct(np.shape(x), x.dtype), variables)
  x = jax.ShapeDtypeStruct((1, image_size, image_size, 3), jnp.float32)
  flops = []
  for index in range(len(type(model).block_names)):
    block = lambda v, h, i=index: model.apply(v, h, start=i, stop=i + 1)
    flops.append(float(jax.jit(block).lower(shapes, x).cost_analysis()["flops"]))
    x = jax.eval_shape(block, shapes, x)
  return flops


def _compute(config: ml_collections.ConfigDict, flops: Sequence[float], candidates: Sequence[int],
             spent: dict[int, int], n_train: int, workdir: str, block_names: Sequence[str]) -> dict:
  """Spent against the sweep: trained-block GFLOPs, and wall time if the sweep's rows exist."""
  cost = lambda t: 3 * sum(flops[t:]) * n_train / 1e9  # one epoch's forward and backward
  used = sum(epochs * cost(t) for t, epochs in spent.items())
  sweep = sum(config.epochs * cost(t) for t in candidates)
  names = {depth_scheme(t, block_names) for t in candidates}
  same = ("dataset", "arch", "train_fraction", "seed", "image_size", "epochs", "weights")
  rows = {r["scheme"]: r for r in report.read_results(workdir) if r["scheme"] in names
          and all(r["config"].get(k) == config[k] for k in same)}
  return {"train_gflop": round(used, 3), "sweep_train_gflop": round(sweep, 3),
          "compute_saved": round(1 - used / sweep, 4), "epochs_spent": sum(spent.values()),
          "sweep_epochs": config.epochs * len(candidates),
          "sweep_wall_s": (round(sum(r["wall_s"] for r in rows.values()), 2)
                           if len(rows) == len(names) else None)}


def evidence(config: ml_collections.ConfigDict, model, variables, plan: Sequence[phases.Phase],
             chosen: int, history: Sequence[dict], n_train: int, workdir: str) -> dict:
  """`auto`'s result-row fields: the depth chosen, each depth's best val AUC and epochs, compute."""
  block_names = type(model).block_names
  bests = phases.phase_bests({"history": history})
  epochs = {i: sum(h.get("phase", 0) == i for h in history) for i in range(len(bests))}
  depths = [{"scheme": depth_scheme(plan[i].trainable_from, block_names),
             "val_auc": bests[i]["val_auc"], "epochs": epochs[i]} for i in range(len(bests))]
  spent = {plan[i].trainable_from: n for i, n in epochs.items()}
  return {"auto": {
      "chosen": depths[chosen]["scheme"], "depths": depths,
      **_compute(config, block_flops(model, variables, config.image_size),
                 [p.trainable_from for p in plan], spent, n_train, workdir, block_names)}}


def successive_halving(config: ml_collections.ConfigDict, workdir: str,
                       train: Callable[[ml_collections.ConfigDict, str], dict],
                       identity: Callable[[ml_collections.ConfigDict | dict], dict]) -> dict:
  """Runs `auto_halving` with `train` (train.train_and_evaluate); returns the result row.

  The rounds' runs go to `workdir/auto_halving/<config hash>/round<r>`; a run
  already in its round's results is read, not retrained, so the search resumes.
  The row is the chosen depth's last run, named `auto_halving`, with the evidence.
  """
  start = time.perf_counter()
  model = models.create(config.arch, 1)
  block_names = type(model).block_names
  candidates = phases.depths(len(block_names) - 1, config.auto_step)
  key = hashlib.sha256(json.dumps(identity(config), sort_keys=True).encode()).hexdigest()[:12]
  survivors, budget, rounds, spent, last_auc = candidates, config.auto_budget, [], {}, {}
  while True:
    directory = os.path.join(workdir, "auto_halving", key, f"round{len(rounds)}")
    rows = {}
    for t in survivors:
      run = config.copy_and_resolve_references()
      run.scheme, run.epochs = depth_scheme(t, block_names), budget
      done = [r for r in report.read_results(directory) if identity(r["config"]) == identity(run)]
      rows[t] = done[0] if done else train(run, directory)
      spent[t] = spent.get(t, 0) + rows[t]["epochs_run"]
      last_auc[t] = rows[t]["val_auc"]
    auc = {t: -np.inf if rows[t]["val_auc"] is None else rows[t]["val_auc"] for t in survivors}
    rounds.append({"epochs": budget, "val_auc": {depth_scheme(t, block_names): rows[t]["val_auc"]
                                                 for t in survivors}})
    survivors = sorted(survivors, key=lambda t: -auc[t])[:max(1, len(survivors) // 2)]
    if len(survivors) == 1:
      break
    budget = min(2 * budget, config.epochs)
  chosen = rows[survivors[0]]
  variables = jax.eval_shape(lambda: model.init(
      jax.random.key(0), jnp.zeros((1, config.image_size, config.image_size, 3)), train=False))
  depths = [{"scheme": depth_scheme(t, block_names), "val_auc": last_auc[t], "epochs": spent[t]}
            for t in candidates]
  return {**chosen, "scheme": config.scheme, "config": json.loads(config.to_json()),
          "predictions": chosen["predictions"] and os.path.relpath(
              os.path.join(directory, chosen["predictions"]), workdir),
          "wall_s": round(time.perf_counter() - start, 2),
          "auto": {"chosen": chosen["scheme"], "depths": depths, "rounds": rounds,
                   **_compute(config, block_flops(model, variables, config.image_size),
                              candidates, spent, chosen["n_train"], workdir, block_names)}}
