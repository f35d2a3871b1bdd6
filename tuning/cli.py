"""`tuning train|sweep --config FILE [--config.KEY=VALUE ...] --workdir DIR`; `tuning convert`; `tuning bench`."""
from __future__ import annotations

import os
import sys
from typing import Sequence

from absl import app, flags, logging
from ml_collections import config_flags

from tuning import allocator, pretrained, report, sweep, xla_cache
from tuning.convert import converted

# New keys are accepted here so that `config.validate` reports them, with a suggestion.
_CONFIG = config_flags.DEFINE_config_file(
    "config", None, "experiment config file (configs/*.py)", lock_config=False,
    accept_new_attributes=True)
_WORKDIR = flags.DEFINE_string("workdir", None, "directory for results, report and checkpoints")
_FROM = flags.DEFINE_enum("from", None, pretrained.WEIGHTS_FORMATS,
                          "tuning convert: the format of SRC")
_ARCH = flags.DEFINE_string("arch", None, "tuning convert: the architecture SRC holds")
_SHARD = flags.DEFINE_string("shard", "0/1", "tuning sweep: run shard i/n of the grid (job arrays)")

USAGE = """usage: tuning {train,sweep} --config FILE --workdir DIR [--shard i/n]
       tuning report DIR [MORE_DIRS...]   (merges the results of every DIR into DIR)
       tuning convert --from FORMAT --arch NAME SRC OUT
       tuning bench --out DIR [--models ...] (see tuning bench --help)"""


class _UsageError(Exception):
  pass


def _train_or_sweep(command: str) -> str:
  """Runs the config (train) or this shard of its grid (sweep); returns the report."""
  if _CONFIG.value is None or not _WORKDIR.value:
    raise _UsageError("--config and --workdir are required")
  config, workdir = _CONFIG.value, _WORKDIR.value
  if command == "train":
    sweep.run_all([config], workdir)
  else:
    sweep.run_sweep(config, workdir, _SHARD.value)
  return _report(workdir)


def _report(workdir: str, more: Sequence[str] = ()) -> str:
  with open(report.write_report(workdir, more), encoding="utf-8") as f:
    return f.read()


def _convert(args: list[str]) -> str:
  """Converts SRC once into OUT, for configs' `pretrained=OUT`."""
  if len(args) != 2 or not _FROM.value or not _ARCH.value:
    raise _UsageError("tuning convert needs --from, --arch, SRC and OUT")
  source, out = args
  path = pretrained.resolve(source)
  model, variables, preprocess = pretrained.load(_ARCH.value, path, _FROM.value)
  converted.save(out, _ARCH.value, model, variables, preprocess, _FROM.value, path)
  return (f"wrote {out}: {_ARCH.value} with {model.num_classes} classes from {path} "
          f"({_FROM.value}, input convention {preprocess.name}); "
          f"use it with --config.pretrained={out} --config.arch={_ARCH.value}")


def main(argv: list[str]) -> int:
  command, args = (argv[1], argv[2:]) if len(argv) > 1 else (None, [])
  if not flags.FLAGS["verbosity"].present:
    logging.set_verbosity(logging.WARNING)  # orbax logs every save at INFO
  try:
    if command in ("train", "sweep") and not args:
      output = _train_or_sweep(command)
    elif command == "convert":
      output = _convert(args)
    elif command == "report" and args:
      output = _report(args[0], args[1:])
    else:
      raise _UsageError(f"unknown command {' '.join(argv[1:])!r}" if command else "no command")
  except _UsageError as e:
    print(f"error: {e}\n{USAGE}", file=sys.stderr)
    return 2
  # User errors: the message, not a traceback. RuntimeError: a failed dataset download;
  # OSError: e.g. an unreadable --config file (ml_collections defers that error until here).
  except (ValueError, RuntimeError, OSError) as e:
    if os.environ.get("TUNING_DEBUG"):
      raise
    print(f"error: {e}", file=sys.stderr)
    return 1
  print(output)
  return 0


def _parse_flags(argv: list[str]) -> list[str]:
  """absl's flag parsing, but a bad flag is one `error:` line and exit code 2."""
  try:
    return flags.FLAGS(argv)
  except (flags.Error, OSError) as e:  # OSError: a --config file that cannot be read
    print(f"error: {e}", file=sys.stderr)
    sys.exit(2)


def run() -> None:
  allocator.keep_freed_memory()  # before the first step allocates (tuning/allocator.py)
  xla_cache.enable()
  if sys.argv[1:2] == ["bench"]:  # its own flags (benchmarks/harness.py), no --config
    try:
      from benchmarks import harness  # pylint: disable=import-outside-toplevel  (extra deps)
    except ImportError as e:
      print(f"error: tuning bench needs the bench extra, pip install -e '.[bench]': {e}",
            file=sys.stderr)
      sys.exit(2)
    sys.exit(harness.main(sys.argv[2:]))
  app.run(main, flags_parser=_parse_flags)
