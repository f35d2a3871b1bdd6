"""Automatic depth selection: `auto` (deepen while it helps) and `auto_halving`."""
import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from tuning import auto_depth
from tuning import config as config_lib
from tuning import models, phases, report, train

# SqueezeNet with its real weights: the smallest pretrained model, so the fastest runs.
TINY = dict(arch="squeezenet1_1", weights="squeezenet_weights.pkl", weights_format="numpy_pickle",
            schemes=("head",), image_size=32, train_fraction=0.05, batch_size=16, progress=False)
BLOCKS = type(models.create("squeezenet1_1", 1)).block_names


def config(**overrides):
  c = config_lib.defaults()
  c.update({**TINY, **overrides})
  return c


def test_depth_schemes_name_the_ordinary_run_of_each_boundary():
  assert [auto_depth.depth_scheme(t, BLOCKS) for t in phases.depths(len(BLOCKS) - 1, 3)] == [
      "head", "from:fire7", "from:fire4", "all"]


def test_successive_halving_keeps_the_better_half_doubles_the_budget_and_resumes(tmp_path):
  quality = {"head": 0.70, "from:fire7": 0.80, "from:fire4": 0.85, "all": 0.75}
  calls = []

  def fake_train(run, directory):
    calls.append((run.scheme, run.epochs))
    row = {"scheme": run.scheme, "config": json.loads(run.to_json()), "val_auc":
           quality[run.scheme] + 0.01 * run.epochs, "test_auc": 0.5, "epochs_run": run.epochs,
           "n_train": 100, "predictions": None}
    os.makedirs(directory, exist_ok=True)
    train.append_result(os.path.join(directory, "results.jsonl"), row)
    return row

  search = config(scheme="auto_halving", epochs=10, auto_step=3, auto_budget=1)
  row = auto_depth.successive_halving(search, str(tmp_path), fake_train, train.run_identity)
  assert calls == [("head", 1), ("from:fire7", 1), ("from:fire4", 1), ("all", 1),
                   ("from:fire4", 2), ("from:fire7", 2)]
  auto = row["auto"]
  assert row["scheme"] == "auto_halving" and auto["chosen"] == "from:fire4"
  assert row["val_auc"] == pytest.approx(0.87) and row["config"]["scheme"] == "auto_halving"
  assert [r["epochs"] for r in auto["rounds"]] == [1, 2]
  assert {d["scheme"]: d["epochs"] for d in auto["depths"]} == {
      "head": 1, "from:fire7": 3, "from:fire4": 3, "all": 1}
  assert auto["epochs_spent"] == 8 and auto["sweep_epochs"] == 40
  flops = auto_depth.block_flops(models.create("squeezenet1_1", 1), _shapes(), 32)
  cost = {t: 3 * sum(flops[t:]) for t in (9, 6, 3, 0)}
  spent = cost[9] + 3 * cost[6] + 3 * cost[3] + cost[0]
  assert auto["compute_saved"] == pytest.approx(1 - spent / (10 * sum(cost.values())), abs=1e-4)

  table = report.auto_table([{**row, "seed": 0}])
  assert ("| auto_halving | 0 | from:fire4 | head 0.7100, from:fire7 0.8200, from:fire4 0.8700"
          in table)
  assert report.auto_table([{"scheme": "all", "seed": 0}]) == ""

  def no_training(run, directory):
    raise AssertionError(f"{run.scheme} retrained, though its row is in {directory}")
  again = auto_depth.successive_halving(search, str(tmp_path), no_training, train.run_identity)
  assert {k: v for k, v in again.items() if k != "wall_s"} == {
      k: v for k, v in row.items() if k != "wall_s"}


def _shapes():
  model = models.create("squeezenet1_1", 1)
  return jax.eval_shape(lambda: model.init(jax.random.key(0), jnp.zeros((1, 32, 32, 3)),
                                           train=False))


def test_auto_deepens_from_the_head_warm_started_and_reports_its_evidence(
    tmp_path, shared_data_dir, monkeypatch):
  monkeypatch.setenv("TUNING_DATA_DIR", str(shared_data_dir))
  monkeypatch.setenv("TUNING_WEIGHTS_DIR", str(shared_data_dir.parent / "weights"))
  run = config(scheme="auto", epochs=1, patience=1, auto_step=4)
  candidates = ["head", "from:fire6", "from:fire2", "all"]
  for scheme in candidates:  # the sweep's rows, as `tuning sweep` would have written them
    train.append_result(str(tmp_path / "results.jsonl"), {
        "scheme": scheme, "wall_s": 10.0,
        "config": {**json.loads(run.to_json()), "scheme": scheme}})
  row = train.train_and_evaluate(run, str(tmp_path))

  auto, history = row["auto"], row["history"]
  tried = auto["depths"]
  assert [d["scheme"] for d in tried] == candidates[:len(tried)] and len(tried) >= 2
  assert [d["val_auc"] for d in tried] == [h["val_auc"] for h in history]  # 1 epoch each
  bests = [{"val_auc": d["val_auc"]} for d in tried]
  chosen, deeper = phases.auto_choice(run, bests, np.zeros(0))
  assert auto["chosen"] == tried[chosen]["scheme"]
  assert deeper or chosen == len(tried) - 2  # a search stops at the first depth that did not help
  assert len(tried) == len(candidates) or not deeper
  # The tested model is the chosen depth's best (evaluated through the last depth's cache).
  assert row["best_epoch"] == chosen + 1
  assert row["val_auc"] == pytest.approx(tried[chosen]["val_auc"], abs=1e-3)
  assert auto["epochs_spent"] == len(history) and auto["sweep_epochs"] == len(candidates)
  assert 0 < auto["compute_saved"] < 1 and auto["sweep_wall_s"] == 40.0
  assert (row["n_trainable_params"] == 512 * 2 + 2) == (chosen == 0)  # the chosen depth's
  assert [p["trainable_from"] for p in row["phases"]] == ["head", "fire6", "fire2", "stem"]
  assert len(report.read_results(str(tmp_path))) == len(candidates) + 1
