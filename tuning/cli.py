"""`tuning train|sweep --config FILE [--config.KEY=VALUE ...] --workdir DIR`; `tuning bench`."""
from __future__ import annotations

import os
import sys

from absl import app, flags, logging
from ml_collections import config_flags

from tuning import report, sweep

# New keys are accepted here so that `config.validate` reports them, with a suggestion.
_CONFIG = config_flags.DEFINE_config_file(
    "config", None, "experiment config file (configs/*.py)", lock_config=False,
    accept_new_attributes=True)
_WORKDIR = flags.DEFINE_string("workdir", None, "directory for results, report and checkpoints")

COMMANDS = ("train", "sweep")


def main(argv: list[str]) -> int:
  if len(argv) != 2 or argv[1] not in COMMANDS:
    print(f"usage: tuning {{{','.join(COMMANDS)}}} --config FILE --workdir DIR\n"
          "       tuning bench --out DIR [--models ...] (see tuning bench --help)", file=sys.stderr)
    return 2
  if _CONFIG.value is None or not _WORKDIR.value:
    print("error: --config and --workdir are required", file=sys.stderr)
    return 2
  if not flags.FLAGS["verbosity"].present:
    logging.set_verbosity(logging.WARNING)  # orbax logs every save at INFO
  config, workdir = _CONFIG.value, _WORKDIR.value
  try:
    schemes = (config.scheme,) if argv[1] == "train" else config.schemes
    sweep.run_schemes(config, workdir, schemes)
    path = report.write_report(workdir)
  # User errors: the message, not a traceback. RuntimeError: a failed dataset download;
  # OSError: e.g. an unreadable --config file (ml_collections defers that error until here).
  except (ValueError, RuntimeError, OSError) as e:
    if os.environ.get("TUNING_DEBUG"):
      raise
    print(f"error: {e}", file=sys.stderr)
    return 1
  print(open(path, encoding="utf-8").read())
  return 0


def _parse_flags(argv: list[str]) -> list[str]:
  """absl's flag parsing, but a bad flag is one `error:` line and exit code 2."""
  try:
    return flags.FLAGS(argv)
  except (flags.Error, OSError) as e:  # OSError: a --config file that cannot be read
    print(f"error: {e}", file=sys.stderr)
    sys.exit(2)


def run() -> None:
  if sys.argv[1:2] == ["bench"]:  # its own flags (benchmarks/harness.py), no --config
    try:
      from benchmarks import harness  # pylint: disable=import-outside-toplevel  (extra deps)
    except ImportError as e:
      print(f"error: tuning bench needs the bench extra, pip install -e '.[bench]': {e}",
            file=sys.stderr)
      sys.exit(2)
    sys.exit(harness.main(sys.argv[2:]))
  app.run(main, flags_parser=_parse_flags)
