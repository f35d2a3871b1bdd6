"""`tuning train|sweep --config FILE [--config.KEY=VALUE ...] --workdir DIR`."""
from __future__ import annotations

import os
import sys

from absl import app, flags, logging
from ml_collections import config_flags

from tuning import report, sweep, train

_CONFIG = config_flags.DEFINE_config_file("config", None, "experiment config file (configs/*.py)")
_WORKDIR = flags.DEFINE_string("workdir", None, "directory for results, report and checkpoints")

COMMANDS = ("train", "sweep")


def main(argv: list[str]) -> int:
  if len(argv) != 2 or argv[1] not in COMMANDS:
    print(f"usage: tuning {{{','.join(COMMANDS)}}} --config FILE --workdir DIR", file=sys.stderr)
    return 2
  if _CONFIG.value is None or not _WORKDIR.value:
    print("error: --config and --workdir are required", file=sys.stderr)
    return 2
  if not flags.FLAGS["verbosity"].present:
    logging.set_verbosity(logging.WARNING)  # orbax logs every save at INFO
  config, workdir = _CONFIG.value, _WORKDIR.value
  try:
    if argv[1] == "train":
      os.makedirs(workdir, exist_ok=True)
      row = train.train_and_evaluate(config, workdir)
      print(f"{train.run_name(config)}: test AUC {row['test_auc']:.4f}, acc {row['test_acc']:.4f}")
    else:
      sweep.run_sweep(config, workdir)
    path = report.write_report(workdir)
  except (ValueError, FileNotFoundError) as e:  # user errors: the message, not a traceback
    if os.environ.get("TUNING_DEBUG"):
      raise
    print(f"error: {e}", file=sys.stderr)
    return 1
  print(open(path, encoding="utf-8").read())
  return 0


def run() -> None:
  app.run(main)
