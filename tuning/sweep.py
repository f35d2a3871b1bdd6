"""A depth sweep: one run per scheme of the config, skipping runs already finished."""
from __future__ import annotations

import os

import ml_collections
from tqdm import tqdm

from tuning import config as config_lib
from tuning import report, train

RUN_KEY = ("dataset", "arch", "weights", "scheme", "train_fraction", "seed")


def run_schemes(config: ml_collections.ConfigDict, workdir: str, schemes) -> list[dict]:
  """Runs `config` once per scheme, skipping those already in the results.

  An interrupted run resumes from its last epoch checkpoint (`train.resume`).
  Returns all result rows of the workdir.
  """
  config_lib.validate(config)
  os.makedirs(workdir, exist_ok=True)
  done = {tuple(row[k] for k in RUN_KEY) for row in report.read_results(workdir)}
  for scheme in tqdm(schemes, desc="sweep", disable=not config.progress or len(schemes) == 1):
    run_config = config.copy_and_resolve_references()
    run_config.scheme = scheme
    if tuple(run_config[k] for k in RUN_KEY) in done:
      tqdm.write(f"{train.run_name(run_config)}: already in results, skipped")
      continue
    row = train.train_and_evaluate(run_config, workdir)
    outcome = (f"diverged at epoch {row['diverged_at_epoch']}; " if row["diverged_at_epoch"] else "")
    if row["test_auc"] is not None:
      outcome += f"test AUC {row['test_auc']:.4f}, acc {row['test_acc']:.4f}, "
    tqdm.write(f"{train.run_name(run_config)}: {outcome}{row['wall_s']:.0f} s")
    report.write_report(workdir)
  return report.read_results(workdir)


def run_sweep(config: ml_collections.ConfigDict, workdir: str) -> list[dict]:
  """Runs every scheme in `config.schemes`."""
  return run_schemes(config, workdir, config.schemes)
