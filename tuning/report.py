"""Results in, `report.md` and plots out: which depth wins, by how much, and how sure we are.

Per study (dataset, arch, weights) and training fraction, every scheme gets its
test AUC averaged over seeds with a 95 % interval (Student-t over seeds; with
one seed, a bootstrap over test images), and a p-value against the best scheme,
chosen on validation AUC: DeLong's test for binary AUC, a paired bootstrap for
multi-class and multi-label macro AUC, per seed, combined over seeds with Stouffer's z. The
verdict names the best scheme and the shallowest one not significantly worse.
"""
from __future__ import annotations

import dataclasses
import json
import math
import os
import warnings
from typing import Iterable, Sequence

import matplotlib
import numpy as np
from matplotlib import pyplot as plt

from tuning import stats
from tuning.datasets import medmnist
from tuning.tasks import classification

matplotlib.use("Agg")  # files only, never a window

RESULTS, REPORT = "results.jsonl", "report.md"
ALPHA = 0.05
RUN_COLUMNS = (("train fraction", "train_fraction", "{:g}"), ("scheme", "scheme", "{}"),
               ("seed", "seed", "{}"),
               ("trainable params", "n_trainable_params", "{:,}"), ("best epoch", "best_epoch", "{}"),
               ("val AUC", "val_auc", "{:.4f}"), ("test AUC", "test_auc", "{:.4f}"),
               ("test acc", "test_acc", "{:.4f}"), ("wall s", "wall_s", "{:.0f}"))


def read_results(workdir: str) -> list[dict]:
  path = os.path.join(workdir, RESULTS)
  if not os.path.exists(path):
    return []
  rows = []
  with open(path, encoding="utf-8") as f:
    for number, line in enumerate(f, start=1):
      if not line.strip():
        continue
      try:
        rows.append(json.loads(line))
      except json.JSONDecodeError:  # torn by a crash mid-write; the run is redone
        warnings.warn(f"{path}:{number}: skipping a line that is not complete JSON")
  return rows


@dataclasses.dataclass
class Scheme:
  """One scheme's runs (one per seed) at one training fraction, and their summary."""
  name: str
  runs: list[dict]
  test_auc: float = math.nan
  low: float = math.nan
  high: float = math.nan
  val_auc: float = math.nan
  p_vs_best: float | None = None  # None: the best itself, or no predictions to test with

  @property
  def trainable(self) -> int:
    return self.runs[0]["n_trainable_params"]

  @property
  def depth_key(self) -> tuple:
    """scratch first, then pretrained schemes from the fewest trainable parameters up."""
    return (self.name != "scratch", self.trainable, self.name)


def _predictions(row: dict) -> tuple[np.ndarray, np.ndarray] | None:
  return _saved(row, "labels", "probs")


def _saved(row: dict, *keys: str) -> tuple[np.ndarray, ...] | None:
  """Arrays `keys` of a run's saved test predictions; None if it has no file or lacks one."""
  path = row.get("predictions")
  if not path:
    return None
  path = os.path.join(row["_workdir"], path)
  if not os.path.exists(path):
    return None
  with np.load(path) as saved:
    return tuple(saved[k] for k in keys) if all(k in saved for k in keys) else None


def _compare(a: dict, b: dict) -> stats.Comparison | None:
  """Test AUC of run `a` against run `b` (same seed, same test set)."""
  pa, pb = _predictions(a), _predictions(b)
  if pa is None or pb is None or not np.array_equal(pa[0], pb[0]):
    return None
  labels = pa[0]
  if not classification.is_multi_label(labels) and pa[1].shape[1] == 2:
    return stats.delong(labels == 1, pa[1][:, 1], pb[1][:, 1])
  return stats.paired_bootstrap(labels, pa[1], pb[1], classification.roc_auc, samples=300,
                                strata=medmnist.strata(labels))


def summarize(runs: list[dict]) -> list[Scheme]:
  """The schemes of one study and fraction, in depth order, with intervals and p-values."""
  by_scheme: dict[str, list[dict]] = {}
  for row in runs:
    if row["test_auc"] is not None:
      by_scheme.setdefault(row["scheme"], []).append(row)
  schemes = sorted((Scheme(name, sorted(rows, key=lambda r: r["seed"]))
                    for name, rows in by_scheme.items()), key=lambda s: s.depth_key)
  for scheme in schemes:
    scheme.val_auc = float(np.mean([r["val_auc"] for r in scheme.runs]))
    scheme.test_auc, scheme.low, scheme.high = stats.mean_ci([r["test_auc"] for r in scheme.runs])
    if len(scheme.runs) == 1 and (saved := _predictions(scheme.runs[0])) is not None:
      labels, probs = saved
      scheme.low, scheme.high = stats.bootstrap_ci(labels, probs, classification.roc_auc,
                                                   samples=300, strata=medmnist.strata(labels))
    scheme.low, scheme.high = max(scheme.low, 0.0), min(scheme.high, 1.0)  # AUC's range; nan stays
  if not schemes:
    return schemes
  best = max(schemes, key=lambda s: s.val_auc)
  best_by_seed = {r["seed"]: r for r in best.runs}
  for scheme in schemes:
    if scheme is best:
      continue
    tests = [_compare(r, best_by_seed[r["seed"]]) for r in scheme.runs if r["seed"] in best_by_seed]
    if tests and all(t is not None for t in tests):
      scheme.p_vs_best = stats.stouffer([t.z for t in tests])
  return schemes


def best_of(schemes: Sequence[Scheme]) -> Scheme:
  return max(schemes, key=lambda s: s.val_auc)


def shallowest_as_good(schemes: Sequence[Scheme]) -> Scheme | None:
  """The fine-tuned scheme with the fewest trainable parameters not significantly below the best."""
  best = best_of(schemes)
  candidates = [s for s in schemes if s.name != "scratch" and
                (s is best or s.test_auc >= best.test_auc or
                 (s.p_vs_best is not None and s.p_vs_best >= ALPHA))]
  return min(candidates, key=lambda s: s.trainable) if candidates else None


def _fmt(value: float | None, spec: str = "{:.4f}") -> str:
  return "—" if value is None or (isinstance(value, float) and math.isnan(value)) else spec.format(value)


def scheme_table(schemes: Sequence[Scheme]) -> str:
  """One row per scheme in depth order; `rank` orders them by validation AUC, the
  criterion a user can apply without touching the test set."""
  best = best_of(schemes)
  ranks = {id(s): i for i, s in enumerate(sorted(schemes, key=lambda s: -s.val_auc), start=1)}
  lines = ["| scheme | rank (val) | trainable params | seeds | val AUC | test AUC (95 % CI) | "
           "sens @ 10 % FPR | p vs best | wall s |", "|---|---|---|---|---|---|---|---|---|"]
  for s in schemes:
    sens = np.mean([r.get("test_sens_at_fpr10") for r in s.runs]) if all(
        r.get("test_sens_at_fpr10") is not None for r in s.runs) else None
    p = "best" if s is best else _fmt(s.p_vs_best, "{:.3g}")
    lines.append(
        f"| {s.name} | {ranks[id(s)]} | {s.trainable:,} | {len(s.runs)} | {s.val_auc:.4f} | "
        f"{s.test_auc:.4f} ({_fmt(s.low)}–{_fmt(s.high)}) | {_fmt(sens, '{:.3f}')} | {p} | "
        f"{np.mean([r['wall_s'] for r in s.runs]):.0f} |")
  return "\n".join(lines)


def verdict(schemes: Sequence[Scheme], diverged: Iterable[dict] = ()) -> str:
  diverged = [f"`{r['scheme']}` (seed {r['seed']}) at epoch {r['diverged_at_epoch']}"
              for r in diverged if r.get("diverged_at_epoch")]
  note = (f"Diverged (non-finite loss; best epoch before it reported): {', '.join(diverged)}. "
          if diverged else "")
  if not schemes:
    return note
  best = best_of(schemes)
  text = f"Best on validation AUC: `{best.name}` (test AUC {best.test_auc:.4f})."
  scratch = next((s for s in schemes if s.name == "scratch"), None)
  if scratch is not None and scratch is not best:
    gap = best.test_auc - scratch.test_auc
    text += (f" Against scratch ({scratch.test_auc:.4f}): {gap:+.4f}, "
             f"p = {_fmt(scratch.p_vs_best, '{:.3g}')}.")
  shallow = shallowest_as_good(schemes)
  if shallow is not None and shallow is not best:
    text += (f" Shallowest fine-tuning not significantly worse (p >= {ALPHA}): `{shallow.name}` "
             f"({shallow.trainable:,} trainable parameters, test AUC {shallow.test_auc:.4f}).")
  elif shallow is best:
    text += " No shallower fine-tuning comes within significance of it."
  if all(len(s.runs) == 1 for s in schemes):
    text += " One seed: intervals are over test images only, not over training randomness."
  else:
    text += (" Intervals are over seeds; p-values test the same seeds' models on the same test"
             " images, so they measure test-set sampling, not training randomness.")
  return note + text


def fraction_trend(by_fraction: dict[float, list[Scheme]]) -> str:
  """Scratch against the best fine-tuned scheme at each training fraction (paper A's Fig.)."""
  lines = ["| train fraction | scratch test AUC | best fine-tuned (val) | its test AUC | gap |",
           "|---|---|---|---|---|"]
  for fraction in sorted(by_fraction, reverse=True):
    schemes = by_fraction[fraction]
    scratch = next((s for s in schemes if s.name == "scratch"), None)
    tuned = [s for s in schemes if s.name != "scratch"]
    if scratch is None or not tuned:
      continue
    best = best_of(tuned)
    lines.append(f"| {fraction:g} | {scratch.test_auc:.4f} | {best.name} | {best.test_auc:.4f} | "
                 f"{best.test_auc - scratch.test_auc:+.4f} |")
  return "\n".join(lines) if len(lines) > 3 else ""


def run_table(rows: Iterable[dict]) -> str:
  lines = ["| " + " | ".join(c[0] for c in RUN_COLUMNS) + " |",
           "|" + "|".join("---" for _ in RUN_COLUMNS) + "|"]
  order = lambda r: (-r["train_fraction"], r["scheme"] != "scratch", r["n_trainable_params"],
                     r["scheme"], r["seed"])
  for row in sorted(rows, key=order):
    lines.append("| " + " | ".join("—" if row.get(key) is None else fmt.format(row[key])
                                   for _, key, fmt in RUN_COLUMNS) + " |")
  return "\n".join(lines)


def _slug(*parts) -> str:
  """A file name from `parts`; no ':' (of `detection:PATH`), which would make the report's
  relative image link read as a URL scheme."""
  return "-".join(str(p) for p in parts).replace("/", "_").replace(" ", "_").replace(":", "_")


def write_report(workdir: str, more: Sequence[str] = ()) -> str:
  """Writes `workdir/report.md` and its PNG plots from the results
  of `workdir` and of `more` workdirs (e.g. the shards of a job array); returns its path."""
  rows = []
  for directory in (workdir, *more):
    rows += [{**row, "_workdir": directory} for row in read_results(directory)]
  studies: dict[tuple, dict[float, list[dict]]] = {}
  for row in rows:
    study = studies.setdefault((row["dataset"], row["arch"], row["weights"]), {})
    study.setdefault(row["train_fraction"], []).append(row)
  sections = ["# Depth sweep report", ""]
  for (dataset, arch, weights), by_fraction in sorted(studies.items()):
    sections += [f"## {dataset}, {arch}, weights `{weights}`", ""]
    summaries = {fraction: summarize(runs) for fraction, runs in by_fraction.items()}
    for fraction in sorted(by_fraction, reverse=True):
      runs = by_fraction[fraction]
      sections += [f"### train fraction {fraction:g}", "",
                   f"{runs[0]['n_train']} training images at {runs[0]['image_size']} px, "
                   f"batch {runs[0]['batch_size']}.", "",
                   scheme_table(summaries[fraction]) if summaries[fraction] else "", "",
                   verdict(summaries[fraction], runs), ""]
      task = task_table(summaries[fraction])
      sections += [task, ""] if task else []
    trend = fraction_trend(summaries)
    if trend:
      sections += ["### Fine-tuning against scratch as the training set shrinks", "", trend, ""]
    slug = _slug(dataset, arch, os.path.basename(weights))
    figures = _plots(workdir, slug, summaries) + _froc_plots(workdir, slug, summaries)
    sections += [f"![{name}]({name})" for name in figures] + [""] * bool(figures)
    if any(r.get("test_label_aucs") for runs in by_fraction.values() for r in runs):
      sections += ["Multi-label: test AUC is the macro mean over the labels with positives and "
                   "negatives in the test split (each label's: `test_label_aucs` in "
                   f"{RESULTS}), accuracy the mean per-label accuracy at 0.5; no ROC plot.", ""]
    sections += ["### Runs", "", run_table(r for runs in by_fraction.values() for r in runs), ""]
    automatic = auto_table(r for runs in by_fraction.values() for r in runs)
    sections += ["### Automatic depth selection", "", automatic, ""] if automatic else []
  path = os.path.join(workdir, REPORT)
  with open(path + ".tmp", "w", encoding="utf-8") as f:
    f.write("\n".join(sections))
  os.replace(path + ".tmp", path)
  return path


def _plots(workdir: str, slug: str, summaries: dict[float, list[Scheme]]) -> list[str]:
  """Test AUC against depth (one line per fraction, 95 % CIs), ROC curves of the largest
  fraction's first seed, and cost (trainable parameters, wall time) per scheme."""
  names = []
  order = sorted({s.name: s.depth_key for ss in summaries.values() for s in ss}.items(),
                 key=lambda kv: kv[1])
  labels = [name for name, _ in order]

  fig, ax = plt.subplots(figsize=(max(6, 1.1 * len(labels)), 4))
  for fraction in sorted(summaries, reverse=True):
    points = {s.name: s for s in summaries[fraction]}
    xs = [i for i, name in enumerate(labels) if name in points]
    ss = [points[labels[i]] for i in xs]
    means = np.array([s.test_auc for s in ss])
    low = np.array([s.low if not math.isnan(s.low) else s.test_auc for s in ss])
    high = np.array([s.high if not math.isnan(s.high) else s.test_auc for s in ss])
    ax.errorbar(xs, means, yerr=[means - low, high - means], marker="o", capsize=3,
                label=f"train fraction {fraction:g}")
  ax.set_xticks(range(len(labels)), labels, rotation=30, ha="right")
  ax.set_xlabel("scheme (scratch, then shallow to deep fine-tuning)")
  ax.set_ylabel("test AUC (95 % CI)")
  ax.grid(alpha=0.3)
  ax.legend()
  fig.tight_layout()
  names.append(f"{slug}-depth.png")
  fig.savefig(os.path.join(workdir, names[-1]), dpi=120)
  plt.close(fig)

  largest = summaries[max(summaries)]
  curves = [(s.name, _predictions(s.runs[0])) for s in largest]
  curves = [(name, saved) for name, saved in curves if saved is not None and saved[1].shape[1] == 2
            and not classification.is_multi_label(saved[0])]
  if curves:
    fig, ax = plt.subplots(figsize=(5, 5))
    for name, (y, probs) in curves:
      fpr, tpr = classification.roc_curve(y == 1, probs[:, 1])
      ax.plot(fpr, tpr, label=f"{name} (AUC {classification.roc_auc(y, probs):.3f})")
    ax.plot([0, 1], [0, 1], color="grey", lw=0.5)
    ax.set_xlabel("false-positive rate")
    ax.set_ylabel("sensitivity")
    ax.set_title(f"ROC, train fraction {max(summaries):g}, seed {largest[0].runs[0]['seed']}")
    ax.legend(loc="lower right", fontsize=8)
    fig.tight_layout()
    names.append(f"{slug}-roc.png")
    fig.savefig(os.path.join(workdir, names[-1]), dpi=120)
    plt.close(fig)

  fig, (left, right) = plt.subplots(1, 2, figsize=(max(8, 1.4 * len(labels)), 3.5))
  trainable = {s.name: s.trainable for s in largest}
  wall = {s.name: np.mean([r["wall_s"] for r in s.runs]) for s in largest}
  shown = [name for name in labels if name in trainable]
  left.bar(shown, [trainable[n] for n in shown])
  left.set_yscale("log")
  left.set_ylabel("trainable parameters")
  right.bar(shown, [wall[n] for n in shown])
  right.set_ylabel("wall time per run (s)")
  for ax in (left, right):
    ax.tick_params(axis="x", rotation=30)
  fig.suptitle(f"cost per scheme, train fraction {max(summaries):g}")
  fig.tight_layout()
  names.append(f"{slug}-cost.png")
  fig.savefig(os.path.join(workdir, names[-1]), dpi=120)
  plt.close(fig)
  return names


def task_table(schemes: Sequence[Scheme]) -> str:
  """Per scheme, means over seeds of detection's FROC (CPM, sensitivity at the config's
  operating points) or segmentation's boundary error (lower is better); "" for neither."""
  runs = [r for s in schemes for r in s.runs]
  if any(r.get("test_cpm") is not None for r in runs):
    rates = list(next(r["test_froc_sensitivity"] for r in runs if r.get("test_cpm") is not None))
    header, spec = ["CPM"] + [f"sens @ {rate} FP/image" for rate in rates], "{:.3f}"
    values = lambda r: [r["test_cpm"]] + [r["test_froc_sensitivity"].get(k, math.nan)
                                          for k in rates]
    key = "test_cpm"
  elif any(r.get("test_boundary_error") is not None for r in runs):
    first = next(r for r in runs if r.get("test_boundary_error") is not None)
    unit = {"um": "µm"}.get(first["boundary_error_unit"], first["boundary_error_unit"])
    header = [f"boundary error ({unit}, lower is better)"] + [
        f"interface {k}" for k in range(1, len(first["test_boundary_error_per_interface"]) + 1)]
    spec, key = "{:.2f}", "test_boundary_error"
    values = lambda r: [r["test_boundary_error"], *r["test_boundary_error_per_interface"]]
  else:
    return ""
  lines = ["| scheme | seeds | " + " | ".join(header) + " |", "|---" * (len(header) + 2) + "|"]
  for s in schemes:
    done = [values(r) for r in s.runs if r.get(key) is not None]
    means = np.mean(done, axis=0) if done else [math.nan] * len(header)
    lines.append(f"| {s.name} | {len(done)} | " + " | ".join(_fmt(m, spec) for m in means) + " |")
  return "\n".join(lines)


def _froc_plots(workdir: str, slug: str, summaries: dict[float, list[Scheme]]) -> list[str]:
  """Per training fraction, each scheme's FROC curve (its lowest seed's run, as the ROC
  plot), false positives per image on a log axis, the operating points dotted."""
  names = []
  for fraction in sorted(summaries, reverse=True):
    curves = [(s, _saved(s.runs[0], "froc_fp_per_image", "froc_sensitivity"))
              for s in summaries[fraction]]
    curves = [(s, curve) for s, curve in curves if curve is not None]
    if not curves:
      continue
    fig, ax = plt.subplots(figsize=(6, 4.5))
    for s, (fp, sensitivity) in curves:
      shown = fp > 0  # a log axis has no 0; the curve starts at its first false positive
      ax.plot(fp[shown], sensitivity[shown], label=f"{s.name} (CPM {s.runs[0]['test_cpm']:.3f})")
    for rate in curves[0][0].runs[0]["test_froc_sensitivity"]:
      ax.axvline(float(rate), color="grey", lw=0.5, ls=":")
    ax.set_xscale("log")
    ax.set_ylim(0, 1.02)
    ax.set_xlabel("false positives per image")
    ax.set_ylabel("sensitivity (lesions found)")
    ax.set_title(f"FROC, train fraction {fraction:g}, seed {curves[0][0].runs[0]['seed']}")
    ax.grid(alpha=0.3, which="both")
    ax.legend(loc="lower right", fontsize=8)
    fig.tight_layout()
    names.append(f"{slug}-froc-f{fraction:g}.png")
    fig.savefig(os.path.join(workdir, names[-1]), dpi=120)
    plt.close(fig)
  return names


def auto_table(rows: Iterable[dict]) -> str:
  """The depth each `auto*` run chose, the validation AUC of the depths it tried, and the
  epochs, compute (trained-block FLOPs) and wall time against the fixed-depth sweep's."""
  lines = ["| scheme | seed | chosen | val AUC per depth tried | epochs (sweep) | compute saved "
           "| wall s (sweep) |", "|---|---|---|---|---|---|---|"]
  for row in sorted((r for r in rows if r.get("auto")), key=lambda r: (r["scheme"], r["seed"])):
    auto = row["auto"]
    tried = ", ".join(f"{d['scheme']} {_fmt(d['val_auc'])}" for d in auto["depths"])
    lines.append(f"| {row['scheme']} | {row['seed']} | {auto['chosen']} | {tried} | "
                 f"{auto['epochs_spent']} ({auto['sweep_epochs']}) | {auto['compute_saved']:.0%} | "
                 f"{row['wall_s']:.0f} ({_fmt(auto['sweep_wall_s'], '{:.0f}')}) |")
  return "\n".join(lines) if len(lines) > 2 else ""
