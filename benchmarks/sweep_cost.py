"""`tuning bench --sweep`: the wall time of a whole depth sweep against one full fine-tune.

Real training runs (`tuning.train.train_and_evaluate`, what `tuning sweep` runs,
one after the other in one process as a sweep does) on the training config's
dataset (`$TUNING_DATA_DIR`) with the model's torchvision ImageNet weights: `scratch`,
then every depth from `head` to `all`, each for the same number of epochs (early
stopping off). Schemes whose frozen blocks can be cached (tuning/feature_cache.py)
run a second time with `cache_features=False`, so the table shows what caching
saves. A run's cost is its `wall_s`: loading data and weights, compiling,
building the feature cache, training, evaluating and checkpointing.
"""
from __future__ import annotations

import datetime
import os
import shutil
import sys
from typing import Sequence

import jax

from benchmarks import common
from tuning import config as config_lib
from tuning import convert, depth, feature_cache, models, train

JSONL, MARKDOWN = "sweep.jsonl", "sweep.md"


def has_weights(arch: str) -> bool:
  return arch in convert.URLS


def sweep_schemes(block_names: Sequence[str]) -> list[str]:
  """scratch, then every depth from the head down to all: a whole sweep."""
  return ["scratch", "head", *(f"from:{b}" for b in reversed(block_names[1:-1])), "all"]


def run(archs: Sequence[str], schemes: Sequence[str] | None, *, size: int, batch: int,
        epochs: int, train_fraction: float, out: str) -> list[dict]:
  """Runs every model's sweep with the cache, then its cacheable schemes without.

  `schemes`: the sweep's schemes, `all` among them; None: `sweep_schemes`, every depth.
  Writes `out/sweep.jsonl` (one row per run, rewritten) and `out/sweep.md`;
  the runs' own workdirs go to `out/sweep_runs`, emptied first so that no run resumes.
  """
  os.makedirs(out, exist_ok=True)
  path, workdir = os.path.join(out, JSONL), os.path.join(out, "sweep_runs")
  for stale in (path, workdir):
    if os.path.isdir(stale):
      shutil.rmtree(stale)
    elif os.path.exists(stale):
      os.remove(stale)
  rows = []
  for arch in archs:
    config = config_lib.defaults()
    config.update(arch=arch, weights=convert.URLS[arch].rsplit("/", 1)[-1],
                  weights_format="torchvision", image_size=size, batch_size=batch, epochs=epochs,
                  patience=epochs, train_fraction=train_fraction, progress=False)
    blocks = type(models.create(arch, 1)).block_names
    names = list(schemes or sweep_schemes(blocks))
    cacheable = [n for n in names if feature_cache.applies(config, depth.parse_scheme(n, blocks))]
    for scheme, cache in [(n, True) for n in names] + [(n, False) for n in cacheable]:
      run_config = config.copy_and_resolve_references()
      run_config.update(scheme=scheme, cache_features=cache)
      result = train.train_and_evaluate(
          run_config, os.path.join(workdir, "cached" if cache else "uncached"))
      row = {
          "framework": "jax", "model": arch, "scheme": scheme,
          "cacheable": scheme in cacheable, **{k: result[k] for k in (
              "feature_cache", "feature_cache_s", "wall_s", "epochs_run", "n_train",
              "n_trainable_params", "image_size", "batch_size", "test_auc", "val_auc")},
          "train_img_per_s": result["n_train"] * result["epochs_run"] / result["wall_s"],
          "loadavg_1m": os.getloadavg()[0],
          "date": datetime.datetime.now().astimezone().isoformat(timespec="seconds"),
          "jax_version": jax.__version__, "devices": jax.device_count(), **common.machine()}
      print(f"sweep {arch} {scheme} cache={row['feature_cache']}: {row['wall_s']:.1f} s",
            file=sys.stderr, flush=True)
      train.append_result(path, row)
      rows.append(row)
  write_markdown(rows, os.path.join(out, MARKDOWN))
  return rows


def summary(rows: Sequence[dict]) -> list[str]:
  """Per model: the sweep's total wall time with and without caching, in units of `all`."""
  lines = []
  for arch in dict.fromkeys(r["model"] for r in rows):
    mine = [r for r in rows if r["model"] == arch]
    full = next(r["wall_s"] for r in mine if r["scheme"] == "all")
    cached = [r for r in mine if r["feature_cache"] or not r["cacheable"]]
    uncached = [r for r in mine if not r["feature_cache"]]
    builds = sum(r["feature_cache_s"] for r in cached if r["feature_cache"])
    total = sum(r["wall_s"] for r in cached)
    lines.append(
        f"- {arch}: the sweep ({len(cached)} runs) takes {total:.0f} s with the feature cache = "
        f"**{total / full:.2f}x** one full fine-tune (`all`, {full:.0f} s); without it "
        f"{sum(r['wall_s'] for r in uncached):.0f} s = "
        f"{sum(r['wall_s'] for r in uncached) / full:.2f}x. Building the caches took "
        f"{builds:.0f} s, {100 * builds / total:.0f} % of the cached sweep.")
  return lines


def table(rows: Sequence[dict]) -> str:
  """One line per model and scheme: its wall time in the sweep with and without the cache."""
  lines = ["| model | scheme | trainable params | wall s with cache (build s) | wall s without "
           "| without / with | with cache / `all` | test AUC with / without |",
           "|" + "---|" * 8]
  for arch in dict.fromkeys(r["model"] for r in rows):
    mine = [r for r in rows if r["model"] == arch]
    full = next(r["wall_s"] for r in mine if r["scheme"] == "all")
    for scheme in dict.fromkeys(r["scheme"] for r in mine):
      runs = [r for r in mine if r["scheme"] == scheme]
      # A scheme the cache does not apply to is one run, the same in both sweeps.
      cached = next(r for r in runs if r["feature_cache"] or not r["cacheable"])
      uncached = next(r for r in runs if not r["feature_cache"])
      build = f" ({cached['feature_cache_s']:.1f})" if cached["feature_cache"] else ""
      lines.append("| " + " | ".join([
          arch, scheme, f"{cached['n_trainable_params']:,}", f"{cached['wall_s']:.1f}{build}",
          f"{uncached['wall_s']:.1f}", f"{uncached['wall_s'] / cached['wall_s']:.2f}",
          f"{cached['wall_s'] / full:.2f}",
          f"{cached['test_auc']:.4f} / {uncached['test_auc']:.4f}"]) + " |")
  return "\n".join(lines)


def write_markdown(rows: Sequence[dict], path: str) -> None:
  first = rows[0]
  common.write_report(
      path, "tuning bench --sweep", rows,
      f", jax {first['jax_version']}. {first['n_train']} training images, "
      f"{first['image_size']} px, batch {first['batch_size']}, {first['epochs_run']} epochs per "
      f"run (no early stopping), torchvision ImageNet weights.",
      table(rows), "", *summary(rows), load="after each run")
