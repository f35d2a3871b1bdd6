"""A depth sweep: one run per scheme of the config, each run once across processes."""
from __future__ import annotations

import contextlib
import fcntl
import os
from typing import Iterator

import ml_collections
from tqdm import tqdm

from tuning import config as config_lib
from tuning import pretrained, report, train

RUN_KEY = ("dataset", "arch", "weights", "scheme", "train_fraction", "seed")


@contextlib.contextmanager
def run_lock(workdir: str, name: str) -> Iterator[bool]:
  """Holds an exclusive lock on run `name`; yields False if another process holds it.

  Lets several sweep processes (a cluster job array) share one workdir: each run
  is trained by whichever process takes its lock first. The OS drops the lock
  when its holder dies, so a killed run is free to resume at once.
  """
  os.makedirs(os.path.join(workdir, "locks"), exist_ok=True)
  with open(os.path.join(workdir, "locks", f"{name}.lock"), "w", encoding="utf-8") as f:
    try:
      fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
      yield False
      return
    try:
      yield True
    finally:
      fcntl.flock(f, fcntl.LOCK_UN)


def run_key(config: ml_collections.ConfigDict) -> tuple:
  """The config's run as its result row names it (weights: the source actually loaded)."""
  return tuple(pretrained.source(config) if k == "weights" else config[k] for k in RUN_KEY)


def _finished(workdir: str) -> set[tuple]:
  return {tuple(row[k] for k in RUN_KEY) for row in report.read_results(workdir)}


def run_schemes(config: ml_collections.ConfigDict, workdir: str, schemes) -> list[dict]:
  """Runs `config` once per scheme, skipping those finished or running elsewhere.

  An interrupted run resumes from its last epoch checkpoint (`train.resume`).
  Returns all result rows of the workdir.
  """
  config_lib.validate(config)
  os.makedirs(workdir, exist_ok=True)
  for scheme in tqdm(schemes, desc="sweep", disable=not config.progress or len(schemes) == 1):
    run_config = config.copy_and_resolve_references()
    run_config.scheme = scheme
    name = train.run_name(run_config)
    with run_lock(workdir, name) as mine:
      if not mine:
        tqdm.write(f"{name}: running in another process, skipped")
        continue
      if run_key(run_config) in _finished(workdir):  # read under the lock
        tqdm.write(f"{name}: already in results, skipped")
        continue
      row = train.train_and_evaluate(run_config, workdir)
    outcome = (f"diverged at epoch {row['diverged_at_epoch']}; " if row["diverged_at_epoch"] else "")
    if row["test_auc"] is not None:
      outcome += f"test AUC {row['test_auc']:.4f}, acc {row['test_acc']:.4f}, "
    tqdm.write(f"{name}: {outcome}{row['wall_s']:.0f} s")
    report.write_report(workdir)
  return report.read_results(workdir)


def run_sweep(config: ml_collections.ConfigDict, workdir: str) -> list[dict]:
  """Runs every scheme in `config.schemes`."""
  return run_schemes(config, workdir, config.schemes)
