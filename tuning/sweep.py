"""A depth sweep: one run per scheme of the config, each run once across processes."""
from __future__ import annotations

import contextlib
import fcntl
import json
import os
from typing import Iterator

import ml_collections
from tqdm import tqdm

from tuning import config as config_lib
from tuning import models, report, train

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


def run_key(config: ml_collections.ConfigDict | dict) -> str:
  """A run's identity (`train.run_identity`) as a hashable string; rows give their config."""
  return json.dumps(train.run_identity(config), sort_keys=True)


def _finished(workdir: str) -> set[str]:
  return {run_key(row["config"]) for row in report.read_results(workdir) if "config" in row}


def grid(config: ml_collections.ConfigDict) -> list[ml_collections.ConfigDict]:
  """One config per run of the sweep: train fraction x seed x arch x scheme, in that nesting.

  `config.train_fractions` / `config.seeds` / `config.archs` empty means the single
  `train_fraction` / `seed` / `arch` (with its `weights`). Across archs, each runs the
  schemes that name its blocks (`from:block4` is no depth of a ResNet). The order is
  fixed, so `--shard i/n` splits the same list in every process.
  """
  archs = config.archs or ((config.arch, config.weights, config.weights_format),)
  runs = []
  for fraction in config.train_fractions or (config.train_fraction,):
    for seed in config.seeds or (config.seed,):
      for arch, weights, weights_format in archs:
        blocks = type(models.create(arch, 1)).block_names
        schemes = tuple(s for s in config.schemes if config_lib.applies(s, blocks))
        for scheme in schemes:
          run = config.copy_and_resolve_references()
          run.train_fraction, run.seed, run.scheme = fraction, seed, scheme
          run.arch, run.weights, run.weights_format = arch, weights, weights_format
          run.archs, run.schemes = (), schemes
          runs.append(run)
  return runs


def shard(runs: list, spec: str) -> list:
  """Runs `i`, `i + n`, ... of `runs` for `spec` "i/n" (0 <= i < n): shard i of a job array."""
  try:
    index, count = (int(part) for part in spec.split("/"))
  except ValueError:
    index = count = -1
  if not 0 <= index < count:
    raise ValueError(f"--shard={spec!r}: expected i/n with 0 <= i < n, e.g. 0/4")
  return runs[index::count]


def run_all(runs: list[ml_collections.ConfigDict], workdir: str) -> list[dict]:
  """Trains each run once, skipping those finished or running elsewhere.

  An interrupted run resumes from its last epoch checkpoint (`train.resume`).
  Returns all result rows of the workdir.
  """
  for run_config in runs:
    config_lib.validate(run_config)
  os.makedirs(workdir, exist_ok=True)
  progress = bool(runs) and runs[0].progress and len(runs) > 1
  for run_config in tqdm(runs, desc="sweep", disable=not progress):
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


def run_sweep(config: ml_collections.ConfigDict, workdir: str, shard_spec: str = "0/1") -> list[dict]:
  """Runs this process's shard of the config's grid."""
  return run_all(shard(grid(config), shard_spec), workdir)
