"""Converted weights on disk: an orbax checkpoint plus a JSON card, written once, loaded by configs.

`tuning convert --from FORMAT --arch NAME SRC OUT` converts a source file once
and saves it here; a config then names `pretrained=OUT`. The card records what
is needed to rebuild the exact model (arch, classes, and every model attribute
the converter set that differs from `models.create`'s, e.g. TFLite's SAME
padding), the input convention, and the source file's sha256.
"""
from __future__ import annotations

import dataclasses
import datetime
import hashlib
import json
import os
import pathlib

import flax.linen as nn
import numpy as np
import orbax.checkpoint as ocp
from flax import traverse_util

from tuning import models
from tuning.convert.common import Link, check_and_build, expected_variables
from tuning.preprocess import Preprocess

CARD = "tuning_weights.json"
_VARIABLES = "variables"


def sha256(path: str | os.PathLike) -> str:
  digest = hashlib.sha256()
  with open(path, "rb") as f:
    for chunk in iter(lambda: f.read(1 << 20), b""):
      digest.update(chunk)
  return digest.hexdigest()


def _model_attributes(arch: str, model: nn.Module) -> dict:
  """The attributes of `model` that differ from the registry's `arch` with as many classes."""
  default = models.create(arch, model.num_classes)
  changed = {}
  for field in dataclasses.fields(model):
    if field.name in ("parent", "name", "num_classes"):
      continue
    value = getattr(model, field.name)
    if value != getattr(default, field.name):
      json.dumps(value)  # the card must rebuild it; fail here, not at load time
      changed[field.name] = value
  return changed


def save(out: str | os.PathLike, arch: str, model: nn.Module, variables: dict,
         preprocess: Preprocess, source_format: str, source: str | os.PathLike) -> pathlib.Path:
  """Writes `out/variables` (orbax) and `out/tuning_weights.json`; returns `out`."""
  out = pathlib.Path(out).absolute()
  if out.exists() and any(out.iterdir()):
    raise FileExistsError(f"{out} exists and is not empty; choose a new output directory")
  out.mkdir(parents=True, exist_ok=True)
  with ocp.StandardCheckpointer() as checkpointer:
    checkpointer.save(out / _VARIABLES, variables)
  card = {
      "arch": arch, "num_classes": model.num_classes,
      "model_attributes": _model_attributes(arch, model),
      "preprocess": preprocess.to_dict(), "source_format": source_format,
      "source": os.path.basename(source), "source_sha256": sha256(source),
      "converted": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
  }
  # Written last: a directory without the card is an interrupted conversion, refused by `load`.
  (out / CARD).write_text(json.dumps(card, indent=2) + "\n", encoding="utf-8")
  return out


def read_card(path: str | os.PathLike) -> dict:
  card = pathlib.Path(path) / CARD
  if not card.is_file():
    raise FileNotFoundError(f"{path} is not a directory written by `tuning convert` (no {CARD})")
  try:
    return json.loads(card.read_text(encoding="utf-8"))
  except json.JSONDecodeError as e:
    raise ValueError(f"{card} is not valid JSON: {e}") from e


def load(path: str | os.PathLike, arch: str | None = None) -> tuple[nn.Module, dict, Preprocess]:
  """`(model, variables, preprocess)` of a `tuning convert` output directory.

  Args:
    path: the directory.
    arch: if given, the architecture the caller expects; another one is an error.

  Raises:
    FileNotFoundError: no card (not a converted directory, or an interrupted conversion).
    ValueError: the card names another architecture than `arch`.
    ConversionError: the checkpoint's arrays do not fit the model, every problem listed.
  """
  path = pathlib.Path(path).absolute()
  card = read_card(path)
  if arch is not None and card["arch"] != arch:
    raise ValueError(f"{path} holds {card['arch']} weights (see {CARD}), but arch is {arch!r}")
  model = models.create(card["arch"], card["num_classes"], **card["model_attributes"])
  with ocp.StandardCheckpointer() as checkpointer:
    restored = checkpointer.restore(path / _VARIABLES)
  # Orbax restores what is on disk without checking it against a model; check every leaf here.
  flat = {"/".join(k): np.asarray(v) for k, v in traverse_util.flatten_dict(restored).items()}
  expected = expected_variables(model)
  variables = check_and_build(expected, {p: Link("/".join(p)) for p in expected}, flat,
                              str(path / _VARIABLES), target=f"{card['arch']} with "
                              f"{card['num_classes']} classes")
  return model, variables, Preprocess.from_dict(card["preprocess"])

