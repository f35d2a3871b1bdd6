"""Results in, `report.md` out: one table row per run, ordered from scratch to deep tuning."""
from __future__ import annotations

import json
import os
import warnings
from typing import Iterable

RESULTS, REPORT = "results.jsonl", "report.md"
COLUMNS = (("scheme", "scheme", "{}"), ("trainable params", "n_trainable_params", "{:,}"),
           ("best epoch", "best_epoch", "{}"), ("val AUC", "val_auc", "{:.4f}"),
           ("test AUC", "test_auc", "{:.4f}"), ("test acc", "test_acc", "{:.4f}"),
           ("wall s", "wall_s", "{:.0f}"))


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


def depth_order(row: dict) -> tuple:
  """scratch first, then pretrained schemes from the fewest trainable parameters up."""
  return (row["dataset"], row["arch"], row["train_fraction"], row["scheme"] != "scratch",
          row["n_trainable_params"], row["seed"])


def table(rows: Iterable[dict]) -> str:
  lines = ["| " + " | ".join(c[0] for c in COLUMNS) + " |",
           "|" + "|".join("---" for _ in COLUMNS) + "|"]
  for row in sorted(rows, key=depth_order):
    lines.append("| " + " | ".join("—" if row[key] is None else fmt.format(row[key])
                                   for _, key, fmt in COLUMNS) + " |")
  return "\n".join(lines)


def verdict(rows: list[dict]) -> str:
  """Scratch against the fine-tuned scheme chosen on validation AUC (not on test)."""
  diverged = [f"`{r['scheme']}` at epoch {r['diverged_at_epoch']}" for r in rows
              if r.get("diverged_at_epoch")]
  note = f"Diverged (non-finite loss; best epoch before it reported): {', '.join(diverged)}. " if diverged else ""
  rows = [r for r in rows if r["test_auc"] is not None]
  scratch = [r for r in rows if r["scheme"] == "scratch"]
  tuned = [r for r in rows if r["scheme"] != "scratch"]
  if not scratch or not tuned:
    return note
  best = max(tuned, key=lambda r: r["val_auc"])
  gap = best["test_auc"] - scratch[0]["test_auc"]
  return note + (f"Best fine-tuning depth on validation AUC: `{best['scheme']}` "
          f"(test AUC {best['test_auc']:.4f}); scratch: {scratch[0]['test_auc']:.4f} "
          f"({'+' if gap >= 0 else ''}{gap:.4f} for fine-tuning). Single seed, no "
          "confidence intervals: treat differences under ~0.01 AUC as noise.")


def write_report(workdir: str) -> str:
  rows = read_results(workdir)
  sections = ["# Depth sweep report", ""]
  groups: dict[tuple, list[dict]] = {}
  for row in rows:
    key = (row["dataset"], row["arch"], row["weights"], row["train_fraction"], row["seed"])
    groups.setdefault(key, []).append(row)
  for (dataset, arch, _, fraction, seed), group in sorted(groups.items()):
    sections += [f"## {dataset}, {arch}, train fraction {fraction:g}, seed {seed}", "",
                 f"{group[0]['n_train']} training images at {group[0]['image_size']} px, "
                 f"batch {group[0]['batch_size']}, weights `{group[0]['weights']}`.", "",
                 table(group), "", verdict(group), ""]
  path = os.path.join(workdir, REPORT)
  with open(path + ".tmp", "w", encoding="utf-8") as f:
    f.write("\n".join(sections))
  os.replace(path + ".tmp", path)
  return path
